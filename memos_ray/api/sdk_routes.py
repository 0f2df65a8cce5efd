"""The MemOS SDK dialect: the routes `memos.api.client.MemOSClient` calls, under
/api/openmem/v1, so `MemOSClient(api_key=KEY, base_url="http://host:8000/api/openmem/v1")`
works unchanged. Each route maps onto the services the /product routes use, with the same
tenancy checks.

How the SDK's names map onto memos-ray's:
- `user_id` is the acting user, and its default cube (cube id = user id) the cube read and
  written. `agent_id` stands for `user_id` when `user_id` is absent (an agent is a subject
  with a memory of its own); with both, the user is the subject and the agent id is kept in
  the memories' `info`, as is `app_id`. A user key may only name its own user (403).
- `conversation_id` is the session id.
- `knowledgebase_ids` are extra cubes to read; `allow_knowledgebase_ids` extra cubes to write.
  A knowledge base is a document cube: `/create/knowledgebase` creates a cube owned by the
  caller, whose files are stored through the document ingestion (RawFileMemory chunks, one
  file id each). A file id says which knowledge base it is in (`<kb id>::file-<digest>`).
- Tasks: with a scheduler (on Ray), async work is queued and `/get/status` reads the task
  log; otherwise the work is done before the answer and its task id (`sync-...`) reports
  `completed`.

Handlers are sync (they run in a pool), except the file upload, which reads its body (JSON
or multipart form) itself. No `from __future__ import annotations`: FastAPI must see the
dependency aliases (`Ctx`, `Who`) as objects.
"""

import base64
import json
import math
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import StreamingResponse
from starlette.concurrency import run_in_threadpool

from memos_ray.api import sdk_wire
from memos_ray.api.chat_routes import chat_frames, require_chat
from memos_ray.api.context import ApiContext
from memos_ray.api.deps import Ctx, Who, validated
from memos_ray.api.sse import sse_response
from memos_ray.core.filters import And, Condition, FilterExpr, Or, parse_filter
from memos_ray.domain.memory import DEFAULT_SESSION, MemoryItem, MemoryType
from memos_ray.domain.tenancy import Access
from memos_ray.errors import (
    BadRequestError,
    ForbiddenError,
    NotFoundError,
    ServiceUnavailableError,
)
from memos_ray.models.chat import Message, SamplingParams
from memos_ray.runtime.netguard import redact
from memos_ray.schemas import sdk
from memos_ray.schemas.envelope import ok
from memos_ray.schemas.product import AddRequest, SearchRequest
from memos_ray.services import records
from memos_ray.services.add import Added
from memos_ray.services.chat import ChatService, ChatTurn
from memos_ray.services.feedback import FeedbackService, FeedbackTask
from memos_ray.services.inputs import check_query, check_top_k, filters_by_cube
from memos_ray.services.memory import TEXT_TYPES, TOOL_TYPES, VISIBLE_STATUSES
from memos_ray.services.preferences import preference_note
from memos_ray.services.tenancy import Caller

router = APIRouter(prefix="/api/openmem/v1")

# Messages of the conversation given to chat and feedback as their history.
HISTORY_MESSAGES = 50
# Memory types a delete may name (`memory_type`).
DELETABLE_TYPES = frozenset(str(t) for t in MemoryType if t != MemoryType.TOPIC)


# -- memories ---------------------------------------------------------------------------------


@router.post("/add/message")
def add_message(req: sdk.AddMessageRequest, context: Ctx, who: Who) -> dict[str, Any]:
    """Store the messages in each subject's cube (and the `allow_knowledgebase_ids` cubes).
    Every subject is authorised before anything is written."""
    context.access.require_write(who)
    plans: list[tuple[str, list[str]]] = []
    for subject in _subjects(req.user_id) or _subjects(req.agent_id) or [None]:
        user_id = context.access.act_as(who, subject or who.user_id)
        requested = [user_id, *(req.allow_knowledgebase_ids or [])]
        plans.append(
            (user_id, context.access.cubes_for(user_id, requested, write=True, caller=who))
        )
    added: list[Added] = []
    messages: list[str] = []
    for user_id, cubes in plans:
        result = context.adder.add(_add_request(req, user_id, cubes), user_id, cubes)
        added += result.added
        messages.append(result.message)
    queued = list(dict.fromkeys(a.task_id for a in added if a.task_id))
    data = {
        "success": True,
        "task_id": queued[0] if queued else sdk_wire.sync_task_id(),
        "status": "waiting" if queued else "completed",
        "task_ids": queued,
        "memory_ids": list(dict.fromkeys(a.item.id for a in added)),
    }
    return ok(data, "; ".join(messages))


