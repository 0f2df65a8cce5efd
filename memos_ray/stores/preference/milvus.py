"""Preferences in one Milvus collection: dense (cosine) + BM25 full-text, fused by RRF.

BM25 is computed by the server. milvus-lite 3.2.2 implements Milvus's built-in BM25
`Function` (VARCHAR with `enable_analyzer=True` in, SPARSE_FLOAT_VECTOR out, metric "BM25",
raw text as the query), as does Milvus >= 2.5, so the same schema and calls run on Milvus
Lite (a `.db` file, one process), on `milvus-lite server` (several processes) and on a
Milvus server, and IDF stays current as preferences come and go without any client-side
statistics. (Milvus Lite keeps IDF per segment, so keyword scores are approximate once a
collection has several segments; ranks are fused by RRF, which only uses their order.)

Tenancy: `cube_id` is the collection's partition key (searches are pruned to the cube's
bucket) and every query, search and delete filters on it; the primary key is derived from
the cube *and* the id, so two cubes using the same preference id never overwrite each other.
"""

from __future__ import annotations

import hashlib
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from functools import partial
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
from pymilvus import (
    AnnSearchRequest,
    DataType,
    Function,
    FunctionType,
    MilvusClient,
    MilvusException,
    RRFRanker,
)

from memos_ray import metrics
from memos_ray.core.keywords import STOPWORDS
from memos_ray.domain.memory import iso, utc_now
from memos_ray.errors import BadRequestError, StoreError
from memos_ray.stores.preference.base import Preference, PreferenceStatus, PreferenceStore

# Field sizes (VARCHAR max_length is in bytes on Milvus).
_MAX_ID = 256
_MAX_CUBE = 512
_MAX_TEXT = 65535
# Milvus caps offset + limit of one query at 16384; beyond that an iterator pages through.
_QUERY_WINDOW = 16384
_BATCH = 500
_RRF_K = 60
_STRONG = "Strong"
_NOT_LOADED = 101  # Milvus's CollectionNotLoaded
_CONNECT_FAILED = 2  # pymilvus: the server cannot be reached
# How long a call waits for an unreachable server (a supervised restart takes ~1-2 s).
_RECONNECT_S = 20.0
_ANALYZER: dict[str, Any] = {
    "tokenizer": "standard",
    "filter": ["lowercase", {"type": "stop", "stop_words": sorted(STOPWORDS)}],
}
T = TypeVar("T")
_FIELDS = [
    "pk",
    "id",
    "cube_id",
    "user_id",
    "kind",
    "status",
    "session_id",
    "created_at",
    "updated_at",
    "preference",
    "extra",
]


def quote(value: str) -> str:
    """A Milvus filter string literal: cube ids and ids are free text (quotes, backslashes)."""
    escaped = (
        value.replace("\\", "\\\\")
        .replace('"', '\\"')
        .replace("\n", "\\n")
        .replace("\r", "\\r")
        .replace("\t", "\\t")
    )
    return f'"{escaped}"'


def _quote_list(values: Sequence[str]) -> str:
    return "[" + ", ".join(quote(v) for v in values) + "]"


def row_key(cube_id: str, item_id: str) -> str:
    """Primary key: unique per (cube, id), so a tenant can never replace another's row."""
    return hashlib.sha1(cube_id.encode()).hexdigest()[:20] + ":" + item_id


def _is_lite_file(uri: str) -> bool:
    return uri.endswith(".db") and "://" not in uri


@contextmanager
def _milvus_errors(action: str) -> Iterator[None]:
    try:
        yield
    except MilvusException as exc:
        # The action's first word is the operation: the rest may name a collection or a URI.
        metrics.store_error("preference", "milvus", action.split(" ", 1)[0])
        raise StoreError(f"Milvus could not {action}: {exc}") from exc


def _unreachable(exc: MilvusException) -> bool:
    text = str(exc.message)
    return exc.code == _CONNECT_FAILED or "UNAVAILABLE" in text or "unavailable" in text


def _not_loaded(exc: MilvusException) -> bool:
    """A server restarted since we loaded the collection: it comes back released."""
    return exc.code == _NOT_LOADED or "call load()" in str(exc.message)


