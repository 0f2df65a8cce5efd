"""What the LLM read in each window a fine ingest sent it (`ingest_extractions`).

The LLM is the slow, costly and not quite deterministic part of a fine ingest, so each
window's extraction is recorded before anything derived from it is written. A re-run (after a
crash, or over the same input) reads the recorded extraction instead of asking again, and so
derives exactly the same memories, with the same ids. The first recorded answer wins: two
attempts of one task racing each other end up writing the same thing.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from sqlalchemy import Column, Engine, MetaData, String, Table, Text, func, insert, select
from sqlalchemy.exc import IntegrityError, SQLAlchemyError

from memos_ray.domain.memory import iso, utc_now
from memos_ray.errors import StoreError
from memos_ray.stores.sql.sqlalchemy import create_tables

_META = MetaData()
EXTRACTIONS_TABLE = Table(
    "ingest_extractions",
    _META,
    Column("window_id", String(64), primary_key=True),
    Column("cube_id", String(128), nullable=False, index=True),
    # The FineRecord JSON (jobs.ingest_fine): memories, preferences, summary or the error.
    Column("result", Text, nullable=False),
    Column("created_at", String(32), nullable=False),
)

# Ids per IN (...) query: well under SQLite's bound-parameter limit.
_CHUNK = 500


class ExtractionLedger:
    def __init__(self, engine: Engine) -> None:
        self._engine = engine
        create_tables(_META, engine)

    def get_many(self, window_ids: Sequence[str]) -> dict[str, str]:
        """Recorded results of these windows (those without one are absent)."""
        wanted = list(dict.fromkeys(window_ids))
        found: dict[str, str] = {}
        try:
            with self._engine.connect() as conn:
                for start in range(0, len(wanted), _CHUNK):
                    chunk = wanted[start : start + _CHUNK]
                    rows = conn.execute(
                        select(EXTRACTIONS_TABLE.c.window_id, EXTRACTIONS_TABLE.c.result).where(
                            EXTRACTIONS_TABLE.c.window_id.in_(chunk)
                        )
                    )
                    found.update({row.window_id: row.result for row in rows})
        except SQLAlchemyError as exc:
            raise StoreError(f"reading recorded extractions failed: {exc}") from exc
        return found

    def record(self, cube_id: str, results: Mapping[str, str]) -> dict[str, str]:
        """Record results not recorded yet; returns what is recorded for each window now
        (an earlier answer, where one raced this one, wins)."""
        now = iso(utc_now())
        for window_id, result in results.items():
            try:
                with self._engine.begin() as conn:
                    conn.execute(
                        insert(EXTRACTIONS_TABLE).values(
                            window_id=window_id, cube_id=cube_id, result=result, created_at=now
                        )
                    )
            except IntegrityError:
                continue  # recorded meanwhile: that one stands
            except SQLAlchemyError as exc:
                raise StoreError(f"recording an extraction failed: {exc}") from exc
        return self.get_many(list(results))

    def count(self, cube_id: str | None = None) -> int:
        query = select(func.count()).select_from(EXTRACTIONS_TABLE)
        if cube_id is not None:
            query = query.where(EXTRACTIONS_TABLE.c.cube_id == cube_id)
        with self._engine.connect() as conn:
            return int(conn.execute(query).scalar_one())