@router.post("/search/memory")
def search_memory(req: sdk.SearchMemoryRequest, context: Ctx, who: Who) -> dict[str, Any]:
    user_id = _subject(context, who, req.user_id, req.agent_id)
    fields: dict[str, Any] = {
        "query": req.query,
        "user_id": user_id,
        "top_k": req.memory_limit_number,
        "include_preference": req.include_preference,
        "pref_top_k": req.preference_limit_number,
        "search_tool_memory": req.include_tool_memory,
        "tool_mem_top_k": req.tool_memory_limit_number,
        "filter": req.filter,
        "session_id": req.conversation_id,
    }
    if req.relativity is not None:
        fields["relativity"] = req.relativity
    search = validated(SearchRequest, fields)
    context.searcher.check(search)
    requested = [user_id, *(req.knowledgebase_ids or [])]
    cubes = context.access.cubes_for(user_id, requested, write=False, caller=who)
    found = context.searcher.search(search, cubes)
    texts = sdk_wire.best_first((i for c in cubes for i in found.text[c]), search.top_k)
    data: dict[str, Any] = {
        "memory_detail_list": [sdk_wire.memory_detail(i) for i in texts],
        "message_detail_list": None,
        "preference_detail_list": [],
        "tool_memory_detail_list": [],
        "skill_detail_list": [],
        "profile_detail_list": [],
        "event_detail_list": [],
        "preference_note": "",
    }
    if found.preferences is not None:
        every = [p for c in cubes for p in found.preferences.get(c, [])]
        data["preference_detail_list"] = [sdk_wire.preference_detail(p) for p in every]
        data["preference_note"] = preference_note(every)
    if found.tools is not None:
        tools = sdk_wire.best_first(
            (i for c in cubes for i in found.tools.get(c, [])), search.tool_mem_top_k
        )
        data["tool_memory_detail_list"] = [sdk_wire.tool_detail(i) for i in tools]
    return ok(data, "Search completed successfully")


@router.post("/get/memory")
def get_memory(req: sdk.GetMemoryRequest, context: Ctx, who: Who) -> dict[str, Any]:
    """A page of the subject's memories, newest first (and its newest preferences and tool
    memories, at most a page of each)."""
    user_id = _subject(context, who, req.user_id, req.agent_id)
    cube_id = context.access.cubes_for(user_id, [user_id], write=False, caller=who)[0]
    items, total = context.service.get_page(
        cube_id, parse_filter(req.filter), page=req.page, page_size=req.size
    )
    data: dict[str, Any] = {
        "memory_detail_list": [sdk_wire.memory_detail(i) for i in items],
        "preference_detail_list": [],
        "tool_memory_detail_list": [],
        "profile_detail_list": [],
        "event_detail_list": [],
        "skill_detail_list": [],
        "total": total,
        "size": req.size,
        "current": req.page,
        "pages": math.ceil(total / req.size),
    }
    if req.include_preference and context.preferences is not None:
        preferences, _ = context.preferences.store.list(cube_id, 0, req.size)
        data["preference_detail_list"] = [sdk_wire.preference_detail(p) for p in preferences]
    if req.include_tool_memory:
        tools, _ = context.service.graph.list_nodes(
            cube_id, memory_types=TOOL_TYPES, statuses=VISIBLE_STATUSES, limit=req.size
        )
        data["tool_memory_detail_list"] = [sdk_wire.tool_detail(i) for i in tools]
    return ok(data, "Memories retrieved successfully")


@router.get("/get/memory/{memory_id}")
def get_memory_by_id(memory_id: str, context: Ctx, who: Who) -> dict[str, Any]:
    """One memory of a cube the caller may read; any other id is a 404, whether it exists in
    another tenant's cube or nowhere."""
    located = context.service.locate([memory_id])
    cubes = [c for c in set(located.values()) if context.access.may_read(who, c)]
    items = context.service.get_by_ids(cubes, [memory_id]) if cubes else []
    if not items:
        raise NotFoundError(f"memory {memory_id!r} not found")
    return ok(sdk_wire.memory_detail(items[0]), "Memory retrieved successfully")


