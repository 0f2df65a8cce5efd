"""Request and response models of the /admin routes: memos-ray's own fields and MemOS's
(`user_name`, `scopes`, `description`, `expires_in_days`; `key`, `key_prefix`, `keys`)."""

from __future__ import annotations

from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field, model_validator

from memos_ray.schemas.values import ValidText

# Scope names are checked against the known ones by the route (400 names the bad one).
ScopeName = Annotated[str, Field(min_length=1, max_length=32)]
# MemOS's default for a new key; memos-ray's `{user_id}` body keeps its old read+write key.
MEMOS_DEFAULT_SCOPES = ("read",)
USER_ID_DEFAULT_SCOPES = ("read", "write")


class CreateKeyRequest(ValidText):
    """Either memos-ray's `{user_id}` or MemOS's `{user_name, scopes, description,
    expires_in_days}`; both name the key's user (created if missing)."""

    model_config = ConfigDict(extra="forbid")

    user_id: str | None = Field(default=None, min_length=1, max_length=128)
    user_name: str | None = Field(default=None, min_length=1, max_length=128)
    scopes: list[ScopeName] | None = Field(default=None, max_length=16)
    description: str | None = Field(default=None, max_length=500)
    expires_in_days: int | None = Field(default=None, ge=1, le=365)

    @model_validator(mode="after")
    def _one_user(self) -> CreateKeyRequest:
        if self.user_id is None and self.user_name is None:
            raise ValueError("user_name (or user_id) is required")
        if None not in (self.user_id, self.user_name) and self.user_id != self.user_name:
            raise ValueError("user_id and user_name name different users; send one")
        return self

    @property
    def owner(self) -> str:
        owner = self.user_name or self.user_id
        assert owner is not None  # checked by the validator
        return owner

    @property
    def requested_scopes(self) -> list[str]:
        if self.scopes is None:
            defaults = MEMOS_DEFAULT_SCOPES if self.user_name else USER_ID_DEFAULT_SCOPES
            return list(defaults)
        # MemOS stores an empty list as its default.
        return self.scopes or list(MEMOS_DEFAULT_SCOPES)


class CreatedKey(BaseModel):
    """`data` of POST /admin/keys and /admin/users; `api_key` is shown this once."""

    user_id: str
    api_key: str
    key_id: str
    key_prefix: str
    scopes: list[str]
    description: str | None = None
    created_at: str
    expires_at: str | None = None


class KeyInfo(BaseModel):
    """One key in a listing: never the key, nor its hash. `id` and `user_name` are MemOS's
    names for `key_id` and `user_id`."""

    id: str
    key_id: str
    key_prefix: str
    user_name: str
    user_id: str
    scopes: list[str]
    description: str | None
    created_at: str
    expires_at: str | None
    last_used_at: str | None
    created_by: str | None
    # Usable now: neither revoked nor expired.
    is_active: bool
    revoked: bool
    expired: bool


class MasterKey(BaseModel):
    """A fresh master key: configure its hash as MEMOS_ADMIN_KEY_SHA256 to switch to it."""

    key: str
    key_hash: str
    env_line: str
