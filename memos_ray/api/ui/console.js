// memos-ray console: a read-mostly view over the REST API, with the caller's own key.
// Every text from the server goes in through textContent (never as HTML).
"use strict";

const state = { key: "", user: "", cube: null, memory: null, stream: null, tasks: new Map() };
const $ = (id) => document.getElementById(id);
const SVG = "http://www.w3.org/2000/svg";
const TYPE_COLOURS = {
  LongTermMemory: "#2557d6", UserMemory: "#7a5af8", WorkingMemory: "#0e9384",
  ToolSchemaMemory: "#dc6803", ToolTrajectoryMemory: "#f79009", OuterMemory: "#667085",
  RawFileMemory: "#98a2b3",
};

function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [name, value] of Object.entries(attrs)) {
    if (name === "text") node.textContent = value;
    else if (name.startsWith("on")) node.addEventListener(name.slice(2), value);
    else node.setAttribute(name, value);
  }
  for (const child of children) node.append(child);
  return node;
}

function svg(tag, attrs = {}) {
  const node = document.createElementNS(SVG, tag);
  for (const [name, value] of Object.entries(attrs)) node.setAttribute(name, value);
  return node;
}

function notice(message, error = false) {
  $("notice").textContent = message;
  $("notice").className = error ? "error" : "";
}

function headers() {
  const given = { "Content-Type": "application/json" };
  if (state.key) given.Authorization = `Bearer ${state.key}`;
  return given;
}

async function api(method, path, body) {
  const response = await fetch(path, {
    method, headers: headers(), body: body === undefined ? undefined : JSON.stringify(body),
  });
  let payload = null;
  try { payload = await response.json(); } catch (_) { /* not JSON: reported below */ }
  if (!response.ok || (payload && payload.code !== undefined && payload.code !== 200)) {
    const message = (payload && payload.message) || `${response.status} ${response.statusText}`;
    throw new Error(message);
  }
  return payload ? payload.data : null;
}

const query = (params) => new URLSearchParams(
  Object.entries(params).filter(([, v]) => v !== undefined && v !== null && v !== ""),
).toString();

async function connect(event) {
  event.preventDefault();
  state.key = $("key").value.trim();
  const asked = $("user").value.trim();
  try {
    const info = await api("POST", "/product/get_user_info", asked ? { user_id: asked } : {});
    state.user = info.user_id;
    sessionStorage.setItem("memos-key", state.key);
    sessionStorage.setItem("memos-user", asked);
    $("whoami").textContent = `as ${info.user_id}`;
    $("console").hidden = false;
    $("signout").hidden = false;
    renderCubes(info.accessible_cubes);
    notice(`Signed in as ${info.user_id}: ${info.accessible_cubes.length} cube(s)`);
    followTasks();
  } catch (error) {
    $("console").hidden = true;
    notice(`Sign-in failed: ${error.message}`, true);
  }
}

function signOut() {
  sessionStorage.clear();
  if (state.stream) state.stream.abort();
  Object.assign(state, { key: "", user: "", cube: null, memory: null, stream: null });
  state.tasks.clear();
  $("key").value = "";
  $("console").hidden = true;
  $("signout").hidden = true;
  notice("Signed out");
}

function renderCubes(cubes) {
  const list = $("cubes");
  list.replaceChildren();
  for (const cube of cubes) {
    const item = el("li", { "data-cube": cube.cube_id, onclick: () => selectCube(cube.cube_id) },
      el("span", { text: cube.cube_name || cube.cube_id }),
      el("small", { text: ` ${cube.access}${cube.owner_id !== state.user ? ` · ${cube.owner_id}` : ""}` }));
    list.append(item);
  }
  if (cubes.length) selectCube(cubes[0].cube_id);
}