@router.post("/get/message")
def get_message(req: sdk.GetMessageRequest, context: Ctx, who: Who) -> dict[str, Any]:
    """The conversation's messages, rebuilt from the sources of the memories made from it
    (memos-ray keeps no separate message log): oldest first, each once, the newest
    `message_limit_number` (default 6)."""
    user_id = context.access.act_as(who, req.user_id)
    cube_id = context.access.cubes_for(user_id, [user_id], write=False, caller=who)[0]
    limit = req.message_limit_number or 6
    messages = _conversation(context, cube_id, req.conversation_id, limit)
    return ok({"message_detail_list": messages}, f"{len(messages)} messages")


@router.post("/delete/memory")
def delete_memory(req: sdk.DeleteMemoryRequest, context: Ctx, who: Who) -> dict[str, Any]:
    """By `memory_ids`: those in cubes the caller may write are deleted, the others are left
    alone as if unknown (no existence leak). By `filter` (and `memory_type`): within the
    subject's cube. By subject alone: every memory (and preference) of its cube."""
    context.access.require_write(who)
    if req.memory_ids:
        deleted = _delete_ids(context, who, req, req.memory_ids)
    else:
        user_id = _subject(context, who, req.user_id, req.agent_id)
        cube_id = context.access.cubes_for(user_id, [user_id], write=True, caller=who)[0]
        selector = _delete_selector(req)
        if selector is None:
            deleted = {cube_id: records.clear_cube(context.service, context.preferences, cube_id)}
        else:
            deleted = {cube_id: context.service.delete_matching(cube_id, selector)}
    count = sum(len(v) for v in deleted.values())
    data = {"success": True, "deleted_count": count, "deleted": deleted}
    return ok(data, f"Deleted {count} memories")


# -- feedback, tasks, chat --------------------------------------------------------------------


@router.post("/add/feedback")
def add_feedback(req: sdk.AddFeedbackRequest, context: Ctx, who: Who) -> dict[str, Any]:
    """The user's correction, applied by the LLM to the memories it concerns (as
    /product/feedback), with the conversation's messages as its history. Queued on the
    cube's scheduler when one runs; otherwise applied before the answer."""
    context.access.require_write(who)
    if context.fine is None:
        raise ServiceUnavailableError("feedback needs an LLM (llm.backend is 'none')")
    if not req.feedback_content.strip():
        raise BadRequestError("feedback_content is empty")
    user_id = context.access.act_as(who, req.user_id)
    requested = [user_id, *(req.allow_knowledgebase_ids or [])]
    cube_id = context.access.cubes_for(user_id, requested, write=True, caller=who)[0]
    session = req.conversation_id or DEFAULT_SESSION
    history = _history(context, cube_id, req.conversation_id)
    task = FeedbackTask(
        feedback_content=req.feedback_content,
        history=history,
        feedback_time=req.feedback_time,
        session_id=session,
    )
    if context.scheduler is not None:
        queued = context.scheduler.submit(
            cube_id, user_id, "mem_feedback", task.model_dump(mode="json")
        )
        data = {"success": True, "task_id": queued.task_id, "status": queued.state}
        return ok(data, f"Feedback queued as task {queued.task_id}")
    outcome = FeedbackService(context.fine).apply_task(cube_id, user_id, task)
    data = {
        "success": True,
        "task_id": sdk_wire.sync_task_id(),
        "status": "completed",
        "answer": outcome.answer,
        "record": outcome.record(),
    }
    message = "Feedback applied"
    if outcome.error:
        message += "; the LLM's decision was unreadable, the feedback is kept as a memory"
    return ok(data, message)


@router.post("/get/status")
def get_status(req: sdk.TaskStatusRequest, context: Ctx, who: Who) -> dict[str, Any]:
    """A one-element list, as MemOS answers (the SDK unwraps it). A task of another user's
    cube the caller may not read is unknown (404)."""
    task = None
    if context.scheduler is not None:
        found = context.scheduler.tasks.get([req.task_id])
        task = next((t for t in found if _task_visible(context, who, t.user_id, t.cube_id)), None)
    if task is None and not sdk_wire.is_sync_task(req.task_id):
        raise NotFoundError(f"task {req.task_id!r} not found")
    data = sdk_wire.task_status(task, req.task_id)
    if data.get("error"):
        data["error"] = redact(str(data["error"]))
    return ok([data], "Task status")


