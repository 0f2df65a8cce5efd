"""The web console at /ui: static files shipped in the package (no CDN at run time).

The page holds no data of its own: everything it shows comes from the same REST routes,
with the key the user typed, so it sees exactly what that key may see. Served with a strict
Content-Security-Policy (scripts and styles from this origin only, no framing).
"""

from __future__ import annotations

from pathlib import Path

from fastapi import FastAPI
from fastapi.responses import FileResponse, RedirectResponse
from starlette.responses import Response
from starlette.staticfiles import StaticFiles
from starlette.types import Scope

UI_DIR = Path(__file__).parent / "ui"
HEADERS = {
    "Content-Security-Policy": (
        "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
        "connect-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'none'"
    ),
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-cache",
}


class _Static(StaticFiles):
    """Static files with the console's security headers."""

    async def get_response(self, path: str, scope: Scope) -> Response:
        response = await super().get_response(path, scope)
        response.headers.update(HEADERS)
        return response


def mount(app: FastAPI) -> None:
    @app.get("/ui", include_in_schema=False)
    def console() -> FileResponse:
        return FileResponse(UI_DIR / "index.html", headers=HEADERS)

    @app.get("/ui/", include_in_schema=False)
    def console_slash() -> RedirectResponse:
        return RedirectResponse("/ui")

    app.mount("/ui/static", _Static(directory=UI_DIR), name="ui-static")