async function selectCube(cubeId) {
  state.cube = cubeId;
  for (const item of $("cubes").children) {
    item.classList.toggle("selected", item.dataset.cube === cubeId);
  }
  $("results").replaceChildren();
  $("detail").hidden = true;
  renderTasks();
  await Promise.all([loadUsage(), loadOverview()]);
}

async function loadUsage() {
  const box = $("usage");
  try {
    const usage = await api("GET",
      `/product/cubes/${encodeURIComponent(state.cube)}/llm_usage?${query({ user_id: state.user })}`);
    const budget = usage.budget_tokens;
    const used = usage.total_tokens;
    box.replaceChildren(el("div", {
      text: `${used} tokens in ${usage.calls} calls${budget == null ? " (no budget)" : ` of ${budget}`}`,
    }));
    if (budget != null) {
      const share = budget ? Math.min(1, used / budget) : 1;
      const bar = el("div", { class: used > budget ? "bar over" : "bar" }, el("span"));
      bar.firstChild.style.width = `${Math.round(share * 100)}%`;
      box.append(bar);
    }
  } catch (error) {
    box.textContent = `unavailable: ${error.message}`;
  }
}

async function loadOverview() {
  try {
    const data = await api("POST", "/product/get_memory", {
      user_id: state.user, mem_cube_id: state.cube, page: 1, page_size: 20,
      include_preference: true, include_tool_memory: true,
    });
    const prefs = (data.pref_mem || []).flatMap((b) => b.memories || []);
    const tools = (data.tool_mem || []).flatMap((b) => b.memories || []);
    fillList($("prefs"), prefs, (p) => p.preference || p.memory || JSON.stringify(p));
    fillList($("tools"), tools, (t) => t.memory);
  } catch (error) {
    notice(`Could not list the cube: ${error.message}`, true);
  }
}

function fillList(list, items, text) {
  list.replaceChildren();
  if (!items.length) list.append(el("li", { class: "muted", text: "none" }));
  for (const item of items) list.append(el("li", { "data-id": item.id || "", text: text(item) }));
}

async function search(event) {
  event.preventDefault();
  const text = $("query").value.trim();
  if (!text || !state.cube) return;
  try {
    const data = await api("POST", "/product/search", {
      user_id: state.user, query: text, readable_cube_ids: [state.cube], top_k: 10,
    });
    const found = (data.text_mem || []).flatMap((b) => b.memories || []);
    const list = $("results");
    list.replaceChildren();
    for (const memory of found) {
      const meta = memory.metadata || {};
      const sources = (meta.sources || []).map(
        (s) => [s.role, s.chat_time, s.message_id || s.doc_path].filter(Boolean).join(" "));
      list.append(el("li", { class: "result", "data-id": memory.id, onclick: () => openMemory(memory.id) },
        el("span", { class: "score", text: (meta.relativity ?? 0).toFixed(3) }),
        el("div", { class: "text", text: memory.memory }),
        el("div", { class: "src", text: sources.join(" · ") })));
    }
    notice(`${found.length} memories for “${text}”`);
  } catch (error) {
    notice(`Search failed: ${error.message}`, true);
  }
}

async function openMemory(memoryId) {
  try {
    const who = query({ user_id: state.user });
    const id = encodeURIComponent(memoryId);
    const [memory, graph] = await Promise.all([
      api("GET", `/product/get_memory/${id}?${who}`),
      api("GET", `/product/get_memory/${id}/graph?${who}`),
    ]);
    if (!memory) throw new Error(`memory ${memoryId} is not there (deleted, or not yours to read)`);
    state.memory = memory;
    renderDetail(memory);
    renderGraph(graph);
    $("detail").hidden = false;
  } catch (error) {
    notice(error.message, true);
  }
}

