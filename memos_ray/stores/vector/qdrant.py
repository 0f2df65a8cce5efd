"""VectorStore on qdrant-client: a Qdrant server by url, or the client's local mode by path.

Local mode (path or ":memory:") is exact brute force in Python, single-process and slow past
~20k points; it is meant for tests and small single-process setups. One collection holds every
cube; `cube_id` in the payload scopes each call.
"""

from __future__ import annotations

import math
import uuid
import warnings
from collections.abc import Iterator, Sequence
from contextlib import contextmanager

import numpy as np
from qdrant_client import QdrantClient
from qdrant_client import models as qm

from memos_ray.errors import ConfigError
from memos_ray.stores.vector import _qdrant_common as common
from memos_ray.stores.vector.base import (
    CubeScan,
    LateScores,
    SparseVector,
    VectorFilter,
    VectorHit,
    VectorRecord,
    VectorStore,
    WriteStamp,
)

_REVISION_NAMESPACE = uuid.UUID("5b0f3f8e-7d1c-4f0a-9a51-3d0c2f6b9e11")
_REVISION_OF = "revision_of"


def _revision_point(cube_id: str) -> str:
    """Each cube's revision lives in a vector-less point of its own (no cube_id key, so
    no cube-scoped query, count or delete ever sees it); every process sharing the
    collection reads and bumps the same one."""
    return str(uuid.uuid5(_REVISION_NAMESPACE, cube_id))


def _filter(spec: common.FilterSpec) -> qm.Filter:
    must: list[qm.Condition] = [
        qm.FieldCondition(key=key, match=qm.MatchAny(any=list(values)))
        for key, values in spec.any_of
    ]
    if spec.ids is not None:
        must.append(qm.HasIdCondition(has_id=list(spec.ids)))
    return qm.Filter(must=must)


