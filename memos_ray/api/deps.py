"""Route dependencies shared by every router: the process context and the calling principal.

No `from __future__ import annotations`: FastAPI must see these annotations as objects.
"""

from collections.abc import Callable
from typing import Annotated, Any

from fastapi import Depends, Header

from memos_ray.api.context import ApiContext
from memos_ray.services.tenancy import Caller


def dependencies(get_context: Callable[[], ApiContext]) -> tuple[Any, Any]:
    """(Ctx, Who): annotations a handler uses to receive the context and the caller."""

    def ctx() -> ApiContext:
        return get_context()

    def caller(
        context: Annotated[ApiContext, Depends(ctx)],
        authorization: Annotated[str | None, Header()] = None,
    ) -> Caller:
        return context.access.authenticate(authorization)

    return Annotated[ApiContext, Depends(ctx)], Annotated[Caller, Depends(caller)]
