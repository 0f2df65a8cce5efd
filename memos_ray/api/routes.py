"""The /product (MemOS dialect) and /admin routes. Handlers are sync: they run in a pool.

No `from __future__ import annotations` here: FastAPI must see the dependency aliases
defined inside `build_routers` as real objects, not strings.
"""

import logging
import uuid
from collections.abc import Callable
from typing import Annotated, Any

from fastapi import APIRouter, Body

from memos_ray.api.context import ApiContext
from memos_ray.api.convert import (
    documents_from_request,
    message_text,
    tool_windows_from_request,
    windows_from_request,
)
from memos_ray.api.deps import dependencies
from memos_ray.api.wire import bucket, edge_json, item_json, preference_bucket
from memos_ray.config import LimitsConfig, ReaderConfig
from memos_ray.core.documents import Document
from memos_ray.core.filters import Condition, FilterExpr, Or, parse_filter
from memos_ray.core.reader import Window
from memos_ray.domain.memory import TEXT_MEMORY_TYPES, MemoryItem, memory_id_for
from memos_ray.domain.tenancy import Access
from memos_ray.errors import (
    BadRequestError,
    NotFoundError,
    PayloadTooLargeError,
    ServiceUnavailableError,
)
from memos_ray.models.chat import Message
from memos_ray.schemas.envelope import ok
from memos_ray.schemas.product import (
    AddRequest,
    CreateCubeRequest,
    CreateUserRequest,
    DeleteMemoryRequest,
    FeedbackRequest,
    GetAllRequest,
    GetMemoryRequest,
    GrantRequest,
    RecoverRequest,
    SearchData,
    SearchRequest,
)
from memos_ray.schemas.values import INT64_MAX, MemoryIdText
from memos_ray.services.documents import add_documents
from memos_ray.services.feedback import FeedbackService, FeedbackTask, recover
from memos_ray.services.memory import TOOL_TYPES, AddOutcome, SearchOptions
from memos_ray.services.preferences import PreferenceService, preference_note, preference_string
from memos_ray.services.tenancy import Caller

EMPTY_BUCKETS = ("pref_mem", "tool_mem", "skill_mem")

logger = logging.getLogger("memos_ray.api")


