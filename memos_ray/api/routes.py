"""The /product routes (MemOS dialect; /admin is in `admin_routes`): each parses, authorises,
calls a service and renders. Handlers are sync: they run in a pool.

No `from __future__ import annotations` here: FastAPI must see the dependency aliases
(`deps.Ctx`, `deps.Who`) as objects, not strings.
"""

import logging
import uuid
from typing import Annotated, Any

from fastapi import APIRouter, Body, Query

from memos_ray.api.context import ApiContext
from memos_ray.api.deps import Ctx, Who
from memos_ray.api.wire import bucket, edge_json, graph_node_json, item_json, preference_bucket
from memos_ray.core.filters import And, Condition, FilterExpr, Or, parse_filter
from memos_ray.domain.memory import (
    DEFAULT_SESSION,
    Edge,
    MemoryItem,
)
from memos_ray.errors import (
    BadRequestError,
    ConflictError,
    NotFoundError,
    PayloadTooLargeError,
    ServiceUnavailableError,
)
from memos_ray.schemas.envelope import ok
from memos_ray.schemas.product import (
    AddRequest,
    CreateCubeRequest,
    DeleteMemoryRequest,
    FeedbackRequest,
    GetAllRequest,
    GetMemoryRequest,
    RecoverRequest,
    SearchData,
    SearchRequest,
    UpdateMemoryRequest,
)
from memos_ray.schemas.values import INT64_MAX, MemoryIdText
from memos_ray.services.add import Added
from memos_ray.services.feedback import FeedbackService, FeedbackTask, recover
from memos_ray.services.inputs import (
    check_query,
    history_messages,
    message_text,
    requested_cubes,
)
from memos_ray.services.memory import TOOL_TYPES, VISIBLE_STATUSES, SearchOptions
from memos_ray.services.preferences import PreferenceService, preference_note, preference_string
from memos_ray.services.tenancy import Caller

EMPTY_BUCKETS = ("pref_mem", "tool_mem", "skill_mem")

logger = logging.getLogger("memos_ray.api")


health = APIRouter()


@health.get("/health")
def health_check(context: Ctx) -> dict[str, str]:
    return {
        "status": "healthy",
        "service": context.config.service_name,
        "version": context.version,
    }


product = APIRouter(prefix="/product")


@product.post("/add")
def add(req: AddRequest, context: Ctx, who: Who) -> dict[str, Any]:
    context.access.require_write(who)
    requested = requested_cubes(req.writable_cube_ids, req.mem_cube_id)
    user_id = context.access.acting_user(who, req.user_id, requested)
    # As in MemOS, writing to a cube id nobody has yet makes it: the writer owns it.
    for cube_id in requested or []:
        context.access.claim_cube(user_id, cube_id, who)
    cubes = context.access.cubes_for(user_id, requested, write=True, caller=who)
    if req.is_feedback:
        return _feedback_add(req, context, user_id, cubes[0])
    result = context.adder.add(req, user_id, cubes)
    return ok([_added(a) for a in result.added], result.message)


def _feedback_add(req: AddRequest, context: ApiContext, user_id: str, cube_id: str) -> dict:
    """MemOS's `is_feedback` add: the last user message is feedback on the conversation
    before it (`chat_history` and the earlier messages)."""
    if context.fine is None:
        raise ServiceUnavailableError("feedback needs an LLM (llm.backend is 'none')")
    messages = req.messages if isinstance(req.messages, list) else []
    spoken = [m for m in messages if m.role == "user" and message_text(m)[0].strip()]
    content = message_text(spoken[-1])[0] if spoken else (req.memory_content or "")
    if isinstance(req.messages, str):
        content = req.messages
    if not content.strip():
        raise BadRequestError("is_feedback: no user message to read the feedback from")
    before = [m for m in messages if not spoken or m is not spoken[-1]]
    task = FeedbackTask(
        feedback_content=content,
        history=history_messages([*(req.chat_history or []), *before]),
        session_id=req.session_id or DEFAULT_SESSION,
    )
    outcome = _apply_feedback(context, cube_id, user_id, task, req.async_mode)
    return ok([outcome], "Feedback " + ("queued" if "task_id" in outcome else "applied"))


