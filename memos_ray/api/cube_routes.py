"""MemOS's cube-level /product routes: register and probe cubes, owners of memory ids,
delete records, suggested questions. Each one checks access like the core routes: ids and
cubes resolve only inside cubes the caller may read (or write, for changes).

No `from __future__ import annotations`: FastAPI must see the dependency aliases as objects.
"""

from typing import Annotated, Any

from fastapi import APIRouter
from fastapi import Path as PathParam

from memos_ray.api.context import ApiContext
from memos_ray.api.deps import Ctx, Who
from memos_ray.domain.tenancy import Access
from memos_ray.errors import BadRequestError
from memos_ray.models.chat import Message
from memos_ray.schemas.cubes import (
    ClearCubeRequest,
    DeleteByRecordRequest,
    ExistCubeRequest,
    MemoryIdsRequest,
    RecoverByRecordRequest,
    RegisterCubeRequest,
    ShareCubeRequest,
    SuggestionRequest,
    UnregisterCubeRequest,
    UserInfoRequest,
)
from memos_ray.schemas.envelope import ok
from memos_ray.services import records
from memos_ray.services.inputs import history_messages
from memos_ray.services.memory import TEXT_TYPES, VISIBLE_STATUSES
from memos_ray.services.suggestions import suggest
from memos_ray.services.tenancy import Caller

router = APIRouter(prefix="/product")

CubePath = Annotated[str, PathParam(min_length=1, max_length=128)]


@router.post("/register_cube")
def register_cube(req: RegisterCubeRequest, context: Ctx, who: Who) -> dict[str, Any]:
    """Makes the cube available to the user: an unknown id becomes the user's new cube, an
    existing one must be readable by the user. Cubes are never loaded from a server path."""
    name = req.mem_cube_name_or_path
    if not req.mem_cube_id and ("/" in name or "\\" in name):
        raise BadRequestError(
            "mem_cube_name_or_path is a path: memos-ray loads no cube from a server path; "
            "give a cube name or mem_cube_id"
        )
    cube_id = req.mem_cube_id or name
    user_id = context.access.acting_user(who, req.user_id, [cube_id])
    if context.access.tenancy.get_cube(cube_id) is None:
        context.access.claim_cube(user_id, cube_id, who)
    context.access.cubes_for(user_id, [cube_id], write=False, caller=who)
    data = {"cube_id": cube_id, "cube_name_or_path": name}
    return ok(data, "Cube registered successfully")


@router.post("/exist_mem_cube_id")
def exist_mem_cube_id(req: ExistCubeRequest, context: Ctx, who: Who) -> dict[str, Any]:
    """Whether the cube exists for the caller: a cube it may not read is reported absent."""
    return ok({req.mem_cube_id: context.access.may_read(who, req.mem_cube_id)}, "Successfully")


@router.post("/get_user_names_by_memory_ids")
def get_user_names_by_memory_ids(req: MemoryIdsRequest, context: Ctx, who: Who) -> dict[str, Any]:
    """Each id's cube (MemOS's `user_name`), None for ids unknown or in cubes the caller may
    not read."""
    located = context.service.locate(req.memory_ids)
    names: dict[str, str | None] = dict.fromkeys(req.memory_ids)
    readable: dict[str, bool] = {}
    for memory_id, cube_id in located.items():
        if cube_id not in readable:
            # The admin sees every owner, also of cubes only the graph knows.
            readable[cube_id] = who.unrestricted or context.access.may_read(who, cube_id)
        if readable[cube_id]:
            names[memory_id] = cube_id
    return ok(names, "Successfully")


@router.post("/delete_memory_by_record_id")
def delete_memory_by_record_id(
    req: DeleteByRecordRequest, context: Ctx, who: Who
) -> dict[str, Any]:
    """Soft: the cube's visible memories become `deleted` under the record id. Hard: what
    that record deleted is purged from every store."""
    context.access.require_write(who)
    cube_id = _writable(context, who, req.mem_cube_id)
    if req.hard_delete:
        count = records.hard_delete(context.service, cube_id, req.record_id)
    else:
        count = records.soft_delete(context.service, cube_id, req.record_id)
    data = {"status": "success", "count": count, "hard_delete": req.hard_delete}
    return ok(data, "Called Successfully")


