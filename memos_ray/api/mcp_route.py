"""MCP on the service: streamable HTTP at `/mcp`, with the same keys and scopes as REST.

Stateless (JSON answers, no session affinity), so any ingress replica answers any call. A
request without a valid key is refused with 401 before MCP sees it; each tool then calls the
REST routes in process as that same caller. In open mode (no admin key, loopback only) the
Host and Origin must be loopback names too, so a web page cannot reach it by DNS rebinding.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from urllib.parse import urlsplit

from fastapi import FastAPI
from mcp.server.mcpserver import Context, MCPServer
from mcp.server.mcpserver.exceptions import ToolError
from mcp.server.streamable_http_manager import StreamableHTTPASGIApp
from mcp.server.transport_security import TransportSecuritySettings
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route
from starlette.types import Receive, Scope, Send

from memos_ray.api.context import ApiContext
from memos_ray.errors import MemosError
from memos_ray.logs import REQUEST_ID
from memos_ray.mcp.rest import Rest, in_process_rest
from memos_ray.mcp.tools import build_server
from memos_ray.runtime.netguard import is_loopback
from memos_ray.schemas.envelope import error_body

PATH = "/mcp"
_LOOPBACK_NAMES = ("localhost",)


def mcp_server() -> MCPServer:
    """The tools, each calling this app in process as the MCP request's caller."""

    def resolve(ctx: Context) -> AbstractAsyncContextManager[Rest]:
        request = ctx.request_context.request
        if not isinstance(request, Request):
            raise ToolError("this MCP server answers over HTTP only")
        return in_process_rest(request)

    return build_server(resolve)


def mount(app: FastAPI, server: MCPServer) -> None:
    """Add the `/mcp` route; `lifespan` must run the server's session manager."""
    server.streamable_http_app(
        stateless_http=True,
        json_response=True,
        # The guard below checks hosts (open mode) and keys; the SDK's own check would
        # refuse every non-loopback Host, also behind a proxy with keys on.
        transport_security=TransportSecuritySettings(enable_dns_rebinding_protection=False),
    )
    endpoint = _Guarded(StreamableHTTPASGIApp(server.session_manager))
    app.router.routes.append(Route(PATH, endpoint=endpoint, methods=["GET", "POST", "DELETE"]))


@asynccontextmanager
async def lifespan(server: MCPServer) -> AsyncIterator[None]:
    async with server.session_manager.run():
        yield


class _Guarded:
    """Authenticate (401 with the REST message) and, in open mode, refuse foreign hosts."""

    def __init__(self, app: StreamableHTTPASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        request = Request(scope)
        context: ApiContext = request.app.state.context()
        refusal = await run_in_threadpool(_refusal, context, request)
        if refusal is not None:
            await refusal(scope, receive, send)
            return
        await self.app(scope, receive, send)


def _refusal(context: ApiContext, request: Request) -> JSONResponse | None:
    try:
        context.access.authenticate(request.headers.get("authorization"))
    except MemosError as exc:
        return JSONResponse(
            error_body(exc.status_code, exc.message, request_id=REQUEST_ID.get()),
            status_code=exc.status_code,
            headers={"WWW-Authenticate": "Bearer"},
        )
    if context.access.open_mode:
        host = request.headers.get("host", "")
        origin = request.headers.get("origin")
        if not _loopback_name(urlsplit(f"//{host}").hostname) or (
            origin is not None and not _loopback_name(urlsplit(origin).hostname)
        ):
            message = "open mode answers MCP only for loopback hosts and origins"
            body = error_body(403, message, request_id=REQUEST_ID.get())
            return JSONResponse(body, status_code=403)
    return None


def _loopback_name(host: str | None) -> bool:
    return bool(host) and (host in _LOOPBACK_NAMES or is_loopback(host or ""))