@router.post("/chat", response_model=None)
def chat(req: sdk.ChatRequest, context: Ctx, who: Who) -> dict[str, Any] | StreamingResponse:
    """Chat with memory: the subject's cube and `knowledgebase_ids` are searched, the
    conversation's earlier messages are the history, and (`add_message_on_answer`) the
    question and answer are added to the conversation. `max_tokens` above
    `chat.max_tokens_limit` is lowered to it (the SDK always sends 8192)."""
    service = require_chat(context)
    turn = _chat_turn(req, context, who, service)
    write_back = turn.write_cube is not None
    if not req.stream:
        answer = service.complete(turn, write_back=write_back)
        data = {
            "response": answer.response,
            "reasoning": answer.reasoning,
            "memory_ids": [m.id for m in answer.prepared.memories],
            "usage": answer.generation.usage.model_dump(),
            "finish_reason": answer.generation.finish_reason,
        }
        return ok(data, "Chat completed successfully")
    prepared = service.prepare(turn)

    end: dict[str, Any] = {"memory_ids": [m.id for m in prepared.memories]}
    frames = chat_frames(service, turn, prepared, write_back, end)
    return sse_response(frames, context.config.limits.sse_ping_s)


# -- knowledge bases --------------------------------------------------------------------------


@router.post("/create/knowledgebase")
def create_knowledgebase(
    req: sdk.CreateKnowledgebaseRequest, context: Ctx, who: Who
) -> dict[str, Any]:
    """A new cube owned by the caller. With the admin key or in open mode and no `user_id`
    (the SDK sends none), the knowledge base owns itself: its id is also a user id, with no
    API key, and user keys reach it through /admin/grants. The description is not kept."""
    context.access.require_write(who)
    kb_id = f"kb-{uuid.uuid4()}"
    if who.unrestricted and not req.user_id:
        context.access.tenancy.ensure_user(kb_id)
        owner = kb_id
    else:
        owner = context.access.act_as(who, req.user_id or who.user_id)
    cube = context.access.tenancy.create_cube(kb_id, req.knowledgebase_name, owner)
    data = {"id": cube.cube_id, "name": cube.cube_name, "owner_id": cube.owner_id}
    return ok(data, "Knowledge base created")


@router.post("/delete/knowledgebase")
def delete_knowledgebase(
    req: sdk.DeleteKnowledgebaseRequest, context: Ctx, who: Who
) -> dict[str, Any]:
    """Deletes every memory (and preference) of the knowledge base; only its owner may. The
    cube itself stays, empty (memos-ray never deletes cubes or users: the id stays reserved
    for its owner, and files may be added to it again)."""
    context.access.require_write(who)
    kb_id = req.knowledgebase_id
    actor = _kb_actor(context, who, kb_id)
    context.access.cubes_for(actor, [kb_id], write=True, caller=who)
    if not who.unrestricted and context.access.tenancy.access_of(actor, kb_id) != Access.OWNER:
        raise ForbiddenError(f"only the owner may delete knowledge base {kb_id!r}")
    deleted = records.clear_cube(context.service, context.preferences, kb_id)
    data = {"success": True, "deleted_count": len(deleted)}
    return ok(data, f"Knowledge base emptied: {len(deleted)} memories deleted")


@dataclass(frozen=True)
class _KbFile:
    id: str
    name: str
    file_data: str


@router.post("/add/knowledgebase-file")
async def add_knowledgebase_file(
    request: Request,
    context: Ctx,
    who: Who,
    knowledgebase_id: str | None = None,
    type: str | None = None,
) -> dict[str, Any]:
    """Files as documents of the knowledge base: a JSON body `{knowledgebase_id, file:
    [{content, name?, type?}]}` (content: text, base64 or a `data:` URL; nothing is fetched
    from a URL), or a multipart form of `file` parts with `knowledgebase_id` (and `type`) in
    the query, as the SDK sends them. Text, markdown and PDF, with the limits of /product/add
    documents. Only `document` files: MemOS's `skill` packages are not supported (400)."""
    context.access.require_write(who)
    body = await request.body()
    content_type = request.headers.get("content-type", "")
    if content_type.lower().startswith("multipart/form-data"):
        if not knowledgebase_id:
            raise BadRequestError("knowledgebase_id is required (in the query)")
        _check_kind(type)
        kb_id = knowledgebase_id
        files = _form_files(kb_id, sdk_wire.parse_multipart(content_type, body))
    else:
        try:
            raw = json.loads(body or b"null")
        except ValueError:
            raise BadRequestError("the body is neither JSON nor a multipart form") from None
        req = validated(sdk.AddKnowledgebaseFileRequest, raw)
        kb_id = req.knowledgebase_id
        files = _json_files(kb_id, req.file)
    data = await run_in_threadpool(_add_files, context, who, kb_id, files)
    return ok(data, f"{len(data)} files added")


