"""Move a cube to another embedding model (or dimension) while it stays searchable.

1. begin:   the cube's record says "migrating" to the target space (old space still active).
2. copy:    every point of the old space is re-embedded with the new model and written to
            the target store beside the old one (same id, payload and keyword vector), then
            synced again until a pass finds nothing new (adds made meanwhile).
3. switch:  one registry update makes the target the cube's space; resolvers pick the new
            store and embedder from their next request on (running services within
            `spaces.SPACE_TTL_S`, the time they trust what they read of the registry).
4. cleanup: after a grace period (for requests resolved before the switch), a last sync
            brings over what such late writers put in the old space, then the cube's old
            points are deleted.

A sync compares the two stores against the graph (the source of truth): a point missing in
the target, or older there (payload item version, then updated_at), is copied; a target point
whose memory no longer exists is dropped. A newer write made in the target after the switch
is never overwritten. Every step is idempotent, so a crashed move is resumed by running the
job again.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Sequence
from typing import Any, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from memos_ray.models.embedder import Embedder
from memos_ray.services.ranking import TEXT
from memos_ray.services.spaces import EmbeddingSpace, SpaceRegistry, SpaceStores
from memos_ray.stores.graph.base import GraphStore
from memos_ray.stores.vector.base import VectorRecord

logger = logging.getLogger("memos_ray.services.reembed")


class ReembedParams(BaseModel):
    model_config = ConfigDict(extra="forbid")

    # "copy": new vectors beside the old, the cube stays in its space; "finish": sync, switch
    # and clean up; "all": both. Splitting them only chooses when the switch happens.
    phase: Literal["all", "copy", "finish"] = "all"
    batch_size: int = Field(default=256, ge=1)
    # Seconds between the switch and deleting the old vectors: at least how long a service
    # may keep using a cube's space after resolving it (`spaces.SPACE_TTL_S` plus its
    # longest single write: the space is resolved per store call).
    grace_s: float = Field(default=5.0, ge=0)
    max_rounds: int = Field(default=5, ge=1)
    # Keep the old vectors (a move back is then instant); they no longer follow writes.
    keep_old: bool = False


class ReembedReport(BaseModel):
    cube_id: str
    source: EmbeddingSpace | None = None
    target: EmbeddingSpace
    state: str = "pending"
    points: int = 0
    copied: int = 0
    dropped: int = 0
    rounds: int = 0
    removed_old: int = 0
    seconds: float = 0.0
    error: str | None = None


class SyncResult(BaseModel):
    copied: int = 0
    dropped: int = 0
    points: int = 0


def _stamp(payload: dict[str, Any]) -> tuple[int, str]:
    """How recent a point's copy of its item is (version, then updated_at)."""
    try:
        meta = json.loads(payload["item"])["metadata"]
        return int(meta.get("version", 0)), str(meta.get("updated_at", ""))
    except (KeyError, TypeError, ValueError):
        return 0, ""


