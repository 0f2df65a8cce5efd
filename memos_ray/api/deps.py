"""Route dependencies shared by every router: the process context, the calling principal, and
request values a route builds a model from itself.

No `from __future__ import annotations`: FastAPI must see these annotations as objects.
"""

from collections.abc import Callable
from typing import Annotated, Any, TypeVar

from fastapi import Depends, Header, Request
from fastapi.exceptions import RequestValidationError
from pydantic import BaseModel, ValidationError

from memos_ray.api.context import ApiContext
from memos_ray.services.tenancy import Caller

M = TypeVar("M", bound=BaseModel)


def current_context(request: Request) -> ApiContext:
    """The process's context: `create_app` is handed how to get it (built once, lazily)."""
    provider: Callable[[], ApiContext] = request.app.state.context
    return provider()


Ctx = Annotated[ApiContext, Depends(current_context)]


def current_caller(context: Ctx, authorization: Annotated[str | None, Header()] = None) -> Caller:
    return context.access.authenticate(authorization)


Who = Annotated[Caller, Depends(current_caller)]


def validated(model: type[M], data: Any) -> M:
    """A model a route builds from request values (query, form, a merged body): values that
    fail it are the request's 422, like the ones FastAPI checks, never a 500."""
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        raise RequestValidationError(exc.errors(include_url=False)) from None