@router.post("/delete/knowledgebase-file")
def delete_knowledgebase_file(
    req: sdk.DeleteKnowledgebaseFileRequest, context: Ctx, who: Who
) -> dict[str, Any]:
    """Deletes every memory made from these files (as /product/delete_memory's `file_ids`),
    in the knowledge bases their ids name; write access to each is needed (403)."""
    context.access.require_write(who)
    by_kb = _files_by_kb(req.file_ids)
    plans = []
    for kb_id, ids in by_kb.items():
        actor = _kb_actor(context, who, kb_id)
        context.access.cubes_for(actor, [kb_id], write=True, caller=who)
        plans.append((kb_id, ids))
    deleted: dict[str, list[str]] = {}
    for kb_id, ids in plans:
        deleted[kb_id] = context.service.delete_matching(kb_id, _file_selector(ids))
    count = sum(len(v) for v in deleted.values())
    data = {"success": True, "deleted_count": count, "deleted": deleted}
    return ok(data, f"Deleted {count} memories of {len(req.file_ids)} files")


@router.post("/get/knowledgebase-file")
def get_knowledgebase_file(
    req: sdk.GetKnowledgebaseFileRequest, context: Ctx, who: Who
) -> dict[str, Any]:
    """The files of a knowledge base (a page, in upload order), or the files with these ids
    (those in knowledge bases the caller may not read are left out, as if unknown)."""
    if req.knowledgebase_id:
        kb_id = req.knowledgebase_id
        actor = _kb_actor(context, who, kb_id)
        context.access.cubes_for(actor, [kb_id], write=False, caller=who)
        files = [] if req.type == "skill" else sdk_wire.file_details(_chunks(context, kb_id))
        page, page_size = req.page or 1, req.page_size or 20
        start = (page - 1) * page_size
        data = {
            "file_detail_list": files[start : start + page_size],
            "total": len(files),
            "page": page,
            "page_size": page_size,
        }
        return ok(data, f"{len(files)} files")
    wanted = list(dict.fromkeys(req.file_ids or []))
    found: dict[str, dict[str, Any]] = {}
    for kb_id, ids in _files_by_kb(wanted, strict=False).items():
        if not context.access.may_read(who, kb_id):
            continue
        chunks = _chunks(context, kb_id, _file_selector(ids))
        found.update((f["id"], f) for f in sdk_wire.file_details(chunks, ids))
    files = [found[f] for f in wanted if f in found]
    data = {"file_detail_list": files, "total": len(files), "page": 1, "page_size": len(files)}
    return ok(data, f"{len(files)} files")


# -- helpers ----------------------------------------------------------------------------------


def _subjects(value: str | list[str] | None) -> list[str | None]:
    if value is None:
        return []
    return list(dict.fromkeys([value] if isinstance(value, str) else value))


def _subject(context: ApiContext, who: Caller, user_id: str | None, agent_id: str | None) -> str:
    """The acting user: `user_id`, else `agent_id`, else the API key's own user."""
    return context.access.act_as(who, user_id or agent_id or who.user_id)


def _writable(context: ApiContext, who: Caller, user_id: str, cube_id: str) -> bool:
    try:
        context.access.cubes_for(user_id, [cube_id], write=True, caller=who)
    except (ForbiddenError, NotFoundError):
        return False
    return True


def _task_visible(context: ApiContext, who: Caller, user_id: str, cube_id: str) -> bool:
    return who.unrestricted or user_id == who.user_id or context.access.may_read(who, cube_id)


def _add_request(req: sdk.AddMessageRequest, user_id: str, cubes: list[str]) -> AddRequest:
    info = dict(req.info or {})
    if req.agent_id and req.user_id and isinstance(req.agent_id, str):
        info.setdefault("agent_id", req.agent_id)
    if req.app_id:
        info.setdefault("app_id", req.app_id)
    return validated(
        AddRequest,
        {
            "user_id": user_id,
            "session_id": req.conversation_id,
            "writable_cube_ids": cubes,
            "async_mode": "async" if req.async_mode else "sync",
            "messages": req.messages,
            "custom_tags": req.tags,
            "info": info or None,
            "source": req.source,
        },
    )


