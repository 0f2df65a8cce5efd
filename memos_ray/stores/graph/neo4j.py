"""GraphStore on the official neo4j driver; a dialect adapts it to other Bolt servers."""

from __future__ import annotations

import json
import math
import threading
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any

from neo4j import Driver, GraphDatabase, ManagedTransaction
from neo4j.exceptions import DriverError, Neo4jError

from memos_ray.domain.memory import Edge, EdgeType, MemoryItem, MemoryMetadata, content_hash
from memos_ray.errors import ConflictError, RequestTooLargeError, StoreError
from memos_ray.memory.filters import FilterExpr
from memos_ray.stores.graph.base import GraphStore
from memos_ray.stores.graph.cypher import INFO_PREFIX, compile_filter, is_identifier

LABEL = "Memory"
_EDGE_TYPES = frozenset(t.value for t in EdgeType)
# Without a request budget, UNWIND batches this many rows per query.
_BATCH_ROWS = 500
_SCALARS = (str, int, float, bool)


class CypherDialect:
    """Neo4j behaviour; subclasses override what another Bolt server does differently."""

    name = "neo4j"
    # Bytes one request (query text plus parameters) may take; None: unlimited.
    max_request_bytes: int | None = None
    # Characters of string payload one returned record may carry; None: unlimited.
    max_record_chars: int | None = None

    def driver_options(self) -> dict[str, Any]:
        return {}

    def session_options(self, database: str | None) -> dict[str, Any]:
        return {"database": database} if database else {}

    def create_schema(self, run: Callable[[str], list[dict[str, Any]]]) -> None:
        """Idempotent: called once per store, possibly by several processes at once."""
        run(
            "CREATE CONSTRAINT memory_id_unique IF NOT EXISTS "
            f"FOR (m:{LABEL}) REQUIRE m.id IS UNIQUE"
        )
        run(f"CREATE INDEX memory_cube_id IF NOT EXISTS FOR (m:{LABEL}) ON (m.cube_id)")

    def prepare_params(self, params: dict[str, Any]) -> dict[str, Any]:
        return params

    def value_size(self, value: Any) -> int:
        """Request bytes a parameter value costs (only used when max_request_bytes is set)."""
        return len(json.dumps(value, ensure_ascii=False).encode())

    def request_size(self, query: str, params: Mapping[str, Any]) -> int:
        return len(query.encode()) + sum(len(k) + 2 + self.value_size(v) for k, v in params.items())

    def describe_error(self, exc: Exception) -> str:
        return str(exc)

    def after_close(self, uri: str) -> None:
        """Server-specific clean-up once the driver has closed its connections."""


