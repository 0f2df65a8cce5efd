"""Route dependencies shared by every router: the process context and the calling principal.

No `from __future__ import annotations`: FastAPI must see these annotations as objects.
"""

from collections.abc import Callable
from typing import Annotated

from fastapi import Depends, Header, Request

from memos_ray.api.context import ApiContext
from memos_ray.services.tenancy import Caller


def current_context(request: Request) -> ApiContext:
    """The process's context: `create_app` is handed how to get it (built once, lazily)."""
    provider: Callable[[], ApiContext] = request.app.state.context
    return provider()


Ctx = Annotated[ApiContext, Depends(current_context)]


def current_caller(context: Ctx, authorization: Annotated[str | None, Header()] = None) -> Caller:
    return context.access.authenticate(authorization)


Who = Annotated[Caller, Depends(current_caller)]


# The /product routes that change something. Their handlers refuse read-only keys as well
# (through `cubes_for(..., write=True)`) except create_cube, but only after checks of their
# own (an LLM or chat model configured, ...): this refuses them first, the same on every
# deployment. Routers carry `refuse_read_only` as a dependency.
WRITE_ROUTES = frozenset(
    {
        ("POST", "/product/add"),
        ("POST", "/product/delete_memory"),
        ("POST", "/product/feedback"),
        ("POST", "/product/recover_memory"),
        ("POST", "/product/create_cube"),
        ("PUT", "/product/cubes/{cube_id}/adapter"),
        ("DELETE", "/product/cubes/{cube_id}/adapter"),
        ("PUT", "/product/cubes/{cube_id}/llm_budget"),
        ("POST", "/product/delete_memory_by_record_id"),
        ("POST", "/product/recover_memory_by_record_id"),
        ("POST", "/product/share_cube"),
        ("POST", "/product/unregister_cube"),
        # The MemOS SDK dialect (`memos_ray.api.sdk_routes`).
        ("POST", "/api/openmem/v1/add/message"),
        ("POST", "/api/openmem/v1/delete/memory"),
        ("POST", "/api/openmem/v1/add/feedback"),
        ("POST", "/api/openmem/v1/create/knowledgebase"),
        ("POST", "/api/openmem/v1/delete/knowledgebase"),
        ("POST", "/api/openmem/v1/add/knowledgebase-file"),
        ("POST", "/api/openmem/v1/delete/knowledgebase-file"),
    }
)


def refuse_read_only(request: Request, context: Ctx, who: Who) -> None:
    """A key without the `write` scope gets 403 on WRITE_ROUTES."""
    route = getattr(request.scope.get("route"), "path", None)
    if (request.method, route) in WRITE_ROUTES:
        context.access.require_write(who)