def build_routers(get_context: Callable[[], ApiContext]) -> list[APIRouter]:
    Ctx, Who = dependencies(get_context)

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
        user_id = context.access.act_as(who, req.user_id)
        requested = requested_cubes(req.writable_cube_ids, req.mem_cube_id)
        cubes = context.access.cubes_for(user_id, requested, write=True, caller=who)
        fine = req.mode == "fine" and req.async_mode == "sync" and context.fine is not None
        reader = context.config.reader
        if fine:
            reader = ReaderConfig(
                window_messages=context.config.fine.window_messages,
                window_chars=context.config.fine.window_chars,
            )
        documents = documents_from_request(req, context.config.limits)
        tools = tool_windows_from_request(req)
        windows = windows_from_request(
            req, reader, context.config.limits, allow_empty=bool(documents or tools)
        )
        fine_reads = _wants_fine_reads(req, context, windows)
        if fine_reads:
            assert context.scheduler is not None
            context.scheduler.ensure_room(cubes)  # a full queue refuses before any write
        # What this request wrote (not its duplicates), removed again if a later step fails:
        # an add that does not answer 200 leaves neither memories nor a task. (A sync fine
        # add's merges into existing memories are not undone.)
        written: dict[str, list[str]] = {}

        def store(cube_id: str, parts: list[Window]) -> AddOutcome:
            """Add to one cube, noting what it stored for the undo."""
            outcome = context.service.add_windows(
                cube_id,
                user_id,
                parts,
                session_id=req.session_id or "default_session",
                tags=req.custom_tags or (),
                info=req.info,
            )
            written.setdefault(cube_id, []).extend(i.id for i in outcome.stored)
            return outcome

        try:
            docs, chunk_counts = _add_documents(
                req, context, user_id, cubes, documents, fine, written
            )
            for cube_id in cubes if tools else []:
                tool_outcome = store(cube_id, tools)
                docs += [
                    _added(i, cube_id, "tool")
                    for i in [*tool_outcome.stored, *tool_outcome.duplicates]
                ]
            if fine:
                if context.config.fine.keep_turns:
                    turns = windows_from_request(
                        req, context.config.reader, context.config.limits, allow_empty=True
                    )
                    for cube_id in cubes if turns else []:
                        kept = store(cube_id, turns)
                        docs += [
                            _added(i, cube_id, "turn") for i in [*kept.stored, *kept.duplicates]
                        ]
                answer = _add_fine(req, context, user_id, cubes, windows, docs)
                answer["message"] += _documents_note(chunk_counts)
                return answer
            outcomes = {cube_id: store(cube_id, windows) for cube_id in cubes}
            queued = _record_fine_reads(req, context, user_id, cubes, windows) if fine_reads else {}
        except Exception:
            _undo_writes(context, written)
            raise
        added: list[dict[str, Any]] = list(docs)
        stored = duplicates = 0
        for cube_id, outcome in outcomes.items():
            stored += len(outcome.stored)
            duplicates += len(outcome.duplicates)
            for item in [*outcome.stored, *outcome.duplicates]:
                entry = _added(item, cube_id)
                if cube_id in queued:
                    entry["task_id"] = queued[cube_id]
                added.append(entry)
        message = f"Memory added: {stored} stored, {duplicates} duplicates skipped"
        message += _documents_note(chunk_counts)
        if queued:
            message += f"; fine extraction queued as tasks {sorted(queued.values())}"
        elif req.mode == "fine" or (req.async_mode == "async" and req.mode != "fast"):
            why = "no chat model is configured" if context.fine is None else "no scheduler runs"
            message += f"; stored in fast mode at once ({why}, so no fine extraction)"
        return ok(added, message)

    @product.post("/search")
    def search(req: SearchRequest, context: Ctx, who: Who) -> dict[str, Any]:
        limits = context.config.limits
        for name in ("top_k", "pref_top_k", "tool_mem_top_k", "skill_mem_top_k"):
            if getattr(req, name) > limits.max_top_k:
                raise BadRequestError(f"{name} is over the limit of {limits.max_top_k}")
        check_query(req.query, limits)
        user_id = context.access.act_as(who, req.user_id)
        requested = requested_cubes(req.readable_cube_ids, req.mem_cube_id)
        cubes = context.access.cubes_for(user_id, requested, write=False, caller=who)
        cube_filters = filters_by_cube(req.filter, cubes)
        memory_types = _memory_types(req.search_memory_type)
        results = context.service.search(
            req.query,
            cube_filters,
            SearchOptions(
                top_k=req.top_k,
                relativity=req.relativity,
                dedup=req.dedup or "no",
                rerank=req.rerank,
                memory_types=memory_types,
                session_id=req.session_id,
                reference_time=req.reference_time,
            ),
        )
        data = SearchData(text_mem=[], pref_mem=[], tool_mem=[], skill_mem=[])
        payload = data.model_dump()
        payload["text_mem"] = [bucket(c, results[c]) for c in cubes]
        for name in EMPTY_BUCKETS:
            payload[name] = [bucket(c, []) for c in cubes]
        if req.include_preference and req.pref_top_k and context.preferences is not None:
            found = context.preferences.search(cubes, req.query, req.pref_top_k)
            payload["pref_mem"] = [preference_bucket(c, found.get(c, [])) for c in cubes]
            every = [p for c in cubes for p in found.get(c, [])]
            payload["pref_note"] = preference_note(every)
            payload["pref_string"] = preference_string(every)
        with_tools = [c for c in cubes if context.service.has_types(c, TOOL_TYPES)]
        if req.search_tool_memory and req.tool_mem_top_k and with_tools:
            tools = context.service.search(
                req.query,
                {c: cube_filters[c] for c in with_tools},
                SearchOptions(
                    top_k=req.tool_mem_top_k,
                    relativity=req.relativity,
                    dedup="no",
                    memory_types=TOOL_TYPES,
                    reference_time=req.reference_time,
                ),
            )
            payload["tool_mem"] = [bucket(c, tools.get(c, [])) for c in cubes]
        message = "Search completed successfully"
        if req.mode != "fast":
            message += f"; {req.mode} mode needs an LLM and ran as fast mode"
        return ok(payload, message)

    @product.post("/get_memory")
    def get_memory(req: GetMemoryRequest, context: Ctx, who: Who) -> dict[str, Any]:
        user_id = context.access.act_as(who, req.user_id)
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
        return ok(data, "Memories retrieved successfully")

    @product.get("/get_memory/{memory_id}")
    def get_memory_by_id(
        memory_id: str, context: Ctx, who: Who, user_id: str | None = None
    ) -> dict[str, Any]:
        items = _readable_items(context, who, user_id, [memory_id])
        if not items:
            raise NotFoundError(f"memory {memory_id!r} not found")
        return ok(item_json(items[0]), "Memory retrieved successfully")

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
        result = []
        for cube_id in cubes:
            if req.memory_type != "text_mem":
                result.append({"cube_id": cube_id, "memories": [], "memory_statistics": {}})
                continue
            if req.search_query:
                check_query(req.search_query, context.config.limits)
                found = context.service.search(
                    req.search_query, {cube_id: None}, SearchOptions(top_k=50, relativity=0.0)
                )[cube_id]
                nodes = found
                edges = context.service.graph.get_edges(cube_id, [n.id for n in nodes])
                stats = context.service.statistics(cube_id)
            else:
                nodes, edges = context.service.get_graph(cube_id)
                stats = context.service.statistics(cube_id, nodes)
            result.append(
                {
                    "cube_id": cube_id,
                    "memories": [
                        {
                            "nodes": [item_json(n) for n in nodes],
                            "edges": [edge_json(e) for e in edges],
                            "total_nodes": len(nodes),
                            "total_edges": len(edges),
                            "tree_structure": None,
                        }
                    ],
                    "memory_statistics": stats,
                }
            )
        return ok(result, "All memories retrieved successfully")

    @product.post("/delete_memory")
    def delete_memory(req: DeleteMemoryRequest, context: Ctx, who: Who) -> dict[str, Any]:
        user_id = context.access.act_as(who, req.user_id or who.user_id)
        requested = requested_cubes(req.writable_cube_ids, req.mem_cube_id)
        cubes = context.access.cubes_for(user_id, requested, write=True, caller=who)
        selector: FilterExpr | None = None
        if req.filter:
            selector = parse_filter(req.filter)
        elif req.file_ids:
            selector = Or(tuple(Condition("file_ids", "contains", f) for f in req.file_ids))
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

    @product.post("/feedback")
    def feedback(req: FeedbackRequest, context: Ctx, who: Who) -> dict[str, Any]:
        if not req.feedback_content.strip():
            raise BadRequestError("feedback_content is empty")
        if context.fine is None:
            raise ServiceUnavailableError("feedback needs an LLM (llm.backend is 'none')")
        user_id = context.access.act_as(who, req.user_id)
        requested = requested_cubes(req.writable_cube_ids, req.mem_cube_id)
        cube_id = context.access.cubes_for(user_id, requested, write=True, caller=who)[0]
        history = [
            Message(role=m.role, content=text)
            for m in req.history or []
            if (text := message_text(m)[0]).strip()
        ]
        if req.async_mode == "async" and context.scheduler is not None:
            # Recorded before the answer; the cube's scheduler applies it in order with the
            # cube's other writes. Poll /product/scheduler/status for its record.
            task = context.scheduler.submit(
                cube_id,
                user_id,
                "mem_feedback",
                FeedbackTask(
                    feedback_content=req.feedback_content,
                    history=history,
                    retrieved_memory_ids=req.retrieved_memory_ids or [],
                    corrected_answer=req.corrected_answer,
                    feedback_time=req.feedback_time,
                    session_id=req.session_id or "default_session",
                ).model_dump(mode="json"),
            )
            return ok(
                {"task_id": task.task_id, "state": task.state},
                f"Feedback queued as task {task.task_id}",
            )
        outcome = FeedbackService(context.fine).apply(
            cube_id,
            user_id,
            req.feedback_content,
            history=history,
            retrieved_ids=req.retrieved_memory_ids or [],
            corrected_answer=req.corrected_answer,
            feedback_time=req.feedback_time,
            session_id=req.session_id or "default_session",
        )
        message = "Feedback applied"
        if req.async_mode == "async":
            message += " (no scheduler runs, so synchronously)"
        if outcome.error:
            message += "; the LLM's decision was unreadable, the feedback is kept as a memory"
        return ok({"answer": outcome.answer, "record": outcome.record()}, message)

    @product.post("/recover_memory")
    def recover_memory(req: RecoverRequest, context: Ctx, who: Who) -> dict[str, Any]:
        user_id = context.access.act_as(who, req.user_id)
        requested = requested_cubes(req.writable_cube_ids, req.mem_cube_id)
        cubes = context.access.cubes_for(user_id, requested, write=True, caller=who)
        recovered: list[dict[str, Any]] = []
        for cube_id in cubes:
            recovered += [item_json(i) for i in recover(context.service, cube_id, req.memory_ids)]
        return ok({"recovered": recovered}, f"Recovered {len(recovered)} memories")

    @product.post("/create_cube")
    def create_cube(req: CreateCubeRequest, context: Ctx, who: Who) -> dict[str, Any]:
        owner = context.access.act_as(who, req.owner_id)
        cube_id = req.cube_id or str(uuid.uuid4())
        cube = context.access.tenancy.create_cube(cube_id, req.cube_name or cube_id, owner)
        return ok(
            {"cube_id": cube.cube_id, "cube_name": cube.cube_name, "owner_id": cube.owner_id},
            "Cube created successfully",
        )

    admin = APIRouter(prefix="/admin")

    @admin.post("/users")
    def create_user(req: CreateUserRequest, context: Ctx, who: Who) -> dict[str, Any]:
        context.access.require_admin(who)
        context.access.tenancy.create_user(req.user_id)
        key = context.access.tenancy.create_api_key(req.user_id)
        return ok({"user_id": req.user_id, "api_key": key}, "User created")

    @admin.post("/keys")
    def create_key(req: CreateUserRequest, context: Ctx, who: Who) -> dict[str, Any]:
        context.access.require_admin(who)
        key = context.access.tenancy.create_api_key(req.user_id)
        return ok({"user_id": req.user_id, "api_key": key}, "API key created")

    @admin.post("/grants")
    def grant(req: GrantRequest, context: Ctx, who: Who) -> dict[str, Any]:
        context.access.require_admin(who)
        granted = context.access.tenancy.grant(req.cube_id, req.user_id, Access(req.access))
        return ok(granted.model_dump(mode="json"), "Access granted")

    return [health, product, admin]


