"""ORM tables behind the SQL tenancy store (later roles, e.g. a task log, add tables here).

Timestamps are stored as fixed-width ISO text (`memos_ray.domain.memory.iso`) so SQLite and
PostgreSQL round-trip them identically and they sort as strings.
"""

from __future__ import annotations

from sqlalchemy import (
    BigInteger,
    Boolean,
    CheckConstraint,
    ForeignKey,
    Integer,
    MetaData,
    String,
    Text,
    UniqueConstraint,
    false,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

# Ids are validated to at most this many characters before they reach the database.
ID_MAX_LEN = 128
NAME_MAX_LEN = 256
DESCRIPTION_MAX_LEN = 500
KEY_ID_LEN = 32
_TS_LEN = 32

# Deterministic constraint names, so future migrations can refer to them on every backend.
_NAMING = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=_NAMING)


class UserRow(Base):
    __tablename__ = "users"

    user_id: Mapped[str] = mapped_column(String(ID_MAX_LEN), primary_key=True)
    created_at: Mapped[str] = mapped_column(String(_TS_LEN))


class ApiKeyRow(Base):
    """Only the sha256 of a key is kept; a leaked table does not leak usable keys."""

    __tablename__ = "api_keys"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    user_id: Mapped[str] = mapped_column(
        ForeignKey("users.user_id", ondelete="CASCADE"), index=True
    )
    key_hash: Mapped[str] = mapped_column(String(64), unique=True)
    # The first characters of the key, enough for a human to tell keys apart in a listing.
    key_prefix: Mapped[str] = mapped_column(String(16))
    created_at: Mapped[str] = mapped_column(String(_TS_LEN))
    revoked: Mapped[bool] = mapped_column(Boolean, default=False, server_default=false())
    # Added after the first release: `migrate.add_missing_columns` adds them to older tables,
    # hence nullable key_id there (backfilled at start) and the server default of scopes
    # (keys made before scopes existed could read and write).
    key_id: Mapped[str] = mapped_column(String(KEY_ID_LEN), unique=True)
    scopes: Mapped[str] = mapped_column(String(64), server_default="read,write")
    description: Mapped[str | None] = mapped_column(String(DESCRIPTION_MAX_LEN), nullable=True)
    expires_at: Mapped[str | None] = mapped_column(String(_TS_LEN), nullable=True)
    created_by: Mapped[str | None] = mapped_column(String(ID_MAX_LEN), nullable=True)
    last_used_at: Mapped[str | None] = mapped_column(String(_TS_LEN), nullable=True)


class CubeRow(Base):
    __tablename__ = "cubes"

    cube_id: Mapped[str] = mapped_column(String(ID_MAX_LEN), primary_key=True)
    cube_name: Mapped[str] = mapped_column(String(NAME_MAX_LEN))
    owner_id: Mapped[str] = mapped_column(
        ForeignKey("users.user_id", ondelete="CASCADE"), index=True
    )
    created_at: Mapped[str] = mapped_column(String(_TS_LEN))


class GrantRow(Base):
    """Shared access below ownership; the owner never has a row here."""

    __tablename__ = "grants"
    __table_args__ = (
        UniqueConstraint("cube_id", "user_id"),
        CheckConstraint("access IN ('read', 'write')", name="access_level"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    cube_id: Mapped[str] = mapped_column(ForeignKey("cubes.cube_id", ondelete="CASCADE"))
    user_id: Mapped[str] = mapped_column(
        ForeignKey("users.user_id", ondelete="CASCADE"), index=True
    )
    access: Mapped[str] = mapped_column(String(8))


class LLMUsageRow(Base):
    """Running LLM token counts per cube; updated with one atomic increment per call."""

    __tablename__ = "llm_usage"

    cube_id: Mapped[str] = mapped_column(String(ID_MAX_LEN), primary_key=True)
    calls: Mapped[int] = mapped_column(BigInteger, default=0)
    prompt_tokens: Mapped[int] = mapped_column(BigInteger, default=0)
    completion_tokens: Mapped[int] = mapped_column(BigInteger, default=0)
    budget_tokens: Mapped[int | None] = mapped_column(BigInteger, nullable=True)
    updated_at: Mapped[str] = mapped_column(String(_TS_LEN))


class TaskRow(Base):
    """A scheduler task: recorded before the caller hears of it, updated as it runs."""

    __tablename__ = "tasks"
    __table_args__ = (
        CheckConstraint(
            "state IN ('waiting', 'in_progress', 'completed', 'failed')", name="task_state"
        ),
    )

    # Arrival order: a cube's tasks run in this order.
    seq: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    task_id: Mapped[str] = mapped_column(String(64), unique=True)
    cube_id: Mapped[str] = mapped_column(String(ID_MAX_LEN), index=True)
    user_id: Mapped[str] = mapped_column(String(ID_MAX_LEN), index=True)
    label: Mapped[str] = mapped_column(String(32))
    # JSON text: what the handler needs (memory ids, feedback, ...).
    payload: Mapped[str] = mapped_column(Text)
    state: Mapped[str] = mapped_column(String(16), index=True)
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    max_attempts: Mapped[int] = mapped_column(Integer)
    error: Mapped[str | None] = mapped_column(Text, nullable=True)
    result: Mapped[str | None] = mapped_column(Text, nullable=True)
    # The `task_id` the caller sent (one add may make several tasks); None when absent.
    request_task_id: Mapped[str | None] = mapped_column(String(128), index=True, nullable=True)
    not_before: Mapped[str] = mapped_column(String(_TS_LEN))
    created_at: Mapped[str] = mapped_column(String(_TS_LEN))
    updated_at: Mapped[str] = mapped_column(String(_TS_LEN))