class MilvusPreferenceStore(PreferenceStore):
    """Preference store on Milvus or Milvus Lite.

    `uri`: a Milvus Lite file (`/path/prefs.db`: this process only), the `http://host:port`
    of a `milvus-lite server` (see milvus_server.py; any number of processes), or a Milvus
    server / Zilliz URI (with `token`).
    """

    def __init__(
        self,
        dim: int,
        *,
        uri: str,
        token: str | None = None,
        collection: str = "memos_preferences",
    ) -> None:
        if dim <= 0:
            raise BadRequestError(f"dim must be positive, got {dim}")
        self._dim = dim
        self._uri = uri
        self._collection = collection
        self._client = _connect(uri, token)
        # set_status reads then rewrites rows; one at a time within this process.
        self._write_lock = threading.Lock()
        with _milvus_errors(f"reach Milvus at {uri}"):
            self._lite = str(self._client.get_server_version()).startswith("milvus_lite")
        self._ensure_collection()

    @property
    def dim(self) -> int:
        return self._dim

    def _call(self, action: str, fn: Callable[[], T]) -> T:
        """One Milvus call that rides out a server restart: while the server is unreachable
        it retries (every call here is idempotent) for up to `_RECONNECT_S`, and a server
        that came back has the collection released, so it is loaded again."""
        deadline = time.monotonic() + _RECONNECT_S
        delay, loads, load = 0.05, 0, False
        with _milvus_errors(action):
            while True:
                try:
                    if load:
                        self._client.load_collection(self._collection)
                        load = False
                    return fn()
                except MilvusException as exc:
                    if _not_loaded(exc) and loads < 3:
                        loads, load = loads + 1, True
                    elif _unreachable(exc) and time.monotonic() < deadline:
                        time.sleep(delay)
                        delay = min(2 * delay, 1.0)
                    else:
                        raise

    # -- schema ---------------------------------------------------------------------------

    def _ensure_collection(self) -> None:
        """Create the collection on first use. Two processes may race here: the loser's
        create fails (or is a no-op on Milvus), and it then finds the winner's collection."""
        client, name = self._client, self._collection
        with _milvus_errors(f"prepare collection {name!r}"):
            if not client.has_collection(name):
                try:
                    self._create_collection()
                except MilvusException:
                    if not client.has_collection(name):
                        raise
            self._check_schema()
            # A reopened collection starts released; loading an already loaded one is a no-op.
            client.load_collection(name)

    def _create_collection(self) -> None:
        client = self._client
        schema = client.create_schema(auto_id=False, enable_dynamic_field=False)
        schema.add_field("pk", DataType.VARCHAR, max_length=_MAX_ID + 32, is_primary=True)
        schema.add_field("id", DataType.VARCHAR, max_length=_MAX_ID)
        schema.add_field("cube_id", DataType.VARCHAR, max_length=_MAX_CUBE, is_partition_key=True)
        schema.add_field("user_id", DataType.VARCHAR, max_length=_MAX_ID)
        schema.add_field("kind", DataType.VARCHAR, max_length=16)
        schema.add_field("status", DataType.VARCHAR, max_length=16)
        schema.add_field("session_id", DataType.VARCHAR, max_length=_MAX_ID)
        schema.add_field("created_at", DataType.VARCHAR, max_length=40)
        schema.add_field("updated_at", DataType.VARCHAR, max_length=40)
        schema.add_field(
            "preference",
            DataType.VARCHAR,
            max_length=_MAX_TEXT,
            enable_analyzer=True,
            analyzer_params=_ANALYZER,
        )
        schema.add_field("dense", DataType.FLOAT_VECTOR, dim=self._dim)
        schema.add_field("sparse", DataType.SPARSE_FLOAT_VECTOR)
        # reasoning, topic, source_memory_ids: returned, never filtered on.
        schema.add_field("extra", DataType.JSON)
        schema.add_function(
            Function(
                name="preference_bm25",
                function_type=FunctionType.BM25,
                input_field_names=["preference"],
                output_field_names=["sparse"],
            )
        )
        # Milvus Lite: exact search (preferences per cube are few, and HNSW under a
        # selective cube filter loses recall). A Milvus server picks its own index.
        index = client.prepare_index_params()
        dense_index = "FLAT" if self._lite else "AUTOINDEX"
        index.add_index("dense", index_type=dense_index, metric_type="COSINE")
        index.add_index("sparse", index_type="SPARSE_INVERTED_INDEX", metric_type="BM25")
        client.create_collection(
            self._collection, schema=schema, index_params=index, consistency_level=_STRONG
        )

    def _check_schema(self) -> None:
        info = self._client.describe_collection(self._collection)
        dims = [
            int(f.get("params", {}).get("dim", 0))
            for f in info.get("fields", [])
            if f.get("name") == "dense"
        ]
        if dims != [self._dim]:
            raise StoreError(
                f"Milvus collection {self._collection!r} at {self._uri} holds "
                f"{dims[0] if dims else 'no'}-d dense vectors, not {self._dim}-d "
                "(another embedder wrote it; use another collection name)"
            )

    # -- writes ---------------------------------------------------------------------------

    def upsert(self, cube_id: str, items: Sequence[Preference], dense: np.ndarray) -> None:
        vectors = np.asarray(dense, dtype=np.float32)
        if vectors.shape != (len(items), self._dim):
            raise BadRequestError(
                f"dense must have shape ({len(items)}, {self._dim}), got {vectors.shape}"
            )
        _check_cube(cube_id)
        rows: dict[str, dict[str, Any]] = {}  # last one wins within a batch, as across calls
        for item, vector in zip(items, vectors, strict=True):
            if item.cube_id != cube_id:
                raise BadRequestError(
                    f"preference {item.id!r} belongs to cube {item.cube_id!r}, not {cube_id!r}"
                )
            row = _to_row(item)
            row["dense"] = vector.tolist()
            rows[row["pk"]] = row
        self._write(list(rows.values()))

    def _write(self, rows: list[dict[str, Any]]) -> None:
        for start in range(0, len(rows), _BATCH):
            chunk = rows[start : start + _BATCH]
            self._call("upsert preferences", partial(self._client.upsert, self._collection, chunk))
        self._settle()

    def _settle(self) -> None:
        """Milvus Lite searches its unflushed rows by brute force and rebuilds their keyword
        index on every search (5,000 unflushed rows: ~450 ms a search, ~7 ms once flushed),
        so each write is flushed at once (~5 ms; segments are compacted in the background).
        A Milvus server seals segments itself and rate-limits flush: not called there."""
        if self._lite:
            self._call("flush preferences", partial(self._client.flush, self._collection))

    def set_status(self, cube_id: str, ids: Sequence[str], status: PreferenceStatus) -> int:
        """Milvus has no partial update (Milvus Lite): rows are read back and rewritten."""
        if status not in ("activated", "archived", "deleted"):
            raise BadRequestError(f"unknown preference status {status!r}")
        with self._write_lock:
            rows = self._rows(cube_id, ids, [*_FIELDS, "dense"])
            now = iso(utc_now())
            for row in rows:
                row["status"] = status
                row["updated_at"] = now
            self._write(rows)
        return len(rows)

    def delete(self, cube_id: str, ids: Sequence[str]) -> int:
        rows = self._rows(cube_id, ids, ["pk"])
        pks = [row["pk"] for row in rows]
        for start in range(0, len(pks), _BATCH):
            expr = f"{_cube_filter(cube_id)} and pk in {_quote_list(pks[start : start + _BATCH])}"
            self._call(
                "delete preferences", partial(self._client.delete, self._collection, filter=expr)
            )
        if pks:
            self._settle()
        return len(pks)

    def delete_cube(self, cube_id: str) -> int:
        count = len(self._scan(_cube_filter(cube_id), ["pk"]))
        self._call(
            "delete a cube's preferences",
            lambda: self._client.delete(self._collection, filter=_cube_filter(cube_id)),
        )
        if count:
            self._settle()
        return count

    # -- reads ----------------------------------------------------------------------------

    def search(
        self,
        cube_id: str,
        query: str,
        query_dense: np.ndarray,
        top_k: int,
        kinds: Sequence[str] | None = None,
    ) -> list[Preference]:
        vector = np.asarray(query_dense, dtype=np.float32).reshape(-1)
        if vector.shape != (self._dim,):
            raise BadRequestError(f"query_dense must have {self._dim} values, got {vector.size}")
        if top_k <= 0 or (kinds is not None and not kinds):
            return []
        expr = f'{_cube_filter(cube_id)} and status == "activated"'
        if kinds is not None:
            expr += f" and kind in {_quote_list(list(kinds))}"
        depth = min(max(2 * top_k, 20), _QUERY_WINDOW)
        requests = [
            AnnSearchRequest(
                data=[vector.tolist()],
                anns_field="dense",
                param={"metric_type": "COSINE"},
                limit=depth,
                expr=expr,
            )
        ]
        # A query with no word (empty, punctuation) has no keyword side.
        if any(ch.isalnum() for ch in query):
            requests.append(
                AnnSearchRequest(
                    data=[query],
                    anns_field="sparse",
                    param={"metric_type": "BM25"},
                    limit=depth,
                    expr=expr,
                )
            )
        result = self._call(
            "search preferences",
            lambda: self._client.hybrid_search(
                self._collection,
                requests,
                RRFRanker(_RRF_K),
                limit=top_k,
                output_fields=_FIELDS,
                consistency_level=_STRONG,
            ),
        )
        hits = result[0] if result else []
        out = []
        for hit in hits:
            entity = dict(hit.get("entity", {}))
            if entity.get("cube_id") != cube_id:  # the filter already ensures it; belt and braces
                raise StoreError("Milvus returned a preference of another cube")
            pref = _from_row(entity)
            pref.score = float(hit["distance"])
            out.append(pref)
        return out

    def get(self, cube_id: str, ids: Sequence[str]) -> list[Preference]:
        by_id = {row["id"]: _from_row(row) for row in self._rows(cube_id, ids, _FIELDS)}
        return [by_id[i] for i in dict.fromkeys(ids) if i in by_id]

    def _rows(self, cube_id: str, ids: Sequence[str], fields: list[str]) -> list[dict[str, Any]]:
        """Rows of this cube with these ids (query by primary key, filtered by cube too)."""
        _check_cube(cube_id)
        pks = list(dict.fromkeys(row_key(cube_id, i) for i in ids))
        rows: list[dict[str, Any]] = []
        for start in range(0, len(pks), _BATCH):
            expr = f"{_cube_filter(cube_id)} and pk in {_quote_list(pks[start : start + _BATCH])}"
            found = self._call(
                "read preferences",
                partial(
                    self._client.query,
                    self._collection,
                    filter=expr,
                    output_fields=fields,
                    consistency_level=_STRONG,
                ),
            )
            rows.extend(dict(r) for r in found)
        return rows

    def _scan(self, expr: str, fields: list[str]) -> list[dict[str, Any]]:
        """Every matching row; one query unless there are more than Milvus's query window."""
        rows = self._call(
            "scan preferences",
            lambda: self._client.query(
                self._collection,
                filter=expr,
                output_fields=fields,
                limit=_QUERY_WINDOW,
                consistency_level=_STRONG,
            ),
        )
        if len(rows) < _QUERY_WINDOW:
            return [dict(r) for r in rows]
        with _milvus_errors("scan preferences"):
            iterator = self._client.query_iterator(
                self._collection, batch_size=1000, filter=expr, output_fields=fields
            )
            out: list[dict[str, Any]] = []
            try:
                while batch := iterator.next():
                    out.extend(dict(r) for r in batch)
            finally:
                iterator.close()
            return out

    def close(self) -> None:
        self._client.close()

    def list(
        self, cube_id: str, offset: int = 0, limit: int | None = None
    ) -> tuple[list[Preference], int]:
        """Milvus queries have no ORDER BY: the cube's (id, created_at) are sorted here, then
        only the page's rows are fetched."""
        _check_cube(cube_id)
        if offset < 0 or (limit is not None and limit < 0):
            raise BadRequestError("offset and limit must not be negative")
        keys = self._scan(_cube_filter(cube_id), ["id", "created_at"])
        keys.sort(key=lambda r: (r["created_at"], r["id"]), reverse=True)
        end = None if limit is None else offset + limit
        page = [r["id"] for r in keys[offset:end]]
        return self.get(cube_id, page), len(keys)