def _wants_fine_reads(req: AddRequest, context: ApiContext, windows: list[Window]) -> bool:
    """Async adds (MemOS's default) with an LLM and a scheduler: a `mem_read` task per cube
    distils the fast memories later."""
    return (
        req.async_mode == "async"
        and req.mode != "fast"
        and context.scheduler is not None
        and context.fine is not None
        and bool(windows)
    )


def fine_read_task_id(cube_id: str, memory_ids: list[str], request_task_id: str | None) -> str:
    """The `mem_read` task of an add, derived from what it reads: a retried add (the first
    try died between its write and its answer) finds the task recorded before instead of
    queueing the same reading twice."""
    key = "\x00".join(["mem_read", cube_id, request_task_id or "", *sorted(memory_ids)])
    return uuid.uuid5(uuid.NAMESPACE_OID, key).hex


def _record_fine_reads(
    req: AddRequest, context: ApiContext, user_id: str, cubes: list[str], windows: list[Window]
) -> dict[str, str]:
    """Record a `mem_read` task per cube for the fast memories just stored, then wake the
    cubes. Recorded after the write, so the scheduler never reads memories that are not
    there yet, and a failed write records nothing; if recording fails part way, the tasks
    recorded so far are discarded (the caller removes the memories); so are they when a cube's
    scheduler cannot be reached."""
    assert context.scheduler is not None
    queued: dict[str, str] = {}
    try:
        for cube_id in cubes:
            ids = list(dict.fromkeys(memory_id_for(cube_id, w.text) for w in windows))
            task = context.scheduler.record(
                cube_id,
                user_id,
                "mem_read",
                {"memory_ids": ids},
                task_id=fine_read_task_id(cube_id, ids, req.task_id),
                request_task_id=req.task_id,
            )
            queued[cube_id] = task.task_id
        for cube_id in queued:
            context.scheduler.wake(cube_id)
    except Exception:
        try:
            context.scheduler.discard(list(queued.values()))
        except Exception:
            logger.warning("could not discard the tasks of a failed add", exc_info=True)
        raise
    return queued