function renderDetail(memory) {
  const meta = memory.metadata;
  $("detail-id").textContent = memory.id;
  $("detail-text").textContent = memory.memory;
  const rows = [
    ["cube", memory.cube_id], ["type", meta.memory_type], ["status", meta.status],
    ["key", meta.key], ["tags", (meta.tags || []).join(", ")], ["session", meta.session_id],
    ["version", meta.version], ["confidence", meta.confidence],
    ["created", meta.created_at], ["updated", meta.updated_at],
  ];
  $("meta").replaceChildren(...rows.filter(([, v]) => v !== null && v !== undefined && v !== "")
    .map(([k, v]) => el("tr", {}, el("td", { text: k }), el("td", { text: String(v) }))));
  fillList($("sources"), meta.sources || [],
    (s) => [s.role, s.chat_time, s.content || s.doc_path].filter(Boolean).join(" · "));
  const history = $("history");
  history.replaceChildren();
  for (const entry of meta.history || []) {
    history.append(el("li", {
      text: `v${entry.version} (${entry.updated_at}${entry.reason ? `, ${entry.reason}` : ""}): ${entry.memory}`,
    }));
  }
  if (!(meta.history || []).length) history.append(el("li", { class: "muted", text: "first version" }));
}

function renderGraph(graph) {
  const canvas = $("graph");
  canvas.replaceChildren();
  const legend = $("legend");
  legend.replaceChildren();
  if (!graph) return;
  const [cx, cy] = [260, 200];
  const others = graph.nodes.filter((n) => n.id !== graph.center);
  const radius = others.length > 12 ? 170 : 140;
  const where = new Map([[graph.center, [cx, cy]]]);
  others.forEach((node, i) => {
    const angle = (2 * Math.PI * i) / Math.max(others.length, 1) - Math.PI / 2;
    where.set(node.id, [cx + radius * Math.cos(angle), cy + radius * Math.sin(angle)]);
  });
  // One line per pair of memories, labelled with every edge between them and its direction
  // as seen from the centre ("→ X": the centre points at it; "X →": it points at the centre).
  const counts = {};
  const pairs = new Map();
  for (const edge of graph.edges) {
    if (!where.has(edge.source) || !where.has(edge.target)) continue;
    counts[edge.type] = (counts[edge.type] || 0) + 1;
    const other = edge.source === graph.center ? edge.target : edge.source;
    const names = pairs.get(other) || [];
    names.push(edge.source === graph.center ? `→ ${edge.type}` : `${edge.type} →`);
    pairs.set(other, names);
  }
  for (const [other, names] of pairs) {
    const [a, b] = [where.get(graph.center), where.get(other)];
    canvas.append(svg("line", { x1: a[0], y1: a[1], x2: b[0], y2: b[1], "data-to": other }));
    const label = svg("text", { x: (a[0] + b[0]) / 2 + 4, y: (a[1] + b[1]) / 2 - 3, class: "edge-label" });
    label.textContent = names.join(" · ");
    canvas.append(label);
  }
  for (const node of graph.nodes) {
    const [x, y] = where.get(node.id);
    const centre = node.id === graph.center;
    const group = svg("g", {
      class: `node${centre ? " center" : ""}${node.status !== "activated" ? " archived" : ""}`,
      "data-id": node.id, transform: `translate(${x},${y})`,
    });
    group.append(svg("circle", { r: centre ? 14 : 10, fill: TYPE_COLOURS[node.memory_type] || "#667085" }));
    const text = svg("text", { x: 0, y: centre ? 28 : 22, "text-anchor": "middle" });
    const words = node.key || node.memory;
    text.textContent = words.length > 28 ? `${words.slice(0, 27)}…` : words;
    const title = svg("title");
    title.textContent = `${node.memory_type} · ${node.status}\n${node.memory}`;
    group.append(text, title);
    if (!centre) group.addEventListener("click", () => openMemory(node.id));
    canvas.append(group);
  }
  for (const [type, count] of Object.entries(counts)) {
    legend.append(el("li", { text: `${type}: ${count}` }));
  }
  if (!graph.edges.length) legend.append(el("li", { class: "muted", text: "no linked memories" }));
}

