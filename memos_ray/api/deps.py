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