class QdrantVectorStore(VectorStore):
    """Dense "dense" (cosine) plus sparse "keywords" (IDF modifier) named vectors per point."""

    def __init__(
        self,
        dim: int,
        *,
        url: str | None = None,
        api_key: str | None = None,
        path: str | None = None,
        collection: str = "memos_text",
        timeout_s: float = 10.0,
        cube_scoped_idf: bool = True,
    ) -> None:
        """`cube_scoped_idf` computes IDF over the queried cubes only, so one tenant's corpus
        never moves another's keyword scores; turn it off for servers older than the client."""
        if dim <= 0:
            raise ConfigError(f"dense dimension must be positive, got {dim}")
        if url and path:
            raise ConfigError("give a Qdrant url or a local path, not both")
        self._dim = dim
        self._collection = collection
        self._server = bool(url)
        self._cube_scoped_idf = cube_scoped_idf
        self._closed = False
        with common.sdk_errors("connect"):
            if url:
                self._client = QdrantClient(
                    url=url, api_key=api_key, timeout=max(1, math.ceil(timeout_s))
                )
            else:
                self._client = QdrantClient(location=None if path else ":memory:", path=path)
            try:
                self._ensure_collection()
            except BaseException:
                # Local mode locks its path until closed.
                self._client.close()
                raise

    @property
    def concurrent_reads(self) -> bool:
        """The server client is thread-safe; local mode mutates plain Python state."""
        return self._server

    @property
    def dim(self) -> int:
        return self._dim

    def _ensure_collection(self) -> None:
        if not self._client.collection_exists(self._collection):
            try:
                self._client.create_collection(
                    self._collection,
                    vectors_config={
                        common.DENSE: qm.VectorParams(size=self._dim, distance=qm.Distance.COSINE),
                        common.TOKENS: qm.VectorParams(
                            size=self._dim,
                            distance=qm.Distance.COSINE,
                            multivector_config=qm.MultiVectorConfig(
                                comparator=qm.MultiVectorComparator.MAX_SIM
                            ),
                            datatype=qm.Datatype.FLOAT16,
                            hnsw_config=qm.HnswConfigDiff(m=0),
                        ),
                    },
                    sparse_vectors_config={
                        common.SPARSE: qm.SparseVectorParams(modifier=qm.Modifier.IDF)
                    },
                )
            except Exception:
                # Another process may have created it between the check and the call.
                if not self._client.collection_exists(self._collection):
                    raise
        self._check_schema()
        if self._server:
            for field in common.INDEXED_FIELDS:
                schema: qm.PayloadSchemaType | qm.KeywordIndexParams = (
                    qm.KeywordIndexParams(type=qm.KeywordIndexType.KEYWORD, is_tenant=True)
                    if field == common.CUBE_KEY
                    else qm.PayloadSchemaType.KEYWORD
                )
                self._client.create_payload_index(self._collection, field, field_schema=schema)

    def _check_schema(self) -> None:
        params = self._client.get_collection(self._collection).config.params
        vectors = params.vectors if isinstance(params.vectors, dict) else {}
        dense = vectors.get(common.DENSE)
        if dense is None or dense.size != self._dim:
            found = None if dense is None else dense.size
            raise ConfigError(
                f"collection {self._collection!r} has dense dimension {found}, expected {self._dim}"
            )
        if common.SPARSE not in (params.sparse_vectors or {}):
            raise ConfigError(f"collection {self._collection!r} lacks the sparse vector")
        # Collections made before token vectors existed still work, without MaxSim scores.
        self._has_tokens = common.TOKENS in vectors

    @contextmanager
    def _quiet(self) -> Iterator[None]:
        """Local mode warns on every query that it ignores search params; expected here."""
        with warnings.catch_warnings():
            if not self._server:
                warnings.simplefilter("ignore", UserWarning)
            yield

    def upsert(self, cube_id: str, records: Sequence[VectorRecord]) -> WriteStamp | None:
        """No stamp: other processes may write the collection between any two calls."""
        if not records:
            return None
        points = []
        for rec in records:
            vector: dict[str, list[float] | qm.SparseVector] = {
                common.DENSE: common.check_dim(rec.dense, self._dim)
            }
            if rec.sparse.indices:
                vector[common.SPARSE] = qm.SparseVector(
                    indices=list(rec.sparse.indices), values=list(rec.sparse.values)
                )
            tokens = common.token_rows(rec.tokens) if self._has_tokens else None
            if tokens is not None:
                vector[common.TOKENS] = tokens  # type: ignore[assignment]
            points.append(
                qm.PointStruct(
                    id=common.point_id(rec.id),
                    vector=vector,
                    payload=common.to_payload(cube_id, rec.payload),
                )
            )
        cube = common.cube_spec([cube_id])
        assert cube is not None
        with common.sdk_errors("upsert"):
            # The update filter leaves a same-id point of another cube untouched.
            self._client.upsert(
                self._collection, points=points, update_filter=_filter(cube), wait=True
            )
        self._bump(cube_id)
        return None

    def _bump(self, cube_id: str) -> None:
        with common.sdk_errors("revision"):
            self._client.upsert(
                self._collection,
                points=[
                    qm.PointStruct(
                        id=_revision_point(cube_id),
                        vector={},
                        payload={_REVISION_OF: cube_id, "revision": uuid.uuid4().hex},
                    )
                ],
                wait=True,
            )

    def revision(self, cube_id: str) -> str:
        with common.sdk_errors("revision"):
            found = self._client.retrieve(
                self._collection, ids=[_revision_point(cube_id)], with_payload=True
            )
        return str((found[0].payload or {}).get("revision", "")) if found else ""

    def scan(self, cube_id: str, filter: VectorFilter | None = None) -> CubeScan:
        revision = self.revision(cube_id)
        spec = common.filter_spec([cube_id], filter)
        return common.collect_scan(self._scan_pages(spec), self._dim, revision)

    def _scan_pages(self, spec: common.FilterSpec | None) -> Iterator[list[qm.Record]]:
        offset: qm.ExtendedPointId | None = None
        while spec is not None:
            with common.sdk_errors("scan"):
                records, offset = self._client.scroll(
                    self._collection,
                    scroll_filter=_filter(spec),
                    limit=common.SCAN_PAGE,
                    offset=offset,
                    with_payload=True,
                    with_vectors=[common.DENSE],
                )
            yield records
            if offset is None:
                return

    def late_scores(self, cube_id: str, query_tokens: np.ndarray, ids: Sequence[str]) -> LateScores:
        revision = self.revision(cube_id)
        rows = common.token_rows(query_tokens)
        spec = common.filter_spec([cube_id], VectorFilter(ids=list(ids)))
        if rows is None or spec is None or not self._has_tokens:
            return LateScores({}, revision)
        with common.sdk_errors("late-interaction scoring"), self._quiet():
            res = self._client.query_points(
                self._collection,
                query=rows,
                using=common.TOKENS,
                query_filter=_filter(spec),
                search_params=qm.SearchParams(exact=True) if self._server else None,
                limit=len(spec.ids or ()),
                with_payload=False,
            )
        return LateScores({str(p.id): float(p.score) for p in res.points}, revision)

    def _candidates(self, flt: qm.Filter) -> int:
        return self._client.count(self._collection, count_filter=flt, exact=True).count

    def search_dense(
        self,
        cube_ids: Sequence[str],
        vector: Sequence[float],
        limit: int,
        filter: VectorFilter | None = None,
    ) -> list[VectorHit]:
        query = common.check_dim(vector, self._dim)
        common.check_limit(limit)
        spec = common.filter_spec(cube_ids, filter)
        if spec is None or limit == 0:
            return []
        flt = _filter(spec)
        with common.sdk_errors("dense search"):
            params = None
            if self._server:
                exact = self._candidates(flt) <= common.EXACT_MAX_CANDIDATES
                params = qm.SearchParams(exact=exact, hnsw_ef=common.hnsw_ef(limit))
            with self._quiet():
                res = self._client.query_points(
                    self._collection,
                    query=query,
                    using=common.DENSE,
                    query_filter=flt,
                    search_params=params,
                    limit=limit,
                    with_payload=[common.CUBE_KEY],
                )
        return self._hits(res.points)

    def search_sparse(
        self,
        cube_ids: Sequence[str],
        vector: SparseVector,
        limit: int,
        filter: VectorFilter | None = None,
    ) -> list[VectorHit]:
        common.check_limit(limit)
        spec = common.filter_spec(cube_ids, filter)
        if spec is None or limit == 0 or not vector.indices:
            return []
        params = None
        if self._cube_scoped_idf:
            corpus = common.cube_spec(cube_ids)
            assert corpus is not None
            params = qm.SearchParams(idf=qm.IdfCorpusParams(corpus=_filter(corpus)))
        with common.sdk_errors("keyword search"), self._quiet():
            res = self._client.query_points(
                self._collection,
                query=qm.SparseVector(indices=list(vector.indices), values=list(vector.values)),
                using=common.SPARSE,
                query_filter=_filter(spec),
                search_params=params,
                limit=limit,
                with_payload=[common.CUBE_KEY],
            )
        return self._hits(res.points)

    @staticmethod
    def _hits(points: Sequence[qm.ScoredPoint]) -> list[VectorHit]:
        return [
            VectorHit(id=str(p.id), cube_id=(p.payload or {})[common.CUBE_KEY], score=p.score)
            for p in points
        ]

    def retrieve(
        self, cube_id: str, ids: Sequence[str], with_tokens: bool = False
    ) -> list[VectorRecord]:
        wanted = common.point_ids(ids)
        if not wanted:
            return []
        with common.sdk_errors("retrieve"):
            found = self._client.retrieve(
                self._collection,
                ids=wanted,
                with_payload=True,
                with_vectors=[
                    common.DENSE,
                    common.SPARSE,
                    *([common.TOKENS] if with_tokens else []),
                ],
            )
        by_id: dict[str, VectorRecord] = {}
        for rec in found:
            if (rec.payload or {}).get(common.CUBE_KEY) != cube_id:
                continue
            vectors = rec.vector if isinstance(rec.vector, dict) else {}
            sparse = vectors.get(common.SPARSE)
            by_id[str(rec.id)] = VectorRecord(
                id=str(rec.id),
                dense=list(vectors[common.DENSE]),
                sparse=SparseVector(indices=list(sparse.indices), values=list(sparse.values))
                if isinstance(sparse, qm.SparseVector)
                else SparseVector(),
                payload=common.from_payload(rec.payload),
                tokens=common.token_array(vectors.get(common.TOKENS)),
            )
        return [by_id[i] for i in wanted if i in by_id]

    def existing_ids(self, cube_id: str, ids: Sequence[str]) -> set[str]:
        wanted = common.point_ids(ids)
        if not wanted:
            return set()
        with common.sdk_errors("retrieve"):
            found = self._client.retrieve(
                self._collection, ids=wanted, with_payload=[common.CUBE_KEY], with_vectors=False
            )
        return {str(r.id) for r in found if (r.payload or {}).get(common.CUBE_KEY) == cube_id}

    def delete(self, cube_id: str, ids: Sequence[str]) -> None:
        spec = common.filter_spec([cube_id], VectorFilter(ids=list(ids)))
        if spec is None:
            return
        with common.sdk_errors("delete"):
            self._client.delete(
                self._collection, points_selector=qm.FilterSelector(filter=_filter(spec)), wait=True
            )
        self._bump(cube_id)

    def count(self, cube_id: str) -> int:
        spec = common.cube_spec([cube_id])
        assert spec is not None
        with common.sdk_errors("count"):
            return self._client.count(
                self._collection, count_filter=_filter(spec), exact=True
            ).count

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        with common.sdk_errors("close"):
            self._client.close()