@product.post("/search")
def search(req: SearchRequest, context: Ctx, who: Who) -> dict[str, Any]:
    context.searcher.check(req)
    user_id = context.access.act_as(who, req.user_id)
    requested = requested_cubes(req.readable_cube_ids, req.mem_cube_id)
    cubes = context.access.cubes_for(user_id, requested, write=False, caller=who)
    found = context.searcher.search(req, cubes)
    payload = SearchData(text_mem=[], pref_mem=[], tool_mem=[], skill_mem=[]).model_dump()
    payload["text_mem"] = [bucket(c, found.text.get(c, [])) for c in cubes]
    for name in EMPTY_BUCKETS:
        payload[name] = [bucket(c, []) for c in cubes]
    if found.preferences is not None:
        payload["pref_mem"] = [preference_bucket(c, found.preferences.get(c, [])) for c in cubes]
        every = [p for c in cubes for p in found.preferences.get(c, [])]
        payload["pref_note"] = preference_note(every)
        payload["pref_string"] = preference_string(every)
    if found.tools is not None:
        payload["tool_mem"] = [bucket(c, found.tools.get(c, [])) for c in cubes]
    message = "Search completed successfully"
    if req.mode != "fast":
        message += f"; {req.mode} mode needs an LLM and ran as fast mode"
    return ok(payload, message)


@product.post("/get_memory")
def get_memory(req: GetMemoryRequest, context: Ctx, who: Who) -> dict[str, Any]:
    return ok(_memories_page(req, context, who), "Memories retrieved successfully")


@product.post("/get_memory_dashboard")
def get_memory_dashboard(req: GetMemoryRequest, context: Ctx, who: Who) -> dict[str, Any]:
    """MemOS's dashboard listing: the same page as /get_memory (its cube optional too)."""
    return ok(_memories_page(req, context, who), "Memories retrieved successfully")


def _memories_page(req: GetMemoryRequest, context: ApiContext, who: Caller) -> dict[str, Any]:
    """A page of the cube's text memories with its preferences and tool memories (MemOS's
    GetMemoryResponse buckets); the cube is `mem_cube_id`, else the user's own."""
    requested = [req.mem_cube_id] if req.mem_cube_id else None
    user_id = context.access.acting_user(who, req.user_id, requested)
    cube_id = req.mem_cube_id or user_id
    context.access.cubes_for(user_id, [cube_id], write=False, caller=who)
    page_size = req.page_size
    if req.page is not None and page_size is None:
        page_size = 10
    if page_size is not None and page_size > context.config.limits.max_page_size:
        raise BadRequestError(
            f"page_size is {page_size}; the limit is {context.config.limits.max_page_size}"
        )
    if page_size is not None and ((req.page or 1) - 1) * page_size > INT64_MAX:
        raise BadRequestError("page is past any cube's end (the offset exceeds 64 bits)")
    items, total = context.service.get_page(
        cube_id, parse_filter(req.filter), page=req.page, page_size=page_size
    )
    data: dict[str, Any] = {"text_mem": [bucket(cube_id, items, total)]}
    for name in EMPTY_BUCKETS:
        data[name] = [bucket(cube_id, [])]
    limit = page_size or context.config.limits.max_page_size
    if req.include_preference and context.preferences is not None:
        preferences, count = context.preferences.store.list(cube_id, limit=limit)
        data["pref_mem"] = [preference_bucket(cube_id, preferences) | {"total_nodes": count}]
    if req.include_tool_memory:
        tools, count = context.service.graph.list_nodes(
            cube_id, memory_types=TOOL_TYPES, statuses=VISIBLE_STATUSES, limit=limit
        )
        data["tool_mem"] = [bucket(cube_id, tools, count)]
    return data


