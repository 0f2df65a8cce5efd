"""The FastAPI application: routes, body-size guard and the MemOS error envelope (whose messages
never carry an internal address: see `memos_ray.runtime.netguard.public_message`)."""

from __future__ import annotations

import logging
import re
import time
import uuid
from collections.abc import Callable

from fastapi import FastAPI, Request
from fastapi.encoders import jsonable_encoder
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from ray.exceptions import ActorUnavailableError, GetTimeoutError, RayActorError
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from memos_ray import __version__, metrics
from memos_ray.api import (
    admin_routes,
    archive_routes,
    chat_routes,
    cube_routes,
    mcp_route,
    routes,
    scheduler_routes,
    sdk_routes,
    ui_route,
)
from memos_ray.api.context import ApiContext
from memos_ray.errors import MemosError
from memos_ray.logs import REQUEST_ID, install_request_ids
from memos_ray.runtime.netguard import public_message, redact
from memos_ray.schemas.envelope import error_body

logger = logging.getLogger("memos_ray.api")

# The whole body may hold many messages; each one is checked against max_message_bytes.
MAX_BODY_BYTES = 64 * 1024 * 1024


_REQUEST_ID = re.compile(r"[A-Za-z0-9._:-]{1,128}")


class RequestIds:
    """Each request's id: the caller's `X-Request-Id` when it is a sane token, else a new one;
    set for the request's log lines (`memos_ray.logs.REQUEST_ID`) and sent back as a header."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        given = dict(scope.get("headers") or []).get(b"x-request-id", b"").decode("latin-1")
        request_id = given if _REQUEST_ID.fullmatch(given) else uuid.uuid4().hex
        token = REQUEST_ID.set(request_id)

        async def with_id(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = list(message.get("headers") or [])
                # Ray Serve adds its own (the same id: it set the request's header too).
                if not any(name.lower() == b"x-request-id" for name, _ in headers):
                    headers.append((b"x-request-id", request_id.encode()))
                    message = {**message, "headers": headers}
            await send(message)

        try:
            await self.app(scope, receive, with_id)
        finally:
            REQUEST_ID.reset(token)


class RouteLatency:
    """`memos_http_request_seconds` by route *template* (`/product/search`, never a path with
    ids in it), method and status class, until the last byte of the answer is sent."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.monotonic()
        status = 500

        async def noting_status(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = int(message["status"])
            await send(message)

        try:
            await self.app(scope, receive, noting_status)
        finally:
            # The router set the matched route on the shared scope; none matched: a 404.
            route = getattr(scope.get("route"), "path", None)
            method = scope.get("method", "")
            metrics.HTTP_SECONDS.observe(
                time.monotonic() - started,
                route=route if isinstance(route, str) else "unmatched",
                method=method if method in _METHODS else "other",
                status=metrics.status_class(status),
            )


_METHODS = frozenset({"GET", "POST", "PUT", "PATCH", "DELETE", "HEAD", "OPTIONS"})


class BodySizeLimit:
    """Refuse oversize bodies before they are read into memory (413)."""

    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        length = dict(scope.get("headers") or []).get(b"content-length")
        if length is not None and length.isdigit() and int(length) > self.max_bytes:
            message = f"request body over {self.max_bytes} bytes"
            body = error_body(413, message, request_id=REQUEST_ID.get())
            await JSONResponse(body, status_code=413)(scope, receive, send)
            return
        received = 0

        async def limited() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_bytes:
                    raise _TooLarge
            return message

        try:
            await self.app(scope, limited, send)
        except _TooLarge:
            message = f"request body over {self.max_bytes} bytes"
            body = error_body(413, message, request_id=REQUEST_ID.get())
            await JSONResponse(body, status_code=413)(scope, receive, send)


class _TooLarge(Exception):
    pass


def _error(
    request: Request, status: int, message: str, kind: str, detail: object = None
) -> JSONResponse:
    """MemOS's envelope, except under /v1 where OpenAI clients expect OpenAI's error shape."""
    if request.url.path.startswith("/v1/"):
        code = "model_not_found" if kind == "UnknownModelError" else None
        body = {"error": {"message": message, "type": _openai_type(status), "code": code}}
        return JSONResponse(body, status_code=status)
    body = error_body(status, message, detail=detail, request_id=REQUEST_ID.get())
    return JSONResponse(body, status_code=status)


def _openai_type(status: int) -> str:
    if status in (401, 403):
        return "authentication_error" if status == 401 else "permission_error"
    if status == 404:
        return "not_found_error"
    return "invalid_request_error" if status < 500 else "server_error"


async def memos_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, MemosError)  # registered for MemosError
    message = public_message(exc)
    if message != exc.message:
        # The client gets no internal address; the operator gets the whole story.
        logger.error(
            "%s %s: %s: %s",
            request.method,
            request.url.path,
            type(exc).__name__,
            exc.message,
            exc_info=exc if exc.status_code >= 500 else None,
        )
    response = _error(request, exc.status_code, message, type(exc).__name__)
    retry_after = getattr(exc, "retry_after_s", None)
    if retry_after is not None:
        response.headers["Retry-After"] = str(retry_after)
    return response


