"""GraphStore on the official neo4j driver; a dialect adapts it to other Bolt servers."""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator, Sequence
from typing import Any

from neo4j import Driver, GraphDatabase, ManagedTransaction
from neo4j.exceptions import DriverError, Neo4jError

from memos_ray import metrics
from memos_ray.core.filters import FilterExpr
from memos_ray.domain.memory import Edge, MemoryItem
from memos_ray.errors import ConflictError, StoreError
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

# UNWIND batches this many rows per query.
_BATCH_ROWS = 500


class CypherDialect:
    """Neo4j behaviour; subclasses override what another Bolt server does differently."""

    name = "neo4j"

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

    def describe_error(self, exc: Exception) -> str:
        return str(exc)


class Neo4jGraphStore(GraphStore):
    """Memory nodes (label Memory) and typed edges over Bolt; thread-safe (one driver).

    Items are rebuilt from `metadata_json`; the other properties exist to be filtered,
    sorted and indexed (see `cypher.node_props`).
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
        def work(tx: ManagedTransaction) -> list[dict[str, Any]]:
            return tx.run(query, params).data()

        try:
            with self._driver.session(**self._session_options) as session:
                if write:
                    return session.execute_write(work)
                return session.execute_read(work)
        except (Neo4jError, DriverError, OSError) as exc:
            metrics.store_error("graph", "neo4j", what)
            raise StoreError(
                f"graph store {what} failed ({self._uri}): {self.dialect.describe_error(exc)}"
            ) from exc

    def _run(
        self, query: str, params: dict[str, Any], *, write: bool = False, what: str
    ) -> list[dict[str, Any]]:
        self._ensure_schema()
        return self._execute(query, params, write=write, what=what)

    @staticmethod
    def _chunks(items: Sequence[Any]) -> Iterator[list[Any]]:
        for start in range(0, len(items), _BATCH_ROWS):
            yield list(items[start : start + _BATCH_ROWS])

    def _run_chunked(
        self,
        query: str,
        fixed: dict[str, Any],
        items: Sequence[Any],
        *,
        write: bool = False,
        what: str,
    ) -> list[dict[str, Any]]:
        """`query` takes the list as `$items`; results of all batches, in order."""
        self._ensure_schema()
        rows: list[dict[str, Any]] = []
        for chunk in self._chunks(items):
            rows.extend(self._execute(query, {**fixed, "items": chunk}, write=write, what=what))
        return rows

    # -- GraphStore -------------------------------------------------------------------------

    def upsert_nodes(self, cube_id: str, items: Sequence[MemoryItem]) -> None:
        if not items:
            return
        check_cube(cube_id, items)
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
        rows = [{"id": i, "props": node_props(cube_id, latest[i])} for i in ids]
        self._run_chunked(
            f"UNWIND $items AS row MERGE (n:{LABEL} {{id: row.id}}) SET n = row.props",
            {},
            rows,
            write=True,
            what="upsert",
        )

    def get_nodes(self, cube_ids: Sequence[str], ids: Sequence[str]) -> list[MemoryItem]:
        cubes = list(dict.fromkeys(cube_ids))
        wanted = list(dict.fromkeys(ids))
        if not cubes or not wanted:
            return []
        rows = self._run_chunked(
            f"MATCH (n:{LABEL}) WHERE n.id IN $items AND n.cube_id IN $cubes RETURN {NODE_COLUMNS}",
            {"cubes": cubes},
            wanted,
            what="get_nodes",
        )
        found = {row["id"]: row for row in rows}
        return [item_from_row(found[i]) for i in wanted if i in found]

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
        where = where_clause(cube_id, filter, memory_types, statuses)
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
            f"MATCH (n:{LABEL}) WHERE {clause} RETURN {NODE_COLUMNS} "
            f"ORDER BY n.created_at DESC, n.id{page}",
            params,
            what="list",
        )
        return [item_from_row(row) for row in rows], total

    def nodes_after(self, cube_id: str, after: str | None, limit: int) -> list[MemoryItem]:
        query, params = nodes_after_query(cube_id, after, limit)
        return [item_from_row(row) for row in self._run(query, params, what="list")]

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
        for kind, pairs in edge_pairs(edges).items():
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
        if node_ids is None:
            rows = self._run(MATCH_EDGES + RETURN_EDGES, {"cube": cube_id}, what="get_edges")
        else:
            rows = self._run_chunked(
                MATCH_EDGES + " AND (a.id IN $items OR b.id IN $items)" + RETURN_EDGES,
                {"cube": cube_id},
                list(dict.fromkeys(node_ids)),
                what="get_edges",
            )
        return edges_from_rows(rows)

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
