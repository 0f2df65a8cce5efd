"""How MCP tools reach the service: its REST API, with the caller's own credentials.

The tools never touch stores or services: each one is a REST call made with the key of
whoever called the tool, so API keys, scopes, tenancy and input limits are enforced in one
place (the REST routes) for both transports. Over stdio the calls go to the service's URL;
mounted on the service, they go to the same app in process, carrying the MCP request's
`Authorization` header and client address.
"""

from __future__ import annotations

import hashlib
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

import httpx
from mcp.server.mcpserver.exceptions import ToolError
from starlette.requests import Request


@dataclass(frozen=True)
class Rest:
    """One caller's view of the API: the HTTP client carries its credentials."""

    http: httpx.AsyncClient
    # Who the caller is, for per-caller state of the MCP layer (chat history): a digest of
    # the credential, never the credential itself.
    identity: str
    # The user a tool acts for when it names none (stdio's `--user-id`).
    default_user: str | None = None

    async def call(
        self,
        method: str,
        path: str,
        *,
        json: Any = None,
        params: dict[str, Any] | None = None,
    ) -> tuple[Any, str]:
        """The envelope's `data` and `message`; an error answer becomes a ToolError that
        says what the service said (status and message), never a traceback."""
        query = {k: v for k, v in (params or {}).items() if v is not None}
        try:
            response = await self.http.request(method, path, json=json, params=query)
        except httpx.HTTPError as exc:
            raise ToolError(
                f"memos-ray is not reachable at {self.http.base_url}: {type(exc).__name__}"
            ) from None
        try:
            body = response.json()
        except ValueError:
            body = None
        if response.status_code >= 400:
            message = body.get("message") if isinstance(body, dict) else None
            raise ToolError(f"{response.status_code}: {message or response.reason_phrase}")
        if not isinstance(body, dict):
            raise ToolError(f"unexpected answer from {path} (status {response.status_code})")
        return body.get("data"), str(body.get("message") or "")


def identity_of(credential: str | None, fallback: str) -> str:
    if not credential:
        return fallback
    return "key:" + hashlib.sha256(credential.encode()).hexdigest()[:16]


def http_rest(
    base_url: str, api_key: str | None, *, default_user: str | None = None, timeout: float = 120
) -> Rest:
    """Calls to a running service by URL (the stdio server's way)."""
    headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
    client = httpx.AsyncClient(base_url=base_url, headers=headers, timeout=timeout)
    return Rest(client, identity_of(api_key, "stdio"), default_user)


@asynccontextmanager
async def in_process_rest(request: Request) -> AsyncIterator[Rest]:
    """Calls to the app that received the MCP request, in process, as that request's caller:
    its `Authorization` header and its client address (open mode stays loopback-only)."""
    authorization = request.headers.get("authorization")
    client = (request.client.host, request.client.port) if request.client else ("", 0)
    transport = httpx.ASGITransport(app=request.app, client=client)
    headers = {"Authorization": authorization} if authorization else {}
    async with httpx.AsyncClient(
        transport=transport, base_url="http://memos-ray.internal", headers=headers, timeout=None
    ) as http:
        yield Rest(http, identity_of(authorization, f"open:{client[0]}"))