def _session_items(context: ApiContext, cube_id: str, session_id: str) -> list[MemoryItem]:
    items, _ = context.service.graph.list_nodes(
        cube_id,
        filter=Condition("session_id", "eq", session_id),
        memory_types=TEXT_TYPES,
        statuses=VISIBLE_STATUSES,
    )
    return items


def _conversation(
    context: ApiContext, cube_id: str, session_id: str, limit: int
) -> list[dict[str, Any]]:
    return sdk_wire.conversation_messages(_session_items(context, cube_id, session_id), limit)


def _history(context: ApiContext, cube_id: str, session_id: str | None) -> list[Message]:
    if not session_id:
        return []
    messages = _conversation(context, cube_id, session_id, HISTORY_MESSAGES)
    return [
        Message(role=m["role"], content=m["content"])
        for m in messages
        if m["role"] in ("user", "assistant", "tool") and m["content"].strip()
    ]


def _delete_ids(
    context: ApiContext, who: Caller, req: sdk.DeleteMemoryRequest, ids: Sequence[str]
) -> dict[str, list[str]]:
    """Ids in cubes the caller may write; preference ids are looked for in the subject's
    own cube (preferences live outside the graph, which locates the others)."""
    located = context.service.locate(ids)
    acting = None
    if not who.unrestricted or req.user_id or req.agent_id:
        acting = _subject(context, who, req.user_id, req.agent_id)
    deleted: dict[str, list[str]] = {}
    for cube_id in sorted(set(located.values())):
        if acting is not None and not _writable(context, who, acting, cube_id):
            continue
        in_cube = [i for i in ids if located.get(i) == cube_id]
        deleted[cube_id] = context.service.delete(cube_id, in_cube)
    rest = [i for i in ids if i not in located]
    preferences = context.preferences
    if rest and acting and preferences is not None and _writable(context, who, acting, acting):
        found = [p.id for p in preferences.store.get(acting, rest)]
        if found:
            preferences.store.delete(acting, found)
            deleted.setdefault(acting, []).extend(found)
    return deleted


def _delete_selector(req: sdk.DeleteMemoryRequest) -> FilterExpr | None:
    parts: list[FilterExpr] = []
    parsed = parse_filter(req.filter)
    if parsed is not None:
        parts.append(parsed)
    if req.memory_type:
        if req.memory_type not in DELETABLE_TYPES:
            raise BadRequestError(
                f"memory_type {req.memory_type!r} unknown; one of {sorted(DELETABLE_TYPES)}"
            )
        parts.append(Condition("memory_type", "eq", req.memory_type))
    if not parts:
        return None
    return parts[0] if len(parts) == 1 else And(tuple(parts))


def _chat_turn(
    req: sdk.ChatRequest, context: ApiContext, who: Caller, service: ChatService
) -> ChatTurn:
    limits = context.config.limits
    check_top_k(
        limits,
        memory_limit_number=req.memory_limit_number,
        preference_limit_number=req.preference_limit_number,
    )
    check_query(req.query, limits)
    user_id = context.access.act_as(who, req.user_id)
    requested = [user_id, *(req.knowledgebase_ids or [])]
    cubes = context.access.cubes_for(user_id, requested, write=False, caller=who)
    write_cube = None
    if req.add_message_on_answer:
        write_cube = context.access.cubes_for(user_id, [user_id], write=True, caller=who)[0]
    service.model.check_model(req.model_name)
    config = context.config.chat
    params = SamplingParams(
        max_tokens=min(req.max_tokens, config.max_tokens_limit),
        temperature=config.default_temperature if req.temperature is None else req.temperature,
        top_p=1.0 if req.top_p is None else req.top_p,
    )
    return ChatTurn(
        query=req.query,
        user_id=user_id,
        readable_cubes=cubes,
        write_cube=write_cube,
        history=_history(context, cubes[0], req.conversation_id),
        system_prompt=req.system_prompt,
        top_k=req.memory_limit_number,
        relativity=req.relativity or 0.0,
        cube_filters=filters_by_cube(req.filter, cubes),
        session_id=req.conversation_id,
        params=params,
        model=req.model_name,
        include_preference=req.include_preference,
        pref_top_k=req.preference_limit_number,
    )


