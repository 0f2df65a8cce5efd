"""`memos-ray mcp`: the MCP tools over stdio, for desktop clients (Claude Desktop, Cursor).

It holds no data: every tool is a REST call to a running service, by URL and API key. Logs go
to stderr; stdout carries only MCP's messages.
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import anyio
from mcp.server.mcpserver import Context

from memos_ray.mcp.rest import Rest, http_rest
from memos_ray.mcp.tools import build_server


def run_stdio(url: str | None, api_key: str | None, user_id: str | None) -> None:
    url = url or os.environ.get("MEMOS_URL") or "http://127.0.0.1:8000"
    api_key = api_key or os.environ.get("MEMOS_API_KEY") or None
    user_id = user_id or os.environ.get("MEMOS_USER_ID") or None
    rest = http_rest(url, api_key, default_user=user_id)

    @asynccontextmanager
    async def resolve(ctx: Context) -> AsyncIterator[Rest]:
        yield rest

    server = build_server(resolve)

    async def serve() -> None:
        try:
            await server.run_stdio_async()
        finally:
            await rest.http.aclose()

    anyio.run(serve)
