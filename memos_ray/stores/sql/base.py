"""The relational store role: users, API keys, cubes, grants and LLM token accounting."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Iterable
from datetime import datetime

from memos_ray.domain.tenancy import (
    FULL_USER_SCOPES,
    Access,
    ApiKey,
    Cube,
    Grant,
    LLMUsage,
    Scope,
    User,
)


class TenancyStore(ABC):
    """Who exists, who owns which cube, who was granted what. Keys are stored hashed."""

    @abstractmethod
    def create_user(self, user_id: str) -> User:
        """Create a user; ConflictError if it exists."""

    @abstractmethod
    def ensure_user(self, user_id: str) -> User:
        """Return the user, creating it if missing (open mode and admin acting)."""

    @abstractmethod
    def get_user(self, user_id: str) -> User | None: ...

    @abstractmethod
    def create_api_key(
        self,
        user_id: str,
        scopes: Iterable[Scope | str] = FULL_USER_SCOPES,
        description: str | None = None,
        expires_at: datetime | None = None,
        created_by: str | None = None,
    ) -> tuple[str, ApiKey]:
        """Mint a new key for an existing user: the plaintext (returned this once) and its
        record. BadRequestError for an unknown scope or none at all."""

    @abstractmethod
    def key_for(self, api_key: str) -> ApiKey | None:
        """The record of a plaintext key, or None when unknown, revoked or expired."""

    def user_for_key(self, api_key: str) -> str | None:
        """The user a usable plaintext key belongs to, or None."""
        key = self.key_for(api_key)
        return key.user_id if key is not None else None

    @abstractmethod
    def list_api_keys(self, user_id: str | None = None) -> list[ApiKey]:
        """Every key's record (revoked and expired ones included), newest first; one user's
        with `user_id`."""

    @abstractmethod
    def revoke_api_key(self, key_id: str) -> bool:
        """Revoke a key (kept for the record); False when unknown or already revoked."""

    @abstractmethod
    def create_cube(self, cube_id: str, cube_name: str, owner_id: str) -> Cube:
        """Create a cube; ConflictError if the id is taken."""

    @abstractmethod
    def get_cube(self, cube_id: str) -> Cube | None: ...

    @abstractmethod
    def grant(self, cube_id: str, user_id: str, access: Access) -> Grant:
        """Give (or change) a user's read/write access to a cube."""

    @abstractmethod
    def revoke(self, cube_id: str, user_id: str) -> bool:
        """Remove a user's grant on a cube (never the owner's access); True if one existed."""

    @abstractmethod
    def access_of(self, user_id: str, cube_id: str) -> Access | None:
        """OWNER for the owner, the granted level otherwise, None without access."""

    @abstractmethod
    def cubes_of(self, user_id: str) -> list[Cube]:
        """Cubes the user owns."""

    @abstractmethod
    def grants_of(self, user_id: str) -> list[Grant]:
        """The user's read/write grants on other users' cubes (owned cubes: `cubes_of`)."""

    @abstractmethod
    def record_llm_usage(
        self, cube_id: str, prompt_tokens: int, completion_tokens: int, calls: int = 1
    ) -> LLMUsage:
        """Add to the cube's counts atomically (several replicas count at once)."""

    @abstractmethod
    def llm_usage(self, cube_id: str) -> LLMUsage:
        """The cube's counts; zeros when nothing was spent yet."""

    @abstractmethod
    def set_llm_budget(self, cube_id: str, budget_tokens: int | None) -> LLMUsage:
        """Set (or, with None, lift) the cube's token budget."""

    @abstractmethod
    def close(self) -> None: ...