def _kb_actor(context: ApiContext, who: Caller, kb_id: str) -> str:
    """Who acts on a knowledge base: the key's user, or (admin key, open mode: the SDK's
    knowledge-base calls name no user) its owner."""
    if who.unrestricted:
        cube = context.access.tenancy.get_cube(kb_id)
        if cube is None:
            raise NotFoundError(f"unknown knowledge base {kb_id!r}")
        return cube.owner_id
    return context.access.act_as(who, who.user_id)


def _check_kind(kind: str | None) -> None:
    if kind not in (None, "", "document"):
        raise BadRequestError(f"file type {kind!r} is not supported; only 'document' files")


def _json_files(kb_id: str, files: Sequence[sdk.KnowledgebaseFile]) -> list[_KbFile]:
    result = []
    for n, file in enumerate(files, start=1):
        _check_kind(file.type)
        content = file.content.strip()
        if content.lower().startswith(("http://", "https://")) and " " not in content:
            raise BadRequestError(
                "file content is a URL; memos-ray fetches nothing: send the file itself "
                "(text, base64 or a data: URL)"
            )
        name = file.name or f"document-{n}"
        result.append(_KbFile(sdk_wire.file_id(kb_id, name, file.content), name, file.content))
    return result


def _form_files(kb_id: str, uploads: Sequence[sdk_wire.Upload]) -> list[_KbFile]:
    files = [u for u in uploads if u.filename is not None or u.field == "file"]
    if not files:
        raise BadRequestError("the form holds no file")
    if len(files) > 100:
        raise BadRequestError(f"{len(files)} files; the limit is 100 per request")
    result = []
    for n, upload in enumerate(files, start=1):
        name = upload.filename or f"document-{n}"
        mime = upload.content_type
        if mime in (None, "application/octet-stream"):
            mime = ""  # judged by name and content (text, or a PDF by its magic)
        data = f"data:{mime};base64,{base64.b64encode(upload.data).decode()}"
        result.append(_KbFile(sdk_wire.file_id(kb_id, name, upload.data), name, data))
    return result


def _add_files(
    context: ApiContext, who: Caller, kb_id: str, files: list[_KbFile]
) -> list[dict[str, Any]]:
    actor = _kb_actor(context, who, kb_id)
    cube_id = context.access.cubes_for(actor, [kb_id], write=True, caller=who)[0]
    # The same file twice in one upload is one file (its chunks would be counted twice).
    files = list({f.id: f for f in files}.values())
    parts = [
        {"type": "file", "file": {"file_data": f.file_data, "file_id": f.id, "filename": f.name}}
        for f in files
    ]
    add = validated(
        AddRequest,
        {
            "user_id": actor,
            "async_mode": "sync",
            "mode": "fast",
            "writable_cube_ids": [cube_id],
            "messages": [{"role": "user", "content": parts}],
        },
    )
    result = context.adder.add(add, actor, [cube_id])
    chunks = [a.item for a in result.added if a.action == "document"]
    details = {d["id"]: d for d in sdk_wire.file_details(chunks)}
    for chunk in chunks:  # the memories each file became
        for fid in sdk_wire.file_ids_of(chunk):
            details[fid].setdefault("memory_ids", []).append(chunk.id)
    return [details.get(f.id) or sdk_wire.empty_file(f.id, f.name, kb_id) for f in files]


def _files_by_kb(file_ids: Sequence[str], strict: bool = True) -> dict[str, list[str]]:
    by_kb: dict[str, list[str]] = {}
    for fid in dict.fromkeys(file_ids):
        kb_id = sdk_wire.knowledgebase_of(fid)
        if kb_id is None:
            if strict:
                raise BadRequestError(f"{fid!r} is not a knowledge-base file id")
            continue
        by_kb.setdefault(kb_id, []).append(fid)
    return by_kb


def _file_selector(file_ids: Sequence[str]) -> FilterExpr:
    return Or(tuple(Condition("file_ids", "contains", f) for f in file_ids))


def _chunks(
    context: ApiContext, kb_id: str, selector: FilterExpr | None = None
) -> list[MemoryItem]:
    items, _ = context.service.graph.list_nodes(
        kb_id,
        filter=selector,
        memory_types=[str(MemoryType.RAW_FILE)],
        statuses=VISIBLE_STATUSES,
    )
    return items
