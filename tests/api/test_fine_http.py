"""Fine adds, feedback, recovery and token budgets through real HTTP on real stores.

The LLM is the scripted TEST DOUBLE (tests/fixtures/scripted_model.py): these tests pin down
what the service does with given model answers, not what a model would answer.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Iterator
from dataclasses import dataclass, field

import httpx
import pytest

from memos_ray import __version__
from memos_ray.api.app import create_app
from memos_ray.api.context import ApiContext
from memos_ray.config import MemosConfig
from memos_ray.models.chat import ChatRequest
from memos_ray.models.embedder import SentenceTransformerEmbedder
from memos_ray.runtime.compose import LocalStack
from tests.fixtures.scripted_model import ScriptedChatModel
from tests.fixtures.servers import serve_in_thread


@dataclass
class Script:
    """Answers queued per kind of request (told apart by their system prompts)."""

    extract: list[str] = field(default_factory=list)
    judge: list[str] = field(default_factory=list)
    feedback: list[str] = field(default_factory=list)
    chat: list[str] = field(default_factory=list)
    chat_requests: list[ChatRequest] = field(default_factory=list)

    def __call__(self, request: ChatRequest) -> str:
        system = request.messages[0].content
        if system.startswith("You turn a conversation"):
            queue = self.extract
        elif system.startswith("You compare"):
            queue = self.judge
        elif system.startswith("The user corrects"):
            queue = self.feedback
        else:
            queue = self.chat
            self.chat_requests.append(request)
        assert queue, f"no scripted answer left for: {system[:40]}"
        return queue.pop(0)


@pytest.fixture(scope="module")
def api(
    tmp_path_factory: pytest.TempPathFactory, embedder: SentenceTransformerEmbedder
) -> Iterator[tuple[httpx.Client, Script]]:
    # Facts replace turns here, so each add's entries are exactly what the LLM wrote.
    config = MemosConfig(
        data_dir=tmp_path_factory.mktemp("feedback"), fine={"keep_turns": False}
    ).resolved()
    script = Script()
    with LocalStack(config, embedder=embedder, chat=ScriptedChatModel(script)) as stack:
        context = ApiContext.of(stack.services, __version__)
        with (
            serve_in_thread(create_app(lambda: context)) as url,
            httpx.Client(base_url=url, timeout=60) as http,
        ):
            yield http, script


def _facts(*values: str) -> str:
    return json.dumps(
        {"memories": [{"key": "", "memory_type": "UserMemory", "value": v} for v in values]}
    )


def _add_fine(http: httpx.Client, user: str, text: str) -> httpx.Response:
    return http.post(
        "/product/add",
        json={
            "user_id": user,
            "async_mode": "sync",
            "mode": "fine",
            "messages": [{"role": "user", "content": text, "chat_time": "2026-03-02T09:00:00"}],
        },
    )


def _memory(http: httpx.Client, user: str, memory_id: str) -> dict:
    response = http.get(f"/product/get_memory/{memory_id}", params={"user_id": user})
    assert response.status_code == 200, response.text
    return response.json()["data"]


def _search(http: httpx.Client, user: str, query: str) -> list[str]:
    body = {"user_id": user, "query": query, "relativity": 0}
    data = http.post("/product/search", json=body).json()["data"]
    return [m["id"] for m in data["text_mem"][0]["memories"]]


def test_feedback_corrects_a_fact_and_the_old_one_can_be_recovered(
    api: tuple[httpx.Client, Script],
) -> None:
    http, script = api
    script.extract.append(_facts("Jane lives in Boston."))
    added = _add_fine(http, "jane", "I live in Boston.")
    assert added.status_code == 200, added.text
    [entry] = added.json()["data"]
    assert entry["action"] == "added" and entry["memory"] == "Jane lives in Boston."
    old_id = entry["memory_id"]

    script.feedback.append(
        json.dumps(
            {
                "operations": [{"op": "update", "index": 0, "text": "Jane lives in Denver."}],
                "answer": "Got it, you live in Denver now.",
            }
        )
    )
    response = http.post(
        "/product/feedback",
        json={
            "user_id": "jane",
            "feedback_content": "Wrong: I moved to Denver, I don't live in Boston any more.",
            "retrieved_memory_ids": [old_id],
            "corrected_answer": True,
            "history": [
                {"role": "user", "content": "Where do I live?"},
                {"role": "assistant", "content": "In Boston."},
            ],
        },
    )
    assert response.status_code == 200, response.text
    [data] = response.json()["data"]
    assert data["answer"] == "Got it, you live in Denver now."
    [update] = data["record"]["update"]
    assert update["archived_id"] == old_id and update["origin_memory"] == "Jane lives in Boston."
    new_id = update["id"]
    old = _memory(http, "jane", old_id)
    assert old["metadata"]["status"] == "archived"
    assert old["metadata"]["history"][-1]["memory"] == "Jane lives in Boston."
    assert _search(http, "jane", "Where does Jane live?") == [new_id]

    recovered = http.post(
        "/product/recover_memory", json={"user_id": "jane", "memory_ids": [old_id]}
    )
    assert recovered.status_code == 200, recovered.text
    assert [m["id"] for m in recovered.json()["data"]["recovered"]] == [old_id]
    assert _memory(http, "jane", old_id)["metadata"]["status"] == "activated"
    assert set(_search(http, "jane", "Where does Jane live?")) == {old_id, new_id}


def test_feedback_delete_is_soft_and_recoverable(api: tuple[httpx.Client, Script]) -> None:
    http, script = api
    script.extract.append(_facts("Omar has a pet snake."))
    snake = _add_fine(http, "omar", "my snake!").json()["data"][0]["memory_id"]
    script.feedback.append('{"operations": [{"op": "delete", "index": 0}], "answer": "Removed."}')
    done = http.post(
        "/product/feedback",
        json={
            "user_id": "omar",
            "feedback_content": "I never had a snake.",
            "retrieved_memory_ids": [snake],
        },
    ).json()["data"][0]
    assert "answer" not in done  # MemOS's corrected_answer is off by default
    assert [d["id"] for d in done["record"]["delete"]] == [snake]
    assert _search(http, "omar", "snake") == []
    http.post("/product/recover_memory", json={"user_id": "omar", "memory_ids": [snake]})
    assert _search(http, "omar", "snake") == [snake]


def test_unreadable_feedback_decision_keeps_the_feedback(api: tuple[httpx.Client, Script]) -> None:
    http, script = api
    script.feedback.append("I am not sure what to do here.")
    response = http.post(
        "/product/feedback",
        json={"user_id": "lena", "feedback_content": "My birthday is on 3 June, not 3 July."},
    )
    assert response.status_code == 200, response.text
    assert "unreadable" in response.json()["message"]
    [kept] = response.json()["data"][0]["record"]["add"]
    assert kept["text"] == "My birthday is on 3 June, not 3 July."
    assert _search(http, "lena", "birthday") == [kept["id"]]


def test_token_budget_pauses_fine_extraction(api: tuple[httpx.Client, Script]) -> None:
    http, script = api
    script.extract.append(_facts("Kim plays chess."))
    assert _add_fine(http, "kim", "I play chess").status_code == 200
    usage = http.get("/product/cubes/kim/llm_usage", params={"user_id": "kim"}).json()["data"]
    assert usage["calls"] == 1 and usage["total_tokens"] > 0 and usage["budget_tokens"] is None
    budget = http.put("/product/cubes/kim/llm_budget", json={"user_id": "kim", "budget_tokens": 1})
    assert budget.status_code == 200 and budget.json()["data"]["over_budget"]
    paused = _add_fine(http, "kim", "I also play go")  # no scripted answer: no LLM call made
    assert paused.status_code == 200 and "paused" in paused.json()["message"]
    assert [e["action"] for e in paused.json()["data"]] == ["raw"]
    assert (
        http.put(
            "/product/cubes/kim/llm_budget", json={"user_id": "kim", "budget_tokens": -5}
        ).status_code
        == 422
    )


def test_feedback_input_is_checked(api: tuple[httpx.Client, Script]) -> None:
    http, _ = api
    assert (
        http.post("/product/feedback", json={"user_id": "x", "feedback_content": ""}).status_code
        == 400
    )
    assert (
        http.post("/product/feedback", json={"user_id": "x", "feedback_content": "  "}).status_code
        == 400
    )
    assert (
        http.post("/product/recover_memory", json={"user_id": "x", "memory_ids": []}).status_code
        == 422
    )


def _pdf(lines: list[str]) -> bytes:
    """A minimal one-page PDF (Helvetica text): a real file for pypdf to parse."""
    text = "BT /F1 12 Tf 72 720 Td 14 TL " + " ".join(f"({line}) '" for line in lines) + " ET"
    objects = [
        "<< /Type /Catalog /Pages 2 0 R >>",
        "<< /Type /Pages /Kids [3 0 R] /Count 1 >>",
        "<< /Type /Page /Parent 2 0 R /MediaBox [0 0 612 792] /Contents 4 0 R "
        "/Resources << /Font << /F1 5 0 R >> >> >>",
        f"<< /Length {len(text)} >>\nstream\n{text}\nendstream",
        "<< /Type /Font /Subtype /Type1 /BaseFont /Helvetica >>",
    ]
    out = b"%PDF-1.4\n"
    offsets = []
    for number, body in enumerate(objects, start=1):
        offsets.append(len(out))
        out += f"{number} 0 obj\n{body}\nendobj\n".encode()
    xref = len(out)
    out += f"xref\n0 {len(objects) + 1}\n0000000000 65535 f \n".encode()
    out += "".join(f"{o:010d} 00000 n \n" for o in offsets).encode()
    out += (
        f"trailer\n<< /Size {len(objects) + 1} /Root 1 0 R >>\nstartxref\n{xref}\n%%EOF\n".encode()
    )
    return out


def _file_message(name: str, data: bytes, mime: str, note: str = "Here is a file.") -> dict:
    encoded = base64.b64encode(data).decode()
    return {
        "role": "user",
        "content": [
            {"type": "text", "text": note},
            {
                "type": "file",
                "file": {"file_data": f"data:{mime};base64,{encoded}", "filename": name},
            },
        ],
    }


def _graph(http: httpx.Client, user: str) -> tuple[dict[str, dict], list[tuple[str, str, str]]]:
    data = http.post("/product/get_all", json={"user_id": user, "memory_type": "text_mem"}).json()
    graph = data["data"][0]["memories"][0]
    nodes = {n["id"]: n for n in graph["nodes"]}
    return nodes, [(e["source"], e["target"], e["type"]) for e in graph["edges"]]


def test_markdown_and_pdf_files_become_linked_chunks(api: tuple[httpx.Client, Script]) -> None:
    http, _ = api
    paragraphs = [
        f"Section {n}. " + f"The zephyrine protocol step {n} uses valve {n}. " * 30
        for n in range(3)
    ]
    markdown = "\n\n".join(paragraphs).encode()
    added = http.post(
        "/product/add",
        json={
            "user_id": "doc-user",
            "async_mode": "sync",
            "messages": [_file_message("manual.md", markdown, "text/markdown")],
        },
    )
    assert added.status_code == 200, added.text
    chunks = [e for e in added.json()["data"] if e.get("action") == "document"]
    assert len(chunks) == 3 and {c["memory_type"] for c in chunks} == {"RawFileMemory"}
    nodes, edges = _graph(http, "doc-user")
    ids = [c["memory_id"] for c in chunks]
    assert (ids[0], ids[1], "FOLLOWING") in edges and (ids[1], ids[0], "PRECEDING") in edges
    assert nodes[ids[0]]["metadata"]["sources"][0]["doc_path"] == "manual.md"

    pdf = _pdf(["Quarterly report of the Ostrava plant.", "Output rose by 12 percent."])
    added = http.post(
        "/product/add",
        json={
            "user_id": "doc-user",
            "async_mode": "sync",
            "messages": [_file_message("q3.pdf", pdf, "application/pdf")],
        },
    )
    assert added.status_code == 200, added.text
    [pdf_chunk] = [e for e in added.json()["data"] if e.get("action") == "document"]
    assert "Ostrava plant" in pdf_chunk["memory"]
    assert _search(http, "doc-user", "Ostrava plant output")[0] == pdf_chunk["memory_id"]


def test_fine_mode_links_what_it_read_to_the_chunk(api: tuple[httpx.Client, Script]) -> None:
    http, script = api
    script.extract.append(
        json.dumps(
            {
                "memories": [{"value": "The Ostrava plant output rose by 12 percent."}],
                "summary": "A plant report.",
            }
        )
    )
    pdf = _pdf(["Quarterly report of the Ostrava plant.", "Output rose by 12 percent."])
    added = http.post(
        "/product/add",
        json={
            "user_id": "fine-doc",
            "async_mode": "sync",
            "mode": "fine",
            "messages": [_file_message("q3.pdf", pdf, "application/pdf", note="")],
        },
    )
    assert added.status_code == 200, added.text
    entries = added.json()["data"]
    [chunk] = [e["memory_id"] for e in entries if e.get("action") == "document"]
    facts = [e for e in entries if e["action"] == "added"]
    fact = next(e["memory_id"] for e in facts if e["memory"].startswith("The Ostrava"))
    summary = next(e["memory_id"] for e in facts if e["memory"].startswith("Summary of q3.pdf"))
    _, edges = _graph(http, "fine-doc")
    assert (fact, chunk, "MATERIAL") in edges and (summary, chunk, "SUMMARY") in edges


def test_unsupported_or_broken_files_are_refused(api: tuple[httpx.Client, Script]) -> None:
    http, _ = api
    for message in (
        _file_message("x.zip", b"PK\x03\x04zipdata", "application/zip"),
        _file_message("broken.pdf", b"%PDF-1.4 not really a pdf", "application/pdf"),
    ):
        response = http.post(
            "/product/add", json={"user_id": "doc-bad", "async_mode": "sync", "messages": [message]}
        )
        assert response.status_code == 400, response.text


def test_tool_schemas_and_trajectories_are_searchable(api: tuple[httpx.Client, Script]) -> None:
    http, _ = api
    tools = [
        {
            "type": "function",
            "function": {
                "name": "get_weather",
                "description": "Current weather for a city",
                "parameters": {"type": "object", "properties": {"city": {"type": "string"}}},
            },
        }
    ]
    messages = [
        {"role": "user", "content": "What's the weather in Lisbon?"},
        {
            "role": "assistant",
            "content": "",
            "tool_calls": [
                {
                    "id": "call-1",
                    "type": "function",
                    "function": {"name": "get_weather", "arguments": '{"city": "Lisbon, PT"}'},
                }
            ],
        },
        {"role": "tool", "tool_call_id": "call-1", "content": "Error: unknown city 'Lisbon, PT'"},
        {
            "role": "assistant",
            "content": "",
            "tool_calls": [
                {
                    "id": "call-2",
                    "type": "function",
                    "function": {"name": "get_weather", "arguments": '{"city": "Lisbon"}'},
                }
            ],
        },
        {"role": "tool", "tool_call_id": "call-2", "content": "18 C, sunny"},
        {"role": "assistant", "content": "It is 18 C and sunny in Lisbon."},
    ]
    added = http.post(
        "/product/add",
        json={"user_id": "agent", "async_mode": "sync", "messages": messages, "tools": tools},
    )
    assert added.status_code == 200, added.text
    kinds = {e["memory_type"] for e in added.json()["data"] if e.get("action") == "tool"}
    assert kinds == {"ToolSchemaMemory", "ToolTrajectoryMemory"}
    [trajectory] = [
        e["memory"] for e in added.json()["data"] if e["memory_type"] == "ToolTrajectoryMemory"
    ]
    assert "Result: failure" in trajectory and "unknown city" in trajectory
    found = http.post(
        "/product/search",
        json={"user_id": "agent", "query": "weather tool for a city", "relativity": 0},
    ).json()["data"]
    tool_hits = found["tool_mem"][0]["memories"]
    assert {m["metadata"]["memory_type"] for m in tool_hits} == {
        "ToolSchemaMemory",
        "ToolTrajectoryMemory",
    }
    assert all(
        m["metadata"]["memory_type"] not in ("ToolSchemaMemory", "ToolTrajectoryMemory")
        for m in found["text_mem"][0]["memories"]
    )
    plain = http.post(
        "/product/search",
        json={"user_id": "agent", "query": "weather", "search_tool_memory": False},
    ).json()["data"]
    assert plain["tool_mem"][0]["memories"] == []


def _with_preferences(facts: list[str], preferences: list[dict]) -> str:
    memories = [{"value": v, "memory_type": "UserMemory"} for v in facts]
    return json.dumps({"memories": memories, "preferences": preferences, "summary": ""})


def test_preferences_reach_search_and_the_chat_prompt(api: tuple[httpx.Client, Script]) -> None:
    http, script = api
    script.extract.append(
        _with_preferences(
            ["Rosa booked a flight to Oslo."],
            [{"preference": "Rosa prefers aisle seats on flights", "kind": "explicit"}],
        )
    )
    assert _add_fine(http, "rosa", "Book me to Oslo, aisle seat as always!").status_code == 200
    found = http.post(
        "/product/search", json={"user_id": "rosa", "query": "which seat should I book?"}
    ).json()["data"]
    [pref] = found["pref_mem"][0]["memories"]
    assert pref["memory"] == "Rosa prefers aisle seats on flights"
    assert pref["metadata"]["preference_type"] == "explicit_preference"
    assert "aisle seats" in found["pref_string"] and found["pref_note"]
    # Not asked for: not searched.
    off = http.post(
        "/product/search",
        json={"user_id": "rosa", "query": "seat", "include_preference": False},
    ).json()["data"]
    assert off["pref_mem"][0]["memories"] == []

    script.chat.append("An aisle seat, as you like.")
    answer = http.post(
        "/product/chat/complete",
        json={
            "user_id": "rosa",
            "query": "Which seat should I pick?",
            "include_prompt": True,
            "add_message_on_answer": False,
        },
    )
    assert answer.status_code == 200, answer.text
    data = answer.json()["data"]
    assert data["response"] == "An aisle seat, as you like." and data["preference_ids"] == [
        pref["id"]
    ]
    assert "Rosa prefers aisle seats on flights" in data["prompt"][-1]["content"]


def test_implicit_preference_needs_a_second_occasion(api: tuple[httpx.Client, Script]) -> None:
    http, script = api
    implicit = [{"preference": "Theo chooses vegetarian dishes", "kind": "implicit"}]
    script.extract.append(_with_preferences(["Theo ordered the lentil curry."], implicit))
    _add_fine(http, "theo", "I'll have the lentil curry.")
    first = http.post(
        "/product/search", json={"user_id": "theo", "query": "what food does Theo like"}
    )
    assert first.json()["data"]["pref_mem"][0]["memories"] == []  # one choice is not a habit
    graph = http.post("/product/get_all", json={"user_id": "theo"}).json()["data"][0]
    observed = [
        n
        for n in graph["memories"][0]["nodes"]
        if n["metadata"]["memory_type"] == "PreferenceMemory"
    ]
    assert [n["metadata"]["status"] for n in observed] == ["resolving"]

    script.extract.append(_with_preferences(["Theo ordered a veggie burger."], implicit))
    script.judge.append('{"relation": "unrelated", "index": -1}')
    _add_fine(http, "theo", "A veggie burger for me, please.")
    second = http.post(
        "/product/search", json={"user_id": "theo", "query": "what food does Theo like"}
    )
    [pref] = second.json()["data"]["pref_mem"][0]["memories"]
    assert pref["metadata"]["preference_type"] == "implicit_preference"
    assert pref["memory"] == "Theo chooses vegetarian dishes"