def _delete_preferences(preferences: PreferenceService, cube_id: str, ids: list[str]) -> list[str]:
    """The ids that named preferences of the cube, removed from the preference store."""
    found = [p.id for p in preferences.store.get(cube_id, ids)]
    if found:
        preferences.store.delete(cube_id, found)
    return found


def _undo_writes(context: ApiContext, written: dict[str, list[str]]) -> None:
    """Best effort: remove the memories a failed add wrote; a store that stays down keeps
    them half written or whole, and the client's retry (same ids) settles them."""
    for cube_id, ids in written.items():
        if not ids:
            continue
        try:
            context.service.delete(cube_id, ids)
        except Exception:
            logger.warning("cube %s: could not undo %d memories", cube_id, len(ids), exc_info=True)


def _added(item: MemoryItem, cube_id: str, action: str | None = None) -> dict[str, Any]:
    entry: dict[str, Any] = {
        "memory": item.memory,
        "memory_id": item.id,
        "memory_type": str(item.metadata.memory_type),
        "cube_id": cube_id,
    }
    if action is not None:
        entry["action"] = action
    return entry


def _add_documents(
    req: AddRequest,
    context: ApiContext,
    user_id: str,
    cubes: list[str],
    documents: list[Document],
    fine: bool,
    written: dict[str, list[str]],
) -> tuple[list[dict[str, Any]], tuple[int, int]]:
    """Inline files: chunks (RawFileMemory) and, in fine mode, what the LLM read in them;
    `written` gets the ids stored, per cube; with the chunk counts (stored, already present)
    the answer's message reports."""
    entries: list[dict[str, Any]] = []
    stored = present = 0
    for cube_id in cubes if documents else []:
        outcome = add_documents(
            context.service,
            cube_id,
            user_id,
            documents,
            fine=context.fine if fine else None,
            session_id=req.session_id or "default_session",
            tags=req.custom_tags or (),
            info=req.info,
            written=written.setdefault(cube_id, []),
        )
        entries += [_added(i, cube_id, "document") for i in outcome.chunks]
        entries += [_added(i, cube_id, "added") for i in [*outcome.fine, *outcome.summaries]]
        stored += outcome.stored_chunks
        present += len(outcome.chunks) - outcome.stored_chunks
    return entries, (stored, present)