class Neo4jGraphStore(GraphStore):
    """Memory nodes (label Memory) and typed edges over Bolt; thread-safe (one driver).

    Items are rebuilt from `metadata_json`; the other properties exist to be filtered,
    sorted and indexed. Timestamps are fixed-width ISO strings, so they compare as strings.
    """

    def __init__(
        self,
        uri: str,
        auth: tuple[str, str] | None = None,
        database: str | None = None,
        dialect: CypherDialect | None = None,
    ) -> None:
        self.dialect = dialect or CypherDialect()
        self._session_options = self.dialect.session_options(database)
        try:
            self._driver: Driver = GraphDatabase.driver(
                uri, auth=auth, **self.dialect.driver_options()
            )
        except (DriverError, Neo4jError, ValueError) as exc:
            raise StoreError(f"graph store: cannot connect to {uri}: {exc}") from exc
        self._uri = uri
        self._schema_lock = threading.Lock()
        self._schema_ready = False

    # -- plumbing -------------------------------------------------------------------------

    def _ensure_schema(self) -> None:
        if self._schema_ready:
            return
        with self._schema_lock:
            if not self._schema_ready:
                self.dialect.create_schema(
                    lambda q: self._execute(q, {}, write=True, what="schema")
                )
                self._schema_ready = True

    def _execute(
        self, query: str, params: dict[str, Any], *, write: bool, what: str
    ) -> list[dict[str, Any]]:
        budget = self.dialect.max_request_bytes
        if budget is not None and self.dialect.request_size(query, params) > budget:
            raise RequestTooLargeError(
                f"graph store {what}: the request exceeds the {self.dialect.name} limit of "
                f"{budget} bytes (query plus parameters); narrow the filter"
            )
        prepared = self.dialect.prepare_params(params)

        def work(tx: ManagedTransaction) -> list[dict[str, Any]]:
            return tx.run(query, prepared).data()

        try:
            with self._driver.session(**self._session_options) as session:
                if write:
                    return session.execute_write(work)
                return session.execute_read(work)
        except (Neo4jError, DriverError, OSError) as exc:
            raise StoreError(
                f"graph store {what} failed ({self._uri}): {self.dialect.describe_error(exc)}"
            ) from exc

    def _run(
        self, query: str, params: dict[str, Any], *, write: bool = False, what: str
    ) -> list[dict[str, Any]]:
        self._ensure_schema()
        return self._execute(query, params, write=write, what=what)

    def _chunks(
        self, query: str, fixed: dict[str, Any], items: Sequence[Any]
    ) -> Iterator[list[Any]]:
        """Split `items` (one list parameter) so each request fits the dialect's budget."""
        budget = self.dialect.max_request_bytes
        if budget is None:
            for start in range(0, len(items), _BATCH_ROWS):
                yield list(items[start : start + _BATCH_ROWS])
            return
        room = budget - self.dialect.request_size(query, {**fixed, "items": []})
        chunk: list[Any] = []
        used = 0
        for item in items:
            cost = self.dialect.value_size(item) + 2
            if chunk and used + cost > room:
                yield chunk
                chunk, used = [], 0
            chunk.append(item)
            used += cost
        if chunk:
            yield chunk

    def _run_chunked(
        self,
        query: str,
        fixed: dict[str, Any],
        items: Sequence[Any],
        *,
        write: bool = False,
        what: str,
    ) -> list[dict[str, Any]]:
        """`query` takes the list as `$items`; results of all chunks, in order."""
        self._ensure_schema()
        rows: list[dict[str, Any]] = []
        for chunk in self._chunks(query, fixed, items):
            rows.extend(self._execute(query, {**fixed, "items": chunk}, write=write, what=what))
        return rows

    # -- node properties --------------------------------------------------------------------

    @staticmethod
    def _props(cube_id: str, item: MemoryItem) -> dict[str, Any]:
        meta = item.metadata
        props: dict[str, Any] = {
            "id": item.id,
            "cube_id": cube_id,
            "memory": item.memory,
            "memory_type": meta.memory_type,
            "status": meta.status,
            "user_id": meta.user_id,
            "session_id": meta.session_id,
            "key": meta.key,
            "tags": list(meta.tags),
            "created_at": meta.created_at,
            "updated_at": meta.updated_at,
            "version": meta.version,
            "confidence": meta.confidence,
            "hash": content_hash(item.memory),
            "metadata_json": meta.model_dump_json(exclude={"embedding", "relativity"}),
        }
        for key, value in meta.info.items():
            if is_identifier(key) and _storable(value):
                props[f"{INFO_PREFIX}{key}"] = value
        # Absent, not null: a null in a property map is an error or a no-op depending on server.
        return {k: v for k, v in props.items() if v is not None}

    def _node_columns(self) -> str:
        limit = self.dialect.max_record_chars
        if limit is None:
            return "n.id AS id, n.cube_id AS cube_id, n.memory AS memory, n.metadata_json AS meta"
        fits = f"size(n.memory) + size(n.metadata_json) <= {int(limit)}"
        return (
            "n.id AS id, n.cube_id AS cube_id, "
            f"CASE WHEN {fits} THEN n.memory ELSE null END AS memory, "
            f"CASE WHEN {fits} THEN n.metadata_json ELSE null END AS meta"
        )

    def _read_string(self, node_id: str, prop: str) -> str:
        """A string too big for one record of this server, read in slices."""
        assert self.dialect.max_record_chars is not None and is_identifier(prop)
        step = self.dialect.max_record_chars
        rows = self._run(
            f"MATCH (n:{LABEL} {{id: $id}}) RETURN size(n.{prop}) AS size",
            {"id": node_id},
            what="read",
        )
        size = int(rows[0]["size"]) if rows else 0
        parts = []
        for start in range(0, size, step):
            part = self._run(
                f"MATCH (n:{LABEL} {{id: $id}}) RETURN substring(n.{prop}, $start, $len) AS s",
                {"id": node_id, "start": start, "len": step},
                what="read",
            )
            parts.append(part[0]["s"])
        return "".join(parts)

    def _to_item(self, row: dict[str, Any]) -> MemoryItem:
        memory, meta = row["memory"], row["meta"]
        if memory is None or meta is None:
            memory = self._read_string(row["id"], "memory")
            meta = self._read_string(row["id"], "metadata_json")
        return MemoryItem(
            id=row["id"],
            memory=memory,
            cube_id=row["cube_id"],
            metadata=MemoryMetadata.model_validate_json(meta),
        )

    # -- GraphStore -------------------------------------------------------------------------

    def upsert_nodes(self, cube_id: str, items: Sequence[MemoryItem]) -> None:
        if not items:
            return
        for item in items:
            if item.cube_id != cube_id:
                raise ConflictError(f"item {item.id} belongs to cube {item.cube_id}, not {cube_id}")
        ids = list(dict.fromkeys(item.id for item in items))
        foreign = self._run_chunked(
            f"MATCH (n:{LABEL}) WHERE n.id IN $items AND n.cube_id <> $cube RETURN n.id AS id",
            {"cube": cube_id},
            ids,
            what="upsert",
        )
        if foreign:
            raise ConflictError(
                f"memory ids already used by another cube: {sorted(r['id'] for r in foreign)[:5]}"
            )
        latest = {item.id: item for item in items}  # the last duplicate wins
        rows = [{"id": i, "props": self._props(cube_id, latest[i])} for i in ids]
        query = f"UNWIND $items AS row MERGE (n:{LABEL} {{id: row.id}}) SET n = row.props"
        budget = self.dialect.max_request_bytes
        small = rows
        if budget is not None:
            room = budget - self.dialect.request_size(query, {"items": []}) - 2
            small = [r for r in rows if self.dialect.value_size(r) <= room]
            for row in rows:
                if self.dialect.value_size(row) > room:
                    self._upsert_large(row, query, room)
        self._run_chunked(query, {}, small, write=True, what="upsert")

    def _upsert_large(self, row: dict[str, Any], query: str, room: int) -> None:
        """One node too big for a request: long strings go in empty, then grow by appends."""
        props = dict(row["props"])
        pending: dict[str, str] = {}
        for key, value in sorted(props.items(), key=lambda kv: -self.dialect.value_size(kv[1])):
            if self.dialect.value_size({"id": row["id"], "props": props}) <= room:
                break
            if not isinstance(value, str):
                raise StoreError(
                    f"graph store upsert: property {key!r} of {row['id']} is too large for "
                    f"{self.dialect.name} (limit {self.dialect.max_request_bytes} bytes)"
                )
            pending[key] = value
            props[key] = ""
        self._run(query, {"items": [{"id": row["id"], "props": props}]}, write=True, what="upsert")
        for key, value in pending.items():
            append = f"MATCH (n:{LABEL} {{id: $id}}) SET n.{key} = n.{key} + $part"
            fixed_cost = self.dialect.request_size(append, {"id": row["id"], "part": ""})
            assert self.dialect.max_request_bytes is not None
            for part in _slices(value, self.dialect, self.dialect.max_request_bytes - fixed_cost):
                self._run(append, {"id": row["id"], "part": part}, write=True, what="upsert")

    def get_nodes(self, cube_ids: Sequence[str], ids: Sequence[str]) -> list[MemoryItem]:
        cubes = list(dict.fromkeys(cube_ids))
        wanted = list(dict.fromkeys(ids))
        if not cubes or not wanted:
            return []
        rows = self._run_chunked(
            f"MATCH (n:{LABEL}) WHERE n.id IN $items AND n.cube_id IN $cubes "
            f"RETURN {self._node_columns()}",
            {"cubes": cubes},
            wanted,
            what="get_nodes",
        )
        found = {row["id"]: row for row in rows}
        return [self._to_item(found[i]) for i in wanted if i in found]

    def locate(self, ids: Sequence[str]) -> dict[str, str]:
        rows = self._run_chunked(
            f"MATCH (n:{LABEL}) WHERE n.id IN $items RETURN n.id AS id, n.cube_id AS cube_id",
            {},
            list(dict.fromkeys(ids)),
            what="locate",
        )
        return {row["id"]: row["cube_id"] for row in rows}

    def existing_ids(self, cube_id: str, ids: Sequence[str]) -> set[str]:
        rows = self._run_chunked(
            f"MATCH (n:{LABEL}) WHERE n.id IN $items AND n.cube_id = $cube RETURN n.id AS id",
            {"cube": cube_id},
            list(dict.fromkeys(ids)),
            what="existing_ids",
        )
        return {row["id"] for row in rows}

    def _where(
        self,
        cube_id: str,
        filter: FilterExpr | None,
        memory_types: Sequence[str] | None,
        statuses: Sequence[str] | None,
    ) -> tuple[str, dict[str, Any]] | None:
        """None when nothing can match (an empty type or status list admits nothing)."""
        clauses = ["n.cube_id = $cube"]
        params: dict[str, Any] = {"cube": cube_id}
        for name, param, values in (
            ("memory_type", "memory_types", memory_types),
            ("status", "statuses", statuses),
        ):
            if values is not None:
                if not values:
                    return None
                clauses.append(f"n.{name} IN ${param}")
                params[param] = [str(v) for v in dict.fromkeys(values)]
        if filter is not None:
            fragment, filter_params = compile_filter(filter, "n", "f")
            clauses.append(fragment)
            params.update(filter_params)
        return " AND ".join(clauses), params

    def find_ids(
        self,
        cube_id: str,
        filter: FilterExpr | None = None,
        memory_types: Sequence[str] | None = None,
        statuses: Sequence[str] | None = None,
    ) -> list[str]:
        where = self._where(cube_id, filter, memory_types, statuses)
        if where is None:
            return []
        clause, params = where
        rows = self._run(
            f"MATCH (n:{LABEL}) WHERE {clause} RETURN n.id AS id ORDER BY n.created_at DESC, n.id",
            params,
            what="find_ids",
        )
        return [row["id"] for row in rows]

    def list_nodes(
        self,
        cube_id: str,
        filter: FilterExpr | None = None,
        memory_types: Sequence[str] | None = None,
        statuses: Sequence[str] | None = None,
        offset: int = 0,
        limit: int | None = None,
    ) -> tuple[list[MemoryItem], int]:
        if offset < 0 or (limit is not None and limit < 0):
            raise StoreError("list_nodes: offset and limit must be >= 0")
        where = self._where(cube_id, filter, memory_types, statuses)
        if where is None:
            return [], 0
        clause, params = where
        total_rows = self._run(
            f"MATCH (n:{LABEL}) WHERE {clause} RETURN count(n) AS total", params, what="list"
        )
        total = int(total_rows[0]["total"]) if total_rows else 0
        if limit == 0 or offset >= total:
            return [], total
        page = f" SKIP {int(offset)}" + (f" LIMIT {int(limit)}" if limit is not None else "")
        rows = self._run(
            f"MATCH (n:{LABEL}) WHERE {clause} RETURN {self._node_columns()} "
            f"ORDER BY n.created_at DESC, n.id{page}",
            params,
            what="list",
        )
        return [self._to_item(row) for row in rows], total

    def delete_nodes(self, cube_id: str, ids: Sequence[str]) -> int:
        rows = self._run_chunked(
            f"MATCH (n:{LABEL}) WHERE n.id IN $items AND n.cube_id = $cube "
            "WITH n, n.id AS id DETACH DELETE n RETURN count(id) AS removed",
            {"cube": cube_id},
            list(dict.fromkeys(ids)),
            write=True,
            what="delete",
        )
        return sum(int(row["removed"]) for row in rows)

    def add_edges(self, cube_id: str, edges: Sequence[Edge]) -> None:
        """Edges whose endpoints are not both in the cube are skipped."""
        by_type: dict[str, list[dict[str, str]]] = {}
        for edge in edges:
            kind = EdgeType(edge.type).value  # validated: the type is spliced into the query
            pair = {"s": edge.source, "t": edge.target}
            if pair not in by_type.setdefault(kind, []):
                by_type[kind].append(pair)
        for kind, pairs in by_type.items():
            self._run_chunked(
                f"UNWIND $items AS e "
                f"MATCH (a:{LABEL} {{id: e.s}}) WHERE a.cube_id = $cube "
                f"MATCH (b:{LABEL} {{id: e.t}}) WHERE b.cube_id = $cube "
                f"MERGE (a)-[r:{kind}]->(b) SET r.cube_id = $cube",
                {"cube": cube_id},
                pairs,
                write=True,
                what="add_edges",
            )

    def get_edges(self, cube_id: str, node_ids: Sequence[str] | None = None) -> list[Edge]:
        # Endpoint ids come back as columns: some servers send relationships without them.
        match = (
            f"MATCH (a:{LABEL})-[r]->(b:{LABEL}) "
            "WHERE a.cube_id = $cube AND b.cube_id = $cube AND r.cube_id = $cube"
        )
        ret = " RETURN a.id AS source, b.id AS target, type(r) AS type"
        if node_ids is None:
            rows = self._run(match + ret, {"cube": cube_id}, what="get_edges")
        else:
            rows = self._run_chunked(
                match + " AND (a.id IN $items OR b.id IN $items)" + ret,
                {"cube": cube_id},
                list(dict.fromkeys(node_ids)),
                what="get_edges",
            )
        seen = {(r["source"], r["target"], r["type"]) for r in rows if r["type"] in _EDGE_TYPES}
        return [Edge(source=s, target=t, type=EdgeType(k)) for s, t, k in sorted(seen)]

    def count(self, cube_id: str) -> int:
        rows = self._run(
            f"MATCH (n:{LABEL}) WHERE n.cube_id = $cube RETURN count(n) AS total",
            {"cube": cube_id},
            what="count",
        )
        return int(rows[0]["total"]) if rows else 0

    def cube_ids(self) -> list[str]:
        rows = self._run(
            f"MATCH (n:{LABEL}) RETURN DISTINCT n.cube_id AS cube ORDER BY cube",
            {},
            what="cube_ids",
        )
        return [str(row["cube"]) for row in rows if row["cube"] is not None]

    def close(self) -> None:
        try:
            self._driver.close()
        except (DriverError, Neo4jError, OSError) as exc:
            raise StoreError(f"graph store close failed: {exc}") from exc
        finally:
            self.dialect.after_close(self._uri)


def _storable(value: Any) -> bool:
    """Scalars, or non-empty lists of one scalar type (what every Bolt server can store)."""
    if isinstance(value, float):
        return math.isfinite(value)
    if isinstance(value, _SCALARS):
        return True
    if isinstance(value, list) and value:
        first = type(value[0])
        return first in _SCALARS and all(type(v) is first and _storable(v) for v in value)
    return False


def _slices(text: str, dialect: CypherDialect, room: int) -> Iterator[str]:
    """Consecutive pieces of `text`, each costing at most `room` request bytes."""
    if room < 16:
        raise StoreError("graph store: request budget too small to write long strings")
    start = 0
    while start < len(text):
        # Worst case is 4 bytes per character; grow greedily while the piece still fits.
        end = min(len(text), start + max(1, (room - 2) // 4))
        while end < len(text) and dialect.value_size(text[start : end + 256]) <= room:
            end = min(len(text), end + 256)
        yield text[start:end]
        start = end
