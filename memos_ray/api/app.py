"""The FastAPI application: routes, body-size guard and the MemOS error envelope."""

from __future__ import annotations

import logging
from collections.abc import Callable

from fastapi import FastAPI, Request
from fastapi.encoders import jsonable_encoder
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.types import ASGIApp, Receive, Scope, Send

from memos_ray import __version__
from memos_ray.api.context import ApiContext
from memos_ray.api.routes import build_routers
from memos_ray.errors import MemosError
from memos_ray.schemas.envelope import error_body

logger = logging.getLogger("memos_ray.api")

# The whole body may hold many messages; each one is checked against max_message_bytes.
MAX_BODY_BYTES = 64 * 1024 * 1024


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
            response = JSONResponse(
                error_body(413, f"request body over {self.max_bytes} bytes"), status_code=413
            )
            await response(scope, receive, send)
            return
        received = 0

        async def limited() -> dict:
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
            response = JSONResponse(
                error_body(413, f"request body over {self.max_bytes} bytes"), status_code=413
            )
            await response(scope, receive, send)


class _TooLarge(Exception):
    pass


def create_app(get_context: Callable[[], ApiContext], version: str = __version__) -> FastAPI:
    app = FastAPI(
        title="memos-ray",
        version=version,
        description="Memory operating system for LLM agents (MemOS REST dialect).",
    )
    for router in build_routers(get_context):
        app.include_router(router)

    @app.exception_handler(MemosError)
    async def memos_error(_: Request, exc: MemosError) -> JSONResponse:
        return JSONResponse(error_body(exc.status_code, exc.message), status_code=exc.status_code)

    @app.exception_handler(RequestValidationError)
    async def validation_error(_: Request, exc: RequestValidationError) -> JSONResponse:
        errors = jsonable_encoder(exc.errors())
        first = errors[0] if errors else {}
        where = ".".join(str(p) for p in first.get("loc", ()))
        message = f"invalid request: {where}: {first.get('msg', 'validation failed')}"
        return JSONResponse(error_body(422, message, detail=errors), status_code=422)

    @app.exception_handler(Exception)
    async def unexpected(_: Request, exc: Exception) -> JSONResponse:
        logger.exception("unhandled error", exc_info=exc)
        return JSONResponse(
            error_body(500, f"internal error: {type(exc).__name__}"), status_code=500
        )

    app.add_middleware(BodySizeLimit, max_bytes=MAX_BODY_BYTES)
    return app