async function act(label, path, body) {
  if (!state.memory) return;
  try {
    await api("POST", path, body);
    notice(`${label}: done`);
    await openMemory(state.memory.id);
  } catch (error) {
    notice(`${label} failed: ${error.message}`, true);
  }
}

function wireActions() {
  $("delete").addEventListener("click", () => {
    if (!state.memory || !confirm("Delete this memory from every store?")) return;
    act("Delete", "/product/delete_memory", {
      user_id: state.user, memory_ids: [state.memory.id], writable_cube_ids: [state.memory.cube_id],
    });
  });
  $("recover").addEventListener("click", () => act("Recover", "/product/recover_memory", {
    user_id: state.user, memory_ids: [state.memory.id], writable_cube_ids: [state.memory.cube_id],
  }));
  $("feedback").addEventListener("click", () => {
    const text = $("feedback-text").value.trim();
    if (!text) return notice("Write the feedback first", true);
    act("Feedback", "/product/feedback", {
      user_id: state.user, feedback_content: text, retrieved_memory_ids: [state.memory.id],
      writable_cube_ids: [state.memory.cube_id], async_mode: "async",
    });
  });
}

// The scheduler's task stream (server-sent events), read with fetch so the key can go in a
// header (EventSource cannot send one). It reconnects after an end or an error.
async function followTasks() {
  if (state.stream) state.stream.abort();
  const control = new AbortController();
  state.stream = control;
  const url = `/product/scheduler/stream?${query({ user_id: state.user, follow: "true", timeout_seconds: 3600 })}`;
  try {
    const response = await fetch(url, { headers: headers(), signal: control.signal });
    if (!response.ok) {
      let message = `${response.status}`;
      try { message = (await response.json()).message; } catch (_) { /* keep the status */ }
      $("stream-state").textContent = `(${message})`;
      return;
    }
    $("stream-state").textContent = "(live)";
    const reader = response.body.pipeThrough(new TextDecoderStream()).getReader();
    let buffer = "";
    for (;;) {
      const { value, done } = await reader.read();
      if (done) break;
      buffer += value;
      let cut;
      while ((cut = buffer.indexOf("\n\n")) >= 0) {
        const frame = buffer.slice(0, cut);
        buffer = buffer.slice(cut + 2);
        for (const line of frame.split("\n")) {
          if (!line.startsWith("data: ")) continue;
          const event = JSON.parse(line.slice(6));
          if (event.type === "task") {
            state.tasks.set(event.data.task_id, event.data);
            renderTasks();
          }
        }
      }
    }
  } catch (error) {
    if (control.signal.aborted) return;
    $("stream-state").textContent = "(reconnecting)";
  }
  if (state.stream === control && state.user) setTimeout(() => {
    if (state.stream === control) followTasks();
  }, 3000);
}

function renderTasks() {
  const list = $("tasks");
  list.replaceChildren();
  const shown = [...state.tasks.values()]
    .filter((t) => !state.cube || t.cube_id === state.cube)
    .slice(-50).reverse();
  for (const task of shown) {
    const item = el("li", { class: "task", "data-state": task.state, "data-id": task.task_id },
      el("strong", { text: task.label }), ` ${task.state} · try ${task.attempts}/${task.max_attempts}`,
      el("small", { text: ` ${task.updated_at || ""}` }));
    if (task.error) item.append(el("span", { class: "task-error", text: task.error }));
    list.append(item);
  }
  if (!shown.length) list.append(el("li", { class: "muted", text: "no tasks" }));
}

document.addEventListener("DOMContentLoaded", () => {
  $("signin").addEventListener("submit", connect);
  $("signout").addEventListener("click", signOut);
  $("search-form").addEventListener("submit", search);
  wireActions();
  $("key").value = sessionStorage.getItem("memos-key") || "";
  $("user").value = sessionStorage.getItem("memos-user") || "";
  if (sessionStorage.getItem("memos-key") !== null) $("connect").click();
});