def _connect(uri: str, token: str | None) -> MilvusClient:
    if _is_lite_file(uri):
        Path(uri).parent.mkdir(parents=True, exist_ok=True)
    try:
        return MilvusClient(uri=uri, token=token or "")
    except MilvusException as exc:
        if _is_lite_file(uri):
            raise StoreError(
                f"Milvus Lite could not open {uri} ({exc.message or type(exc).__name__}); "
                "most likely another process holds it: a Milvus Lite file serves one process "
                "only. For several processes use the server mode (`milvus-lite server`, "
                "MilvusLiteServer / MilvusLiteServerActor) and its http:// URI."
            ) from exc
        raise StoreError(f"could not connect to Milvus at {uri}: {exc}") from exc


def _check_cube(cube_id: str) -> None:
    if not cube_id or len(cube_id.encode()) > _MAX_CUBE:
        raise BadRequestError(f"cube id must be 1..{_MAX_CUBE} bytes")


def _cube_filter(cube_id: str) -> str:
    return f"cube_id == {quote(cube_id)}"


def _to_row(item: Preference) -> dict[str, Any]:
    if not item.id or len(item.id.encode()) > _MAX_ID:
        raise BadRequestError(f"preference id must be 1..{_MAX_ID} bytes")
    if len(item.preference.encode()) > _MAX_TEXT:
        raise BadRequestError(f"preference text is longer than {_MAX_TEXT} bytes")
    return {
        "pk": row_key(item.cube_id, item.id),
        "id": item.id,
        "cube_id": item.cube_id,
        "user_id": item.user_id,
        "kind": item.kind,
        "status": item.status,
        "session_id": item.session_id,
        "created_at": item.created_at,
        "updated_at": item.updated_at,
        "preference": item.preference,
        "extra": {
            "reasoning": item.reasoning,
            "topic": item.topic,
            "source_memory_ids": list(item.source_memory_ids),
        },
    }


def _from_row(row: dict[str, Any]) -> Preference:
    extra = row.get("extra") or {}
    return Preference(
        id=row["id"],
        cube_id=row["cube_id"],
        user_id=row["user_id"],
        kind=row["kind"],
        preference=row["preference"],
        reasoning=extra.get("reasoning", ""),
        topic=extra.get("topic", ""),
        source_memory_ids=list(extra.get("source_memory_ids", [])),
        session_id=row["session_id"],
        created_at=row["created_at"],
        updated_at=row["updated_at"],
        status=row["status"],
    )