@product.get("/get_memory/{memory_id}")
def get_memory_by_id(
    memory_id: str, context: Ctx, who: Who, user_id: str | None = None
) -> dict[str, Any]:
    """MemOS answers an unknown id with 200 and `data: null`; so does a memory in a cube the
    caller may not read (its existence is not told)."""
    items = _readable_items(context, who, user_id, [memory_id])
    if not items:
        return ok(None, f"Memory with ID {memory_id} not found")
    return ok(item_json(items[0]), "Memory retrieved successfully")


@product.get("/get_memory/{memory_id}/graph")
def get_memory_graph(
    memory_id: str,
    context: Ctx,
    who: Who,
    user_id: str | None = None,
    limit: Annotated[int, Query(ge=1, le=500)] = 100,
) -> dict[str, Any]:
    """The memory and its graph neighbourhood (turn order, material, summary, topic parents,
    merges), for the console's graph view: `nodes` (the memory first) and `edges`, at most
    `limit` of them. Unknown or unreadable: `data: null`, as for /get_memory/{id}."""
    items = _readable_items(context, who, user_id, [memory_id])
    if not items:
        return ok(None, f"Memory with ID {memory_id} not found")
    center = items[0]
    edges = context.service.graph.get_edges(center.cube_id, [center.id])[:limit]
    others = list(dict.fromkeys(e.source if e.target == center.id else e.target for e in edges))
    neighbours = context.service.get_by_ids([center.cube_id], others) if others else []
    shown = {center.id} | {n.id for n in neighbours}
    data = {
        "cube_id": center.cube_id,
        "center": center.id,
        "nodes": [graph_node_json(i) for i in [center, *neighbours]],
        "edges": [edge_json(e) for e in edges if e.source in shown and e.target in shown],
    }
    return ok(data, "Memory graph retrieved successfully")


@product.post("/get_memory_by_ids")
def get_memory_by_ids(
    context: Ctx,
    who: Who,
    memory_ids: Annotated[list[MemoryIdText], Body(max_length=1000)],
    user_id: str | None = None,
) -> dict[str, Any]:
    items = _readable_items(context, who, user_id, memory_ids)
    return ok({"memories": [item_json(i) for i in items]}, "Memories retrieved successfully")


@product.post("/get_all")
def get_all(req: GetAllRequest, context: Ctx, who: Who) -> dict[str, Any]:
    user_id = context.access.act_as(who, req.user_id)
    cubes = context.access.cubes_for(user_id, req.mem_cube_ids, write=False, caller=who)
    if req.search_query:
        check_query(req.search_query, context.config.limits)
    result = []
    for cube_id in cubes:
        if req.memory_type != "text_mem":  # act_mem, param_mem: none are kept as lists
            result.append({"cube_id": cube_id, "memories": [], "memory_statistics": {}})
            continue
        memory = context.service
        if req.search_query:
            options = SearchOptions(top_k=50, relativity=0.0)
            nodes = memory.search(req.search_query, {cube_id: None}, options)[cube_id]
            edges = memory.graph.get_edges(cube_id, [n.id for n in nodes])
            stats = memory.statistics(cube_id)
        else:
            nodes, edges = memory.get_graph(cube_id)
            stats = memory.statistics(cube_id, nodes)
        result.append(_cube_graph(cube_id, nodes, edges, stats))
    return ok(result, "All memories retrieved successfully")