class CubeMover:
    """Moves cubes into `target`; `embedder` is the target's model."""

    def __init__(
        self,
        graph: GraphStore,
        registry: SpaceRegistry,
        stores: SpaceStores,
        embedder: Embedder,
        target: EmbeddingSpace,
        default: EmbeddingSpace,
        params: ReembedParams | None = None,
    ) -> None:
        self.graph = graph
        self.registry = registry
        self.stores = stores
        self.embedder = embedder
        self.target = target
        self.default = default
        self.params = params or ReembedParams()

    def move(self, cube_id: str) -> ReembedReport:
        """The whole move, or the part `params.phase` names."""
        started = time.monotonic()
        report = ReembedReport(cube_id=cube_id, target=self.target)
        phase = self.params.phase
        try:
            source = self.begin(cube_id, report)
            if source is not None and phase in ("all", "copy"):
                self.copy(cube_id, source, report)
            if source is not None and phase in ("all", "finish"):
                self.switch(cube_id, source, report)
                if self.params.grace_s:
                    time.sleep(self.params.grace_s)
                self.cleanup(cube_id, source, report)
        except Exception as exc:
            logger.exception("moving cube %s failed", cube_id)
            report.error = f"{type(exc).__name__}: {exc}"
        report.seconds = round(time.monotonic() - started, 3)
        return report

    def begin(self, cube_id: str, report: ReembedReport) -> EmbeddingSpace | None:
        """The space the cube moves from (None: already in the target); records the move."""
        record = self.registry.get(cube_id)
        source = record.active if record is not None else self.default
        report.source = source
        if source == self.target:
            report.state = "already in target"
            return None
        self.registry.begin(cube_id, source, self.target)
        report.state = "migrating"
        return source

    def copy(self, cube_id: str, source: EmbeddingSpace, report: ReembedReport) -> None:
        """Fill the target, then sync until a pass copies nothing (writes made meanwhile)."""
        for _ in range(self.params.max_rounds):
            result = self.sync(cube_id, source)
            report.rounds += 1
            report.copied += result.copied
            report.dropped += result.dropped
            report.points = result.points
            if not result.copied and not result.dropped:
                break

    def switch(self, cube_id: str, source: EmbeddingSpace, report: ReembedReport) -> None:
        """One last sync right before the switch keeps the gap to writes made since copy()."""
        result = self.sync(cube_id, source)
        report.copied += result.copied
        report.dropped += result.dropped
        self.registry.switch(cube_id, self.target)
        report.state = "switched"

    def cleanup(self, cube_id: str, source: EmbeddingSpace, report: ReembedReport) -> None:
        """Bring over what late writers put in the old space, then delete the old vectors."""
        result = self.sync(cube_id, source)
        report.copied += result.copied
        report.dropped += result.dropped
        report.points = result.points
        if not self.params.keep_old:
            old = self.stores.store(source)
            ids = old.scan(cube_id).ids
            for start in range(0, len(ids), self.params.batch_size):
                old.delete(cube_id, ids[start : start + self.params.batch_size])
            report.removed_old = len(ids)
        report.state = "moved"

    def sync(self, cube_id: str, source: EmbeddingSpace) -> SyncResult:
        old, new = self.stores.store(source), self.stores.store(self.target)
        old_scan, new_scan = old.scan(cube_id), new.scan(cube_id)
        new_stamps = {i: _stamp(p) for i, p in zip(new_scan.ids, new_scan.payloads, strict=True)}
        alive = self.graph.existing_ids(cube_id, [*old_scan.ids, *new_scan.ids])
        wanted = [
            i
            for i, p in zip(old_scan.ids, old_scan.payloads, strict=True)
            if i in alive and (i not in new_stamps or _stamp(p) > new_stamps[i])
        ]
        for start in range(0, len(wanted), self.params.batch_size):
            batch = wanted[start : start + self.params.batch_size]
            new.upsert(cube_id, self._reembedded(old.retrieve(cube_id, batch)))
        gone = [i for i in new_scan.ids if i not in alive]
        if gone:
            new.delete(cube_id, gone)
        points = len(set(new_scan.ids) - set(gone) | set(wanted))
        return SyncResult(copied=len(wanted), dropped=len(gone), points=points)

    def _reembedded(self, records: Sequence[VectorRecord]) -> list[VectorRecord]:
        """Same id, payload and keyword vector; dense (and token) vectors of the new model,
        made from the text the old ones were made from."""
        texts = [str(r.payload.get(TEXT) or r.payload.get("memory") or "") for r in records]
        encoded = self.embedder.encode(texts)
        tokens: list[np.ndarray | None] = (
            list(encoded.tokens) if encoded.tokens else [None] * len(records)
        )
        dim = self.target.dim
        return [
            VectorRecord(
                id=r.id,
                dense=vector.tolist(),
                sparse=r.sparse,
                payload=r.payload,
                tokens=tok if tok is not None and tok.shape[-1] == dim else None,
            )
            for r, vector, tok in zip(records, encoded.dense, tokens, strict=True)
        ]