def _documents_note(counts: tuple[int, int]) -> str:
    stored, present = counts
    if not stored and not present:
        return ""
    return f"; documents: {stored} chunks stored, {present} already present"


def _add_fine(
    req: AddRequest,
    context: ApiContext,
    user_id: str,
    cubes: list[str],
    windows: list[Window],
    documents: list[dict[str, Any]],
) -> dict[str, Any]:
    """Sync fine add: each entry says what happened (`added`, `merged`, `raw`, `document`)."""
    assert context.fine is not None
    added: list[dict[str, Any]] = list(documents)
    counts = {"added": 0, "merged": 0, "archived": 0, "raw": 0, "failed": 0, "calls": 0}
    paused = False
    for cube_id in cubes:
        outcome = context.fine.add(
            cube_id,
            user_id,
            windows,
            session_id=req.session_id or "default_session",
            tags=req.custom_tags or (),
            info=req.info,
        )
        added += [_added(i, cube_id, "added") for i in outcome.stored]
        added += [_added(i, cube_id, "merged") for i in outcome.merged]
        added += [_added(i, cube_id, "raw") for i in outcome.raw_kept]
        counts["added"] += len(outcome.stored)
        counts["merged"] += len(outcome.merged)
        counts["archived"] += len(outcome.archived)
        counts["raw"] += len(outcome.raw_kept)
        counts["failed"] += len(outcome.errors)
        counts["calls"] += outcome.calls
        paused = paused or outcome.paused
    message = (
        f"Memory added (fine): {counts['added']} extracted, {counts['merged']} merged into "
        f"existing memories, {counts['archived']} archived as contradicted, {counts['raw']} "
        f"kept raw; {counts['calls']} LLM calls"
    )
    if counts["failed"]:
        message += f"; extraction failed for {counts['failed']} windows (their raw text is kept)"
    if paused:
        message += "; fine extraction paused: the cube is over its LLM token budget"
    return ok(added, message)


def check_query(query: str, limits: LimitsConfig) -> None:
    """A query is embedded and scanned against every memory: its length is bounded."""
    if len(query) > limits.max_query_chars:
        raise PayloadTooLargeError(
            f"query is {len(query)} characters; the limit is {limits.max_query_chars}"
        )


def requested_cubes(cube_ids: list[str] | None, mem_cube_id: str | None) -> list[str] | None:
    """The cube list of a request; MemOS's deprecated `mem_cube_id` stands for both lists."""
    return cube_ids or ([mem_cube_id] if mem_cube_id else None)


def filters_by_cube(raw: dict[str, Any] | None, cubes: list[str]) -> dict[str, FilterExpr | None]:
    """A filter keyed by cube ids applies per cube; any other filter applies to all cubes."""
    if raw and all(k in cubes for k in raw) and all(isinstance(v, dict) for v in raw.values()):
        return {c: parse_filter(raw.get(c)) for c in cubes}
    parsed = parse_filter(raw)
    return {c: parsed for c in cubes}


def _memory_types(search_memory_type: str) -> list[str] | None:
    if search_memory_type in ("All", "", None):
        return None
    allowed = {str(t) for t in TEXT_MEMORY_TYPES}
    wanted = [t.strip() for t in search_memory_type.split(",")]
    unknown = [t for t in wanted if t not in allowed]
    if unknown:
        raise BadRequestError(
            f"search_memory_type {unknown} unknown; expected 'All' or one of {sorted(allowed)}"
        )
    return wanted


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