@product.post("/delete_memory")
def delete_memory(req: DeleteMemoryRequest, context: Ctx, who: Who) -> dict[str, Any]:
    context.access.require_write(who)
    requested = requested_cubes(req.writable_cube_ids, req.mem_cube_id)
    user_id = context.access.acting_user(who, req.user_id, requested)
    cubes = context.access.cubes_for(user_id, requested, write=True, caller=who)
    selector: FilterExpr | None = None
    if req.filter:
        selector = parse_filter(req.filter)
    elif req.file_ids:
        selector = Or(tuple(Condition("file_ids", "contains", f) for f in req.file_ids))
    elif req.quick:
        # MemOS's quick delete: every memory of that user and/or session in the cubes.
        quick = [Condition("user_id", "eq", req.user_id)] if req.user_id else []
        if req.session_id is not None:
            quick.append(Condition("session_id", "eq", req.session_id))
        selector = quick[0] if len(quick) == 1 else And(tuple(quick))
    deleted: dict[str, list[str]] = {}
    for cube_id in cubes:
        if selector is not None:
            deleted[cube_id] = context.service.delete_matching(cube_id, selector)
        else:
            ids = req.memory_ids or []
            deleted[cube_id] = context.service.delete(cube_id, ids)
            if ids and context.preferences is not None:
                # Preference ids (pref_mem in search) name rows of the preference store.
                deleted[cube_id] += _delete_preferences(context.preferences, cube_id, ids)
    count = sum(len(v) for v in deleted.values())
    return ok(
        {"status": "success", "deleted": deleted, "deleted_count": count},
        f"Deleted {count} memories",
    )


@product.post("/update_memory")
def update_memory(req: UpdateMemoryRequest, context: Ctx, who: Who) -> dict[str, Any]:
    """memos-ray's (MemOS's MCP `update_memory`): new text for one memory, re-embedded; the
    version it replaces is kept in `metadata.history`. Deleted memories are recovered first."""
    context.access.require_write(who)
    user_id = context.access.acting_user(who, req.user_id, [req.mem_cube_id])
    cube_id = context.access.cubes_for(user_id, [req.mem_cube_id], write=True, caller=who)[0]
    if len(req.memory.encode()) > context.config.limits.max_message_bytes:
        raise PayloadTooLargeError(
            f"memory is over {context.config.limits.max_message_bytes} bytes"
        )
    found = context.service.get_by_ids([cube_id], [req.memory_id])
    if not found:
        raise NotFoundError(f"memory {req.memory_id!r} not found in cube {cube_id!r}")
    item = found[0]
    if item.metadata.status not in VISIBLE_STATUSES:
        raise ConflictError(
            f"memory {req.memory_id!r} is {item.metadata.status}; recover it before updating"
        )
    if item.memory == req.memory:
        return ok(item_json(item), "Memory unchanged")
    updated = item.revised(req.reason).model_copy(update={"memory": req.memory})
    context.service.update_items(cube_id, [updated])
    return ok(item_json(updated), "Memory updated successfully")


@product.post("/feedback")
def feedback(req: FeedbackRequest, context: Ctx, who: Who) -> dict[str, Any]:
    """MemOS's MemoryResponse: `data` is a list of one process record (`record`, and the
    corrected `answer` when `corrected_answer` is true; `task_id` when queued)."""
    context.access.require_write(who)
    if not (req.feedback_content or "").strip():
        raise BadRequestError("feedback_content is empty")
    if context.fine is None:
        raise ServiceUnavailableError("feedback needs an LLM (llm.backend is 'none')")
    requested = requested_cubes(req.writable_cube_ids, req.mem_cube_id)
    user_id = context.access.acting_user(who, req.user_id, requested)
    cube_id = context.access.cubes_for(user_id, requested, write=True, caller=who)[0]
    task = FeedbackTask(
        feedback_content=req.feedback_content or "",
        history=history_messages(req.history),
        retrieved_memory_ids=req.retrieved_memory_ids or [],
        feedback_time=req.feedback_time,
        session_id=req.session_id or DEFAULT_SESSION,
    )
    outcome = _apply_feedback(context, cube_id, user_id, task, req.async_mode)
    if not req.corrected_answer:
        outcome.pop("answer", None)
    message = outcome.pop("message")
    return ok([outcome], message)


