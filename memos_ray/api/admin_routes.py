"""The /admin routes: users, API keys (MemOS's key API and memos-ray's), grants, master key.

Every answer keeps memos-ray's `{code, message, data}` envelope and, where MemOS's admin API
has the route, carries MemOS's fields at the top level too, so MemOS's clients read them.
The master key or a key with the `admin` scope may call them all, except minting a master
key (the master key only) and /admin/health (anyone).

No `from __future__ import annotations` here: FastAPI must see the dependency aliases
(`deps.Ctx`, `deps.Who`) as objects, not strings.
"""

import logging
from datetime import timedelta
from typing import Any

from fastapi import APIRouter

from memos_ray.api.deps import Ctx, Who
from memos_ray.domain.memory import iso, utc_now
from memos_ray.domain.tenancy import Access, ApiKey, Scope, parse_scopes
from memos_ray.errors import BadRequestError, NotFoundError
from memos_ray.schemas.admin import CreatedKey, CreateKeyRequest, KeyInfo, MasterKey
from memos_ray.schemas.envelope import ok
from memos_ray.schemas.product import CreateUserRequest, GrantRequest
from memos_ray.services.tenancy import Caller, mint_master_key

logger = logging.getLogger("memos_ray.api")

# `created_by` of keys the master key made (a key with the admin scope records its user).
MASTER_CREATOR = "master-key"

router = APIRouter(prefix="/admin")


@router.get("/health")
def admin_health(context: Ctx) -> dict[str, Any]:
    """Unauthenticated, like MemOS's: says whether keys are needed, nothing more."""
    enabled = not context.access.open_mode
    return {"status": "ok", "auth_enabled": enabled, "master_key_configured": enabled}


@router.post("/users")
def create_user(req: CreateUserRequest, context: Ctx, who: Who) -> dict[str, Any]:
    context.access.require_admin(who)
    context.access.tenancy.create_user(req.user_id)
    key, record = context.access.tenancy.create_api_key(req.user_id, created_by=_creator(who))
    return ok(_created(key, record).model_dump(), "User created")


@router.post("/keys")
def create_key(req: CreateKeyRequest, context: Ctx, who: Who) -> dict[str, Any]:
    context.access.require_admin(who)
    try:
        scopes = parse_scopes(req.requested_scopes)
    except ValueError as exc:
        raise BadRequestError(str(exc)) from None
    expires_at = None
    if req.expires_in_days is not None:
        expires_at = utc_now() + timedelta(days=req.expires_in_days)
    tenancy = context.access.tenancy
    tenancy.ensure_user(req.owner)
    key, record = tenancy.create_api_key(
        req.owner, scopes, req.description, expires_at, created_by=_creator(who)
    )
    logger.info("API key %s (%s) created for %r", record.key_id, ",".join(scopes), req.owner)
    body = ok(
        _created(key, record).model_dump(),
        "API key created; it is shown this once, store it securely",
    )
    # MemOS's CreateKeyResponse fields.
    body.update(
        key=key, key_prefix=record.key_prefix, user_name=record.user_id, scopes=_names(record)
    )
    return body


@router.get("/keys")
def list_keys(
    context: Ctx, who: Who, user_name: str | None = None, user_id: str | None = None
) -> dict[str, Any]:
    """Every key, or one user's (`user_name` as MemOS, or `user_id`); never a key itself."""
    context.access.require_admin(who)
    if user_name and user_id and user_name != user_id:
        raise BadRequestError("user_id and user_name name different users; send one")
    records = context.access.tenancy.list_api_keys(user_name or user_id or None)
    now = iso(utc_now())
    keys = [_info(record, now).model_dump() for record in records]
    return {**ok(keys, f"Found {len(keys)} key(s)"), "keys": keys}


@router.delete("/keys/{key_id}")
def revoke_key(key_id: str, context: Ctx, who: Who) -> dict[str, Any]:
    """Revoke a key: refused from the next request on; its record stays for listings."""
    context.access.require_admin(who)
    if not context.access.tenancy.revoke_api_key(key_id):
        raise NotFoundError(f"API key {key_id!r} not found or already revoked")
    logger.info("API key %s revoked", key_id)
    return {**ok({"key_id": key_id, "revoked": True}, "API key revoked"), "success": True}


@router.post("/generate-master-key")
def generate_master_key(context: Ctx, who: Who) -> dict[str, Any]:
    """A new master key. Nothing changes until MEMOS_ADMIN_KEY_SHA256 is set to its hash
    (and the old MEMOS_ADMIN_KEY removed) and the service restarted."""
    context.access.require_master(who)
    key, key_hash = mint_master_key()
    master = MasterKey(key=key, key_hash=key_hash, env_line=f"MEMOS_ADMIN_KEY_SHA256={key_hash}")
    logger.warning("a new master key was generated; it takes effect once configured")
    message = (
        "Master key generated; set MEMOS_ADMIN_KEY_SHA256 to key_hash (and unset "
        "MEMOS_ADMIN_KEY) to switch to it. The key is shown this once."
    )
    return {**ok(master.model_dump(), message), **master.model_dump()}


@router.post("/grants")
def grant(req: GrantRequest, context: Ctx, who: Who) -> dict[str, Any]:
    context.access.require_admin(who)
    granted = context.access.tenancy.grant(req.cube_id, req.user_id, Access(req.access))
    return ok(granted.model_dump(mode="json"), "Access granted")


def _creator(who: Caller) -> str | None:
    if who.is_master:
        return MASTER_CREATOR
    return who.user_id


def _names(record: ApiKey) -> list[str]:
    return [Scope(s).value for s in record.scopes]


def _created(key: str, record: ApiKey) -> CreatedKey:
    return CreatedKey(
        user_id=record.user_id,
        api_key=key,
        key_id=record.key_id,
        key_prefix=record.key_prefix,
        scopes=_names(record),
        description=record.description,
        created_at=record.created_at,
        expires_at=record.expires_at,
    )


def _info(record: ApiKey, now: str) -> KeyInfo:
    return KeyInfo(
        id=record.key_id,
        key_id=record.key_id,
        key_prefix=record.key_prefix,
        user_name=record.user_id,
        user_id=record.user_id,
        scopes=_names(record),
        description=record.description,
        created_at=record.created_at,
        expires_at=record.expires_at,
        last_used_at=record.last_used_at,
        created_by=record.created_by,
        is_active=record.active(now),
        revoked=record.revoked,
        expired=record.expired(now),
    )
