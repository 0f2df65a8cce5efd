"""The durable record of which embedding space each moved cube is in (`embedding_spaces`).

A space is (model, dim, location); a cube without a row is in the configured (default)
space. Every change is one short transaction, so a switch is atomic for every reader.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field
from sqlalchemy import (
    Column,
    Engine,
    Integer,
    MetaData,
    RowMapping,
    String,
    Table,
    insert,
    select,
    update,
)
from sqlalchemy.exc import IntegrityError, SQLAlchemyError

from memos_ray.domain.memory import iso, utc_now
from memos_ray.errors import ConflictError, StoreError
from memos_ray.stores.sql.sqlalchemy import create_tables

SpaceState = Literal["active", "migrating"]


class EmbeddingSpace(BaseModel):
    """`location` names the vector store holding the space's vectors: a shard or local path
    relative to the data dir, or a Qdrant collection (with a Qdrant url)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    model: str = ""  # "" is the packaged all-MiniLM-L6-v2
    dim: int = Field(ge=1)
    location: str

    @property
    def slug(self) -> str:
        name = self.model.rstrip("/").split("/")[-1] or "all-minilm-l6-v2"
        base = re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-")[:40]
        digest = hashlib.sha1(f"{self.model}\x00{self.dim}".encode()).hexdigest()[:8]
        return f"{base}-{self.dim}-{digest}"


class CubeSpace(BaseModel):
    cube_id: str
    active: EmbeddingSpace
    state: SpaceState = "active"
    target: EmbeddingSpace | None = None
    updated_at: str = ""


_META = MetaData()
SPACES_TABLE = Table(
    "embedding_spaces",
    _META,
    Column("cube_id", String(128), primary_key=True),
    Column("model", String(1024), nullable=False),
    Column("dim", Integer, nullable=False),
    Column("location", String(1024), nullable=False),
    Column("state", String(16), nullable=False),
    Column("target_model", String(1024)),
    Column("target_dim", Integer),
    Column("target_location", String(1024)),
    Column("updated_at", String(32), nullable=False),
)


class SpaceRegistry:
    """Per-cube space records in the SQL store; every change is one short transaction, so
    the switch from old to new space is atomic for every reader."""

    def __init__(self, engine: Engine) -> None:
        self._engine = engine
        create_tables(_META, engine)

    def get(self, cube_id: str) -> CubeSpace | None:
        return self.get_many([cube_id]).get(cube_id)

    def get_many(self, cube_ids: Sequence[str]) -> dict[str, CubeSpace]:
        """The records of these cubes that have one, in one query."""
        wanted = list(dict.fromkeys(cube_ids))
        if not wanted:
            return {}
        with self._guard("read"), self._engine.connect() as conn:
            rows = conn.execute(select(SPACES_TABLE).where(SPACES_TABLE.c.cube_id.in_(wanted)))
            found = list(rows.mappings())
        return {row["cube_id"]: self._record(row) for row in found}

    @staticmethod
    def _record(found: RowMapping) -> CubeSpace:
        target = None
        if found["target_dim"] is not None:
            target = EmbeddingSpace(
                model=found["target_model"] or "",
                dim=found["target_dim"],
                location=found["target_location"],
            )
        return CubeSpace(
            cube_id=found["cube_id"],
            active=EmbeddingSpace(
                model=found["model"], dim=found["dim"], location=found["location"]
            ),
            state=found["state"],
            target=target,
            updated_at=found["updated_at"],
        )

    def active(self, cube_id: str, default: EmbeddingSpace) -> EmbeddingSpace:
        record = self.get(cube_id)
        return record.active if record is not None else default

    def any_moved(self) -> bool:
        """Whether any cube has a record (none: every cube is in the default space)."""
        with self._guard("read"), self._engine.connect() as conn:
            return conn.execute(select(SPACES_TABLE.c.cube_id).limit(1)).first() is not None

    def begin(self, cube_id: str, source: EmbeddingSpace, target: EmbeddingSpace) -> None:
        """Record the move (idempotent: resuming the same move is fine, another is refused)."""
        record = self.get(cube_id)
        if record is not None and record.state == "migrating" and record.target != target:
            raise ConflictError(
                f"cube {cube_id} is already moving to {record.target}; finish that move first"
            )
        values = {
            "model": source.model,
            "dim": source.dim,
            "location": source.location,
            "state": "migrating",
            "target_model": target.model,
            "target_dim": target.dim,
            "target_location": target.location,
            "updated_at": iso(utc_now()),
        }
        self._upsert(cube_id, values, exists=record is not None)

    def switch(self, cube_id: str, target: EmbeddingSpace) -> None:
        """From now on the cube is in `target`: one UPDATE, seen by every reader at once."""
        values = {
            "model": target.model,
            "dim": target.dim,
            "location": target.location,
            "state": "active",
            "target_model": None,
            "target_dim": None,
            "target_location": None,
            "updated_at": iso(utc_now()),
        }
        self._upsert(cube_id, values, exists=self.get(cube_id) is not None)

    def _upsert(self, cube_id: str, values: dict[str, object], *, exists: bool) -> None:
        with self._guard("write"), self._engine.begin() as conn:
            if exists:
                conn.execute(
                    update(SPACES_TABLE).where(SPACES_TABLE.c.cube_id == cube_id).values(**values)
                )
            else:
                try:
                    conn.execute(insert(SPACES_TABLE).values(cube_id=cube_id, **values))
                except IntegrityError as exc:
                    raise ConflictError(f"cube {cube_id}: its space changed meanwhile") from exc

    @staticmethod
    @contextmanager
    def _guard(what: str) -> Iterator[None]:
        try:
            yield
        except (ConflictError, IntegrityError):
            raise
        except SQLAlchemyError as exc:
            raise StoreError(f"embedding space registry {what} failed: {exc}") from exc
