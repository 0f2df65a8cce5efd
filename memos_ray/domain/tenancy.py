"""Users, cubes and grants: who may read or write which memories."""

from __future__ import annotations

from enum import StrEnum

from pydantic import BaseModel, ConfigDict


class Access(StrEnum):
    READ = "read"
    WRITE = "write"
    OWNER = "owner"

    @property
    def can_write(self) -> bool:
        return self in (Access.WRITE, Access.OWNER)


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