@router.post("/recover_memory_by_record_id")
def recover_memory_by_record_id(
    req: RecoverByRecordRequest, context: Ctx, who: Who
) -> dict[str, Any]:
    context.access.require_write(who)
    cube_id = _writable(context, who, req.mem_cube_id)
    count = records.recover(context.service, cube_id, req.delete_record_id)
    return ok({"status": "success", "count": count}, "Called Successfully")


@router.post("/share_cube")
def share_cube(req: ShareCubeRequest, context: Ctx, who: Who) -> dict[str, Any]:
    user_id = context.access.acting_user(who, req.user_id, [req.cube_id])
    granted = context.access.share(
        who, user_id, req.cube_id, req.target_user_id, Access(req.access)
    )
    return ok(granted.model_dump(mode="json"), "Cube shared")


@router.post("/unregister_cube")
def unregister_cube(req: UnregisterCubeRequest, context: Ctx, who: Who) -> dict[str, Any]:
    user_id = context.access.acting_user(who, req.user_id, [req.cube_id])
    removed = context.access.unregister(who, user_id, req.cube_id)
    data = {"cube_id": req.cube_id, "user_id": user_id, "removed": removed}
    return ok(data, "Cube unregistered" if removed else "The user had no grant on the cube")


@router.post("/get_user_info")
def get_user_info(req: UserInfoRequest, context: Ctx, who: Who) -> dict[str, Any]:
    """MemOS's `get_user_info`: the user, its role, and every cube it may reach (owned, then
    granted) with its access level."""
    user_id = context.access.act_as(who, req.user_id or who.user_id)
    tenancy = context.access.tenancy
    user = tenancy.get_user(user_id)
    cubes = [
        {"cube_id": c.cube_id, "cube_name": c.cube_name, "owner_id": c.owner_id, "access": "owner"}
        for c in tenancy.cubes_of(user_id)
    ]
    for grant in tenancy.grants_of(user_id):
        cube = tenancy.get_cube(grant.cube_id)
        if cube is not None:
            cubes.append(
                {
                    "cube_id": cube.cube_id,
                    "cube_name": cube.cube_name,
                    "owner_id": cube.owner_id,
                    "access": str(grant.access),
                }
            )
    # The role is the caller's when it asks about itself; another user seen by the admin.
    is_admin = who.is_admin and user_id == who.user_id
    data = {
        "user_id": user_id,
        "user_name": user_id,
        "role": "ADMIN" if is_admin else "USER",
        "created_at": user.created_at if user else None,
        "accessible_cubes": cubes,
    }
    return ok(data, "User info retrieved successfully")


@router.post("/cubes/{cube_id}/clear")
def clear_cube(cube_id: CubePath, req: ClearCubeRequest, context: Ctx, who: Who) -> dict[str, Any]:
    """MemOS's `delete_all_memories`: every memory and preference of the cube is deleted from
    every store (write access needed); the cube, its owner and grants stay."""
    context.access.require_write(who)
    user_id = context.access.acting_user(who, req.user_id, [cube_id])
    context.access.cubes_for(user_id, [cube_id], write=True, caller=who)
    deleted = records.clear_cube(context.service, context.preferences, cube_id)
    data = {"cube_id": cube_id, "deleted_count": len(deleted)}
    return ok(data, f"Deleted {len(deleted)} memories")


@router.post("/suggestions")
def suggestions(req: SuggestionRequest, context: Ctx, who: Who) -> dict[str, Any]:
    user_id = context.access.acting_user(who, req.user_id, [req.mem_cube_id])
    cube_id = context.access.cubes_for(user_id, [req.mem_cube_id], write=False, caller=who)[0]
    if isinstance(req.message, str):
        conversation = [Message(role="user", content=req.message)] if req.message.strip() else []
    else:
        conversation = history_messages(req.message)
    memories, _ = context.service.graph.list_nodes(
        cube_id, memory_types=TEXT_TYPES, statuses=VISIBLE_STATUSES, limit=20
    )
    model = context.fine.model if context.fine is not None else None
    questions, by_model = suggest(model, memories, conversation, req.language)
    how = "written by the chat model" if by_model else "drawn from memory keys (no chat model)"
    return ok({"query": questions}, f"Suggestions {how}")


def _writable(context: ApiContext, who: Caller, cube_id: str) -> str:
    user_id = context.access.acting_user(who, None, [cube_id])
    return context.access.cubes_for(user_id, [cube_id], write=True, caller=who)[0]
