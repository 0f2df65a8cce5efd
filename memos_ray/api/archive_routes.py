"""Cube dumps over the API: `memos-ray-cube` directories in the service's export folder.

A request names a dump, never a path: each user has its own folder below
`archive.export_dir`, so one tenant can neither read nor overwrite another's dumps (the admin
may load from any user's folder). Dumping hands a whole cube to whoever reads the export
folder, so only the cube's owner (or the admin) may do it.

No `from __future__ import annotations`: FastAPI must see the dependency aliases as objects.
"""

import hashlib
import re
from pathlib import Path
from typing import Any

from fastapi import APIRouter

from memos_ray.api.context import ApiContext
from memos_ray.api.cube_routes import CubePath
from memos_ray.api.deps import Ctx, Who
from memos_ray.domain.tenancy import Access
from memos_ray.errors import ForbiddenError, NotFoundError
from memos_ray.models.adapters import AdapterStore
from memos_ray.schemas.cubes import DumpCubeRequest, LoadCubeRequest
from memos_ray.schemas.envelope import ok
from memos_ray.services import cube_archive, memos_import
from memos_ray.services.tenancy import Caller

router = APIRouter(prefix="/product/cubes")

_PLAIN = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")


@router.post("/{cube_id}/dump")
def dump_cube(cube_id: CubePath, req: DumpCubeRequest, context: Ctx, who: Who) -> dict[str, Any]:
    """Writes the cube into the caller's export folder as `name` (which must be new)."""
    context.access.require_write(who)
    user_id = context.access.acting_user(who, req.user_id, [cube_id])
    context.access.cubes_for(user_id, [cube_id], write=False, caller=who)
    cube = context.access.tenancy.get_cube(cube_id)
    if not who.unrestricted and context.access.tenancy.access_of(user_id, cube_id) != Access.OWNER:
        raise ForbiddenError(f"only the owner of cube {cube_id!r} may dump it")
    target = export_folder(context, user_id) / req.name
    manifest = cube_archive.dump(
        context.service,
        cube_id,
        target,
        space=cube_archive.space_for(context.service, cube_id, context.config),
        cube_name=cube.cube_name if cube else None,
        owner_id=cube.owner_id if cube else None,
        preferences=context.preferences,
        adapters=_adapters(context),
    )
    data = {
        "cube_id": cube_id,
        "name": req.name,
        "user_id": user_id,
        "created_at": manifest.created_at,
        "counts": manifest.counts,
    }
    return ok(data, f"Cube {cube_id} dumped as {req.name}")


@router.post("/load")
def load_cube(req: LoadCubeRequest, context: Ctx, who: Who) -> dict[str, Any]:
    """Loads a dump as a new (or empty) cube of the caller: the dump is checked whole
    (manifest, checksums, format version) before anything is made or written."""
    context.access.require_write(who)
    user_id = context.access.act_as(who, req.user_id)
    source_user = req.from_user_id or user_id
    if source_user != user_id and not who.unrestricted:
        raise ForbiddenError("a user loads only dumps of its own export folder")
    source = export_folder(context, source_user) / req.name
    if not source.is_dir():
        raise NotFoundError(f"no dump named {req.name!r} in the export folder of {source_user!r}")
    if memos_import.is_memos_dump(source):
        # MemOS's own layout: read and checked whole before the cube is made.
        memos_dump = memos_import.read(source, req.cube_id)
        _target(context, who, user_id, memos_dump.cube_id)
        report = memos_import.load(context.service, memos_dump, preferences=context.preferences)
    else:
        manifest = cube_archive.read_manifest(source)
        cube_id = _target(context, who, user_id, req.cube_id or manifest.cube_id)
        report = cube_archive.load(
            context.service,
            source,
            as_cube=cube_id,
            space=cube_archive.space_for(context.service, cube_id, context.config),
            preferences=context.preferences,
            adapters=_adapters(context),
            manifest=manifest,
        )
    data = {**report.summary(), "name": req.name}
    return ok(data, f"Dump {req.name} loaded as cube {report.cube_id}")


@router.get("/dumps")
def list_dumps(context: Ctx, who: Who, user_id: str | None = None) -> dict[str, Any]:
    """The finished dumps of the user's export folder (an interrupted one has no manifest
    and is not listed)."""
    user_id = context.access.act_as(who, user_id)
    folder = export_folder(context, user_id)
    dumps = []
    for path in sorted(folder.iterdir()) if folder.is_dir() else []:
        manifest = path / "manifest.json"
        if path.name.startswith(".") or not manifest.is_file():
            continue
        try:
            found = cube_archive.Manifest.model_validate_json(manifest.read_bytes())
        except ValueError:
            continue
        dumps.append(
            {
                "name": path.name,
                "cube_id": found.cube_id,
                "created_at": found.created_at,
                "counts": found.counts,
            }
        )
    return ok({"user_id": user_id, "dumps": dumps}, f"{len(dumps)} dumps")


def _target(context: ApiContext, who: Caller, user_id: str, cube_id: str) -> str:
    """The cube a load writes: made now for the user, or one it may write."""
    context.access.claim_cube(user_id, cube_id, who)
    return context.access.cubes_for(user_id, [cube_id], write=True, caller=who)[0]


def export_folder(context: ApiContext, user_id: str) -> Path:
    """The user's own folder below the export dir: its id when that is a plain name, else a
    digest of it (`~` marks those, and no plain name has one)."""
    name = (
        user_id
        if _PLAIN.fullmatch(user_id)
        else "~" + hashlib.sha256(user_id.encode()).hexdigest()[:32]
    )
    return context.config.data_path(context.config.archive.export_dir) / name


def _adapters(context: ApiContext) -> AdapterStore:
    return (
        context.chat.adapters
        if context.chat is not None
        else AdapterStore.for_config(context.config)
    )
