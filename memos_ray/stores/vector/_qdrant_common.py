"""What the two Qdrant backends (server/local client and embedded edge) must agree on.

Their SDKs have different model classes, so filters are described here in neutral form
and each backend turns them into its own objects.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import numpy as np

from memos_ray import metrics
from memos_ray.errors import BadRequestError, MemosError, StoreError
from memos_ray.stores.vector.base import CubeScan, VectorFilter

DENSE = "dense"
SPARSE = "keywords"
# Per-token vectors (a multivector, MaxSim comparator): scored only for a given set of ids,
# never searched, so they get no HNSW graph and are stored as float16.
TOKENS = "tokens"
SCAN_PAGE = 4096
CUBE_KEY = "cube_id"
# Keyword payload indexes; cube_id is the tenant key of every query.
INDEXED_FIELDS: tuple[str, ...] = (CUBE_KEY, "memory_type", "status")

# Exact (brute-force) dense search up to this many candidate points (after filters), so results
# are the true top-k. Measured on qdrant-edge, 384-d, 2 cores: 0.4 ms for a 1k-point cube,
# 4.7 ms for 5.5k, 14 ms for 55k. HNSW is no bargain below that: on a 55k cube (random data,
# the hard case) ef=512 took 11.8 ms for recall@10 0.58, and 10k points at the default ef gave
# 0.62. Above the limit we use HNSW anyway, with a wide beam.
EXACT_MAX_CANDIDATES = 100_000
HNSW_EF = 512


def hnsw_ef(limit: int) -> int:
    return max(HNSW_EF, 4 * limit)


@dataclass(frozen=True)
class FilterSpec:
    """A conjunction: every (key, values) must match one of its values; ids, if set, too."""

    any_of: tuple[tuple[str, tuple[str, ...]], ...]
    ids: tuple[str, ...] | None = None


def point_id(raw: str) -> str:
    """Qdrant accepts only UUIDs (or ints) as ids; canonical form keeps lookups consistent."""
    try:
        return str(uuid.UUID(str(raw)))
    except ValueError as exc:
        raise BadRequestError(f"vector point id must be a UUID, got {raw!r}") from exc


def point_ids(raw: Sequence[str]) -> list[str]:
    return list(dict.fromkeys(point_id(r) for r in raw))


def check_dim(vector: Sequence[float], dim: int) -> list[float]:
    if len(vector) != dim:
        raise BadRequestError(f"dense vector has dimension {len(vector)}, the store expects {dim}")
    return [float(x) for x in vector]


def check_limit(limit: int) -> None:
    if limit < 0:
        raise BadRequestError(f"limit must be >= 0, got {limit}")


def cube_spec(cube_ids: Sequence[str]) -> FilterSpec | None:
    """Only the cube restriction: scopes counts, deletes and the IDF corpus."""
    cubes = tuple(dict.fromkeys(cube_ids))
    return FilterSpec(any_of=((CUBE_KEY, cubes),)) if cubes else None


def filter_spec(cube_ids: Sequence[str], flt: VectorFilter | None) -> FilterSpec | None:
    """None when nothing can match (an empty list admits nothing): callers skip the query."""
    base = cube_spec(cube_ids)
    if base is None:
        return None
    if flt is None:
        return base
    any_of = list(base.any_of)
    for key, values in (("memory_type", flt.memory_types), ("status", flt.statuses)):
        if values is not None:
            if not values:
                return None
            any_of.append((key, tuple(dict.fromkeys(values))))
    ids: tuple[str, ...] | None = None
    if flt.ids is not None:
        ids = tuple(point_ids(flt.ids))
        if not ids:
            return None
    return FilterSpec(any_of=tuple(any_of), ids=ids)


def token_rows(tokens: Any) -> list[list[float]] | None:
    """A (m, dim) array as the SDKs want it; None when there is nothing to store."""
    if tokens is None or len(tokens) == 0:
        return None
    rows: list[list[float]] = tokens.astype("float32").tolist()
    return rows


def token_array(rows: Any) -> np.ndarray | None:
    """Stored token vectors back as the float16 array the embedder made; None if absent."""
    if not rows:
        return None
    return np.asarray(rows, dtype=np.float16)


def collect_scan(pages: Iterable[Sequence[Any]], dim: int, revision: str) -> CubeScan:
    """A CubeScan from pages of records (either SDK's: `.id`, `.vector` dict, `.payload`)."""
    ids: list[str] = []
    dense: list[Any] = []
    payloads: list[dict[str, Any]] = []
    for records in pages:
        for rec in records:
            vectors = rec.vector if isinstance(rec.vector, dict) else {}
            ids.append(str(rec.id))
            dense.append(vectors[DENSE])
            payloads.append(from_payload(rec.payload))
    matrix = np.asarray(dense, dtype=np.float32).reshape(len(ids), dim)
    return CubeScan(ids, matrix, payloads, revision)


def to_payload(cube_id: str, payload: Mapping[str, Any]) -> dict[str, Any]:
    if CUBE_KEY in payload and payload[CUBE_KEY] != cube_id:
        raise BadRequestError(f"payload key {CUBE_KEY!r} is reserved for the store")
    return {**payload, CUBE_KEY: cube_id}


def from_payload(payload: Mapping[str, Any] | None) -> dict[str, Any]:
    return {k: v for k, v in (payload or {}).items() if k != CUBE_KEY}


@contextmanager
def sdk_errors(what: str) -> Iterator[None]:
    """Our own errors pass through; anything the SDK raises becomes a StoreError."""
    try:
        yield
    except MemosError:
        raise
    except Exception as exc:
        metrics.store_error("vector", "qdrant", what)
        raise StoreError(f"vector store {what} failed: {exc}") from exc
