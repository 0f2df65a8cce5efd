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
