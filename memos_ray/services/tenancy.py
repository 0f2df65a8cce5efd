"""Who may act as whom and touch which cube. Stricter than MemOS: tenancy is enforced."""

from __future__ import annotations

import hashlib
import hmac
import secrets
from collections.abc import Sequence
from dataclasses import dataclass, field

from memos_ray.domain.tenancy import Access, Grant, Scope
from memos_ray.errors import (
    BadRequestError,
    ConflictError,
    ForbiddenError,
    NotFoundError,
    UnauthorizedError,
)
from memos_ray.stores.sql.base import TenancyStore

_EVERY_SCOPE = frozenset(s.value for s in Scope)


@dataclass(frozen=True)
class Caller:
    """The authenticated principal of one request."""

    user_id: str | None
    # The master key, or a key with the `admin` scope: may act as anyone, call /admin routes.
    is_admin: bool = False
    # Open mode: no admin key configured; local use, every caller is trusted.
    open_mode: bool = False
    # What the key may do (`memos_ray.domain.tenancy.Scope` values).
    scopes: frozenset[str] = field(default_factory=frozenset)
    # The API key's public id; None for the master key and in open mode.
    key_id: str | None = None
    # The configured admin key itself: the one principal that may mint a new master key.
    is_master: bool = False

    @property
    def unrestricted(self) -> bool:
        return self.is_admin or self.open_mode

    @property
    def can_write(self) -> bool:
        return self.open_mode or bool({Scope.WRITE, Scope.ADMIN} & self.scopes)


# Users and cubes are never deleted, so "it exists" can be remembered per process: a hot
# search path then does no SQL at all in open mode (ensure_user is a write transaction).
_KNOWN_LIMIT = 100_000