async def validation_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, RequestValidationError)  # registered for it
    # Without the offending input: it may be huge, or NaN, which JSON cannot carry.
    errors = jsonable_encoder([{k: v for k, v in e.items() if k != "input"} for e in exc.errors()])
    first = errors[0] if errors else {}
    where = ".".join(str(p) for p in first.get("loc", ()))
    message = redact(f"invalid request: {where}: {first.get('msg', 'validation failed')}")
    return _error(request, 422, message, "invalid_request_error", detail=errors)


async def restarting(request: Request, exc: Exception) -> JSONResponse:
    # A replica or actor of the app died mid-request (Ray and Serve restart it): nothing
    # was acknowledged, and the same request shortly after will find it back.
    logger.warning("%s %s: %r", request.method, request.url.path, exc)
    response = _error(
        request, 503, "a part of the service is restarting; retry shortly", "restarting"
    )
    response.headers["Retry-After"] = "1"
    return response


async def unexpected(request: Request, exc: Exception) -> JSONResponse:
    logger.exception("unhandled error", exc_info=exc)
    return _error(request, 500, f"internal error: {type(exc).__name__}", "server_error")


def create_app(get_context: Callable[[], ApiContext], version: str = __version__) -> FastAPI:
    mcp = mcp_route.mcp_server()
    app = FastAPI(
        title="memos-ray",
        version=version,
        description="Memory operating system for LLM agents (MemOS REST dialect).",
        lifespan=lambda _app: mcp_route.lifespan(mcp),
    )
    # Routes reach the context through `deps.current_context`.
    app.state.context = get_context
    # Every handler that changes something calls `access.require_write` before any other
    # check, so a read-scoped key gets the same 403 on every deployment.
    routers = (
        routes.health,
        admin_routes.router,
        routes.product,
        cube_routes.router,
        archive_routes.router,
        chat_routes.product,
        chat_routes.openai,
        scheduler_routes.router,
        sdk_routes.router,
    )
    for router in routers:
        app.include_router(router)
    # MCP's tools call the routes above in process, as the MCP request's caller.
    mcp_route.mount(app, mcp)
    ui_route.mount(app)
    app.add_exception_handler(MemosError, memos_error)
    app.add_exception_handler(RequestValidationError, validation_error)
    app.add_exception_handler(RayActorError, restarting)
    app.add_exception_handler(ActorUnavailableError, restarting)
    app.add_exception_handler(GetTimeoutError, restarting)
    app.add_exception_handler(Exception, unexpected)
    app.add_middleware(BodySizeLimit, max_bytes=MAX_BODY_BYTES)
    app.add_middleware(RouteLatency)
    # Outermost: the id is set before anything else runs, and on every answer.
    app.add_middleware(RequestIds)
    install_request_ids()
    return app