def _apply_feedback(
    context: ApiContext, cube_id: str, user_id: str, task: FeedbackTask, async_mode: str
) -> dict[str, Any]:
    assert context.fine is not None
    if async_mode == "async" and context.scheduler is not None:
        # Recorded before the answer; the cube's scheduler applies it in order with the
        # cube's other writes. Poll /product/scheduler/status for its record.
        queued = context.scheduler.submit(
            cube_id, user_id, "mem_feedback", task.model_dump(mode="json")
        )
        return {
            "task_id": queued.task_id,
            "state": queued.state,
            "cube_id": cube_id,
            "message": f"Feedback queued as task {queued.task_id}",
        }
    outcome = FeedbackService(context.fine).apply_task(cube_id, user_id, task)
    message = "Feedback applied"
    if async_mode == "async":
        message += " (no scheduler runs, so synchronously)"
    if outcome.error:
        message += "; the LLM's decision was unreadable, the feedback is kept as a memory"
    return {
        "answer": outcome.answer,
        "record": outcome.record(),
        "cube_id": cube_id,
        "message": message,
    }


@product.post("/recover_memory")
def recover_memory(req: RecoverRequest, context: Ctx, who: Who) -> dict[str, Any]:
    context.access.require_write(who)
    user_id = context.access.act_as(who, req.user_id)
    requested = requested_cubes(req.writable_cube_ids, req.mem_cube_id)
    cubes = context.access.cubes_for(user_id, requested, write=True, caller=who)
    recovered: list[dict[str, Any]] = []
    for cube_id in cubes:
        recovered += [item_json(i) for i in recover(context.service, cube_id, req.memory_ids)]
    return ok({"recovered": recovered}, f"Recovered {len(recovered)} memories")


@product.post("/create_cube")
def create_cube(req: CreateCubeRequest, context: Ctx, who: Who) -> dict[str, Any]:
    context.access.require_write(who)
    owner = context.access.act_as(who, req.owner_id)
    cube_id = req.cube_id or str(uuid.uuid4())
    cube = context.access.tenancy.create_cube(cube_id, req.cube_name or cube_id, owner)
    return ok(
        {"cube_id": cube.cube_id, "cube_name": cube.cube_name, "owner_id": cube.owner_id},
        "Cube created successfully",
    )


def _delete_preferences(preferences: PreferenceService, cube_id: str, ids: list[str]) -> list[str]:
    """The ids that named preferences of the cube, removed from the preference store."""
    found = [p.id for p in preferences.store.get(cube_id, ids)]
    if found:
        preferences.store.delete(cube_id, found)
    return found


def _added(added: Added) -> dict[str, Any]:
    entry: dict[str, Any] = {
        "memory": added.item.memory,
        "memory_id": added.item.id,
        "memory_type": str(added.item.metadata.memory_type),
        "cube_id": added.cube_id,
    }
    if added.action is not None:
        entry["action"] = added.action
    if added.task_id is not None:
        entry["task_id"] = added.task_id
    return entry


def _cube_graph(
    cube_id: str, nodes: list[MemoryItem], edges: list[Edge], stats: dict[str, int]
) -> dict[str, Any]:
    graph = {
        "nodes": [item_json(n) for n in nodes],
        "edges": [edge_json(e) for e in edges],
        "total_nodes": len(nodes),
        "total_edges": len(edges),
        "tree_structure": None,
    }
    return {"cube_id": cube_id, "memories": [graph], "memory_statistics": stats}


def _readable_items(
    context: ApiContext, who: Caller, user_id: str | None, ids: list[str]
) -> list[MemoryItem]:
    """Items by id, dropping those in cubes the caller may not read (no existence leak)."""
    located = context.service.locate(ids)
    if who.unrestricted and not user_id:
        cubes = sorted(set(located.values()))
    else:
        acting = context.access.act_as(who, user_id or who.user_id)
        cubes = sorted(
            {c for c in located.values() if context.access.readable_cube(acting, c, who)}
        )
    return context.service.get_by_ids(cubes, ids) if cubes else []