class AccessControl:
    """Authentication (master key, API keys) and the checks every route makes.

    The master key is `MemosConfig.admin_key`, or the key whose sha256 is `admin_key_sha256`
    (so the plaintext need not sit in the config); with neither, the service is open.
    """

    def __init__(
        self,
        tenancy: TenancyStore,
        admin_key: str | None,
        admin_key_sha256: str | None = None,
    ) -> None:
        self.tenancy = tenancy
        self._admin_key = admin_key.encode() if admin_key else None
        self._admin_key_sha256 = admin_key_sha256.lower().encode() if admin_key_sha256 else None
        self._known_users: set[str] = set()
        self._known_cubes: set[str] = set()

    @staticmethod
    def _remember(known: set[str], key: str) -> None:
        if len(known) >= _KNOWN_LIMIT:
            known.clear()
        known.add(key)

    @property
    def open_mode(self) -> bool:
        return self._admin_key is None and self._admin_key_sha256 is None

    def _is_master_key(self, token: str) -> bool:
        """Constant-time comparisons, both made whatever the first one says."""
        raw = token.encode("utf-8", "surrogatepass")
        plain = self._admin_key is not None and hmac.compare_digest(raw, self._admin_key)
        hashed = self._admin_key_sha256 is not None and hmac.compare_digest(
            hashlib.sha256(raw).hexdigest().encode(), self._admin_key_sha256
        )
        return plain or hashed

    def authenticate(self, authorization: str | None) -> Caller:
        if self.open_mode:
            return Caller(user_id=None, open_mode=True, scopes=_EVERY_SCOPE)
        if not authorization:
            raise UnauthorizedError("missing Authorization: Bearer <api key>")
        scheme, _, token = authorization.partition(" ")
        token = token.strip()
        # `Token` is the scheme MemOS's own clients send.
        if scheme.lower() not in ("bearer", "token") or not token:
            raise UnauthorizedError("Authorization must be 'Bearer <api key>' or 'Token <api key>'")
        if self._is_master_key(token):
            return Caller(user_id=None, is_admin=True, scopes=_EVERY_SCOPE, is_master=True)
        key = self.tenancy.key_for(token)
        if key is None:
            raise UnauthorizedError("invalid, expired or revoked API key")
        return Caller(
            user_id=key.user_id,
            is_admin=key.is_admin,
            scopes=frozenset(s.value for s in key.scopes),
            key_id=key.key_id,
        )

    def require_admin(self, caller: Caller) -> None:
        if not caller.unrestricted:
            raise ForbiddenError("this route needs the admin key or a key with the 'admin' scope")

    def require_master(self, caller: Caller) -> None:
        """Minting a master key needs the master key itself, not just the `admin` scope."""
        if not (caller.is_master or caller.open_mode):
            raise ForbiddenError("only the master key (the configured admin key) may do this")

    def require_write(self, caller: Caller) -> None:
        """Refuse read-only keys on a route that changes anything."""
        if not caller.can_write:
            raise ForbiddenError("this API key is read-only; writing needs the 'write' scope")

    def share(
        self, caller: Caller, user_id: str, cube_id: str, target: str, access: Access
    ) -> Grant:
        """The owner (or the admin) grants another user read or write access."""
        self.require_write(caller)
        if self.tenancy.get_cube(cube_id) is None:
            raise NotFoundError(f"unknown cube {cube_id!r}")
        if not caller.unrestricted and self.tenancy.access_of(user_id, cube_id) != Access.OWNER:
            raise ForbiddenError(f"only the owner of cube {cube_id!r} may share it")
        return self.tenancy.grant(cube_id, target, access)

    def unregister(self, caller: Caller, user_id: str, cube_id: str) -> bool:
        """The user's grant on the cube is removed: it leaves the user's view, and the
        owner's data stays. An owner keeps its cube (delete its memories to empty it)."""
        self.require_write(caller)
        if self.tenancy.access_of(user_id, cube_id) == Access.OWNER:
            raise BadRequestError(
                f"user {user_id!r} owns cube {cube_id!r}; an owner cannot unregister it"
            )
        return self.tenancy.revoke(cube_id, user_id)

    def claim_cube(self, user_id: str, cube_id: str, caller: Caller) -> bool:
        """MemOS's writes make the cubes they name: a cube id nobody has yet becomes the
        writer's own cube (owner `user_id`). True if it was made now."""
        if cube_id in self._known_cubes or self.tenancy.get_cube(cube_id) is not None:
            return False
        self.require_write(caller)
        self.tenancy.ensure_user(user_id)
        try:
            self.tenancy.create_cube(cube_id, cube_id, user_id)
        except ConflictError:  # made concurrently, or the id is taken by a user's name
            return False
        self._remember(self._known_cubes, cube_id)
        return True

    def act_as(self, caller: Caller, user_id: str | None) -> str:
        """The user a request acts for: the caller itself, or anyone for admin / open mode."""
        if caller.unrestricted:
            # An admin-scoped key acts as its own user unless told otherwise.
            user_id = user_id or caller.user_id
            if not user_id:
                raise BadRequestError("user_id is required")
            if user_id not in self._known_users:
                self.tenancy.ensure_user(user_id)
                self._remember(self._known_users, user_id)
            return user_id
        assert caller.user_id is not None
        if user_id and user_id != caller.user_id:
            raise ForbiddenError(f"this API key may not act as user {user_id!r}")
        return caller.user_id

    def cubes_for(
        self, user_id: str, cube_ids: Sequence[str] | None, *, write: bool, caller: Caller
    ) -> list[str]:
        """Check access to each cube; a missing list means the user's own default cube."""
        if write:
            self.require_write(caller)
        requested = list(dict.fromkeys(cube_ids)) if cube_ids else [user_id]
        for cube_id in requested:
            self._check(user_id, cube_id, write=write, caller=caller)
        return requested

    def _check(self, user_id: str, cube_id: str, *, write: bool, caller: Caller) -> None:
        if cube_id not in self._known_cubes:
            self._ensure_cube(user_id, cube_id)
            self._remember(self._known_cubes, cube_id)
        if caller.unrestricted:
            return
        access = self.tenancy.access_of(user_id, cube_id)
        if access is None:
            raise ForbiddenError(f"user {user_id!r} has no access to cube {cube_id!r}")
        if write and not Access(access).can_write:
            raise ForbiddenError(f"user {user_id!r} may only read cube {cube_id!r}")

    def _ensure_cube(self, user_id: str, cube_id: str) -> None:
        cube = self.tenancy.get_cube(cube_id)
        if cube is None:
            if cube_id == user_id:
                # A user's default cube (id = user id) comes into being on first use.
                self.tenancy.ensure_user(user_id)
                try:
                    self.tenancy.create_cube(cube_id, cube_id, user_id)
                    return
                except ConflictError:  # created concurrently by another request
                    cube = self.tenancy.get_cube(cube_id)
            if cube is None:
                raise NotFoundError(
                    f"unknown cube {cube_id!r}; create it with /product/create_cube"
                )

    def acting_user(self, caller: Caller, user_id: str | None, cubes: Sequence[str] | None) -> str:
        """The user a request acts for. MemOS makes `user_id` optional where cubes are named:
        a key stands for its owner, and the admin key (or open mode) acts as the first named
        cube's owner."""
        if user_id or not caller.unrestricted:
            return self.act_as(caller, user_id or caller.user_id)
        cube = self.tenancy.get_cube(cubes[0]) if cubes else None
        if cube is None:
            raise BadRequestError("user_id is required (or name an existing cube)")
        return self.act_as(caller, cube.owner_id)

    def may_read(self, caller: Caller, cube_id: str) -> bool:
        """Whether the caller itself may read the cube (an unknown cube: no)."""
        if caller.unrestricted:
            return self.tenancy.get_cube(cube_id) is not None
        return caller.user_id is not None and self.readable_cube(caller.user_id, cube_id, caller)

    def readable_cube(self, user_id: str, cube_id: str, caller: Caller) -> bool:
        if self.tenancy.get_cube(cube_id) is None:
            return False
        return caller.unrestricted or self.tenancy.access_of(user_id, cube_id) is not None


MASTER_KEY_PREFIX = "mk_"


def mint_master_key() -> tuple[str, str]:
    """A new random master key and its sha256 (hex), the value of MEMOS_ADMIN_KEY_SHA256.

    Nothing is stored: the service switches keys when its config does, so a lost answer
    leaves the current master key as it was."""
    key = MASTER_KEY_PREFIX + secrets.token_hex(32)
    return key, hashlib.sha256(key.encode()).hexdigest()
