"""Users, cubes, grants and API keys: who may read or write which memories."""

from __future__ import annotations

from collections.abc import Iterable
from enum import StrEnum

from pydantic import BaseModel, ConfigDict


class Access(StrEnum):
    READ = "read"
    WRITE = "write"
    OWNER = "owner"

    @property
    def can_write(self) -> bool:
        return self in (Access.WRITE, Access.OWNER)


class Scope(StrEnum):
    """What an API key may do. Cumulative: `write` implies reading, `admin` implies both (an
    admin could mint itself such a key anyway)."""

    READ = "read"
    WRITE = "write"
    ADMIN = "admin"


# Keys made before scopes existed, and keys of users created by /admin/users.
FULL_USER_SCOPES: tuple[Scope, ...] = (Scope.READ, Scope.WRITE)
# MemOS's `all` scope: everything.
ALL_SCOPES = "all"


def parse_scopes(scopes: Iterable[str]) -> tuple[Scope, ...]:
    """Known scope names, deduplicated in canonical order; ValueError on an unknown one."""
    wanted: set[Scope] = set()
    for name in scopes:
        if name == ALL_SCOPES:
            wanted.update(Scope)
            continue
        try:
            wanted.add(Scope(name))
        except ValueError:
            known = ", ".join([*(s.value for s in Scope), ALL_SCOPES])
            raise ValueError(f"unknown scope {name!r}; known scopes: {known}") from None
    return tuple(s for s in Scope if s in wanted)


class User(BaseModel):
    model_config = ConfigDict(extra="forbid")

    user_id: str
    created_at: str


class Cube(BaseModel):
    model_config = ConfigDict(extra="forbid")

    cube_id: str
    cube_name: str
    owner_id: str
    created_at: str


class Grant(BaseModel):
    model_config = ConfigDict(extra="forbid", use_enum_values=True)

    cube_id: str
    user_id: str
    access: Access


class LLMUsage(BaseModel):
    """LLM tokens spent for a cube (extraction, judgements, chat) and its optional budget."""

    model_config = ConfigDict(extra="forbid")

    cube_id: str
    calls: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    # None: no limit. Over it, fine extraction pauses (adds are stored in fast mode).
    budget_tokens: int | None = None

    @property
    def total_tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens

    @property
    def over_budget(self) -> bool:
        return self.budget_tokens is not None and self.total_tokens >= self.budget_tokens


class ApiKey(BaseModel):
    """A key's record; the key itself is never kept, only its hash (which this omits)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    # Public id: what listings show and revocation takes.
    key_id: str
    user_id: str
    key_prefix: str
    scopes: tuple[Scope, ...]
    description: str | None = None
    created_at: str
    # ISO texts like every timestamp in the store; None: never expires / never used.
    expires_at: str | None = None
    created_by: str | None = None
    last_used_at: str | None = None
    revoked: bool = False

    def expired(self, now_iso: str) -> bool:
        return self.expires_at is not None and self.expires_at <= now_iso

    def active(self, now_iso: str) -> bool:
        return not self.revoked and not self.expired(now_iso)

    @property
    def can_write(self) -> bool:
        return Scope.WRITE in self.scopes or Scope.ADMIN in self.scopes

    @property
    def is_admin(self) -> bool:
        return Scope.ADMIN in self.scopes
