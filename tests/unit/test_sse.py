"""Server-sent event responses: pings while no frame comes, the no-cache / no-buffering
headers, frames unchanged, and the source closed when the client goes away (real asyncio, a
real server over loopback HTTP)."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import AsyncIterator, Iterator

import httpx
from fastapi import FastAPI
from starlette.responses import StreamingResponse

from memos_ray.api.sse import PING, sse_response, with_pings
from tests.fixtures.servers import serve_in_thread


def test_pings_fill_the_silences_and_frames_pass_unchanged() -> None:
    async def slow() -> AsyncIterator[str]:
        yield "data: 1\n\n"
        await asyncio.sleep(0.35)
        yield "data: 2\n\n"

    async def collect() -> list[str]:
        return [frame async for frame in with_pings(slow(), 0.1)]

    out = asyncio.run(collect())
    assert out[0] == "data: 1\n\n" and out[-1] == "data: 2\n\n"
    assert 2 <= out.count(PING) <= 4 and len(out) == out.count(PING) + 2


def test_a_quick_stream_has_no_pings() -> None:
    async def quick() -> AsyncIterator[str]:
        for n in range(3):
            yield f"data: {n}\n\n"

    async def collect() -> list[str]:
        return [frame async for frame in with_pings(quick(), 5.0)]

    assert asyncio.run(collect()) == [f"data: {n}\n\n" for n in range(3)]


def test_over_http_headers_pings_and_closing() -> None:
    closed = threading.Event()
    app = FastAPI()

    def frames() -> Iterator[str]:
        yield 'data: {"type": "text"}\n\n'
        time.sleep(0.5)
        yield 'data: {"type": "end"}\n\n'

    async def endless() -> AsyncIterator[str]:
        try:
            while True:
                yield "data: tick\n\n"
                await asyncio.sleep(0.05)
        finally:
            closed.set()

    @app.get("/health")
    def health() -> dict[str, str]:
        return {"status": "healthy"}

    @app.get("/stream")
    def stream() -> StreamingResponse:
        return sse_response(frames(), ping_s=0.1)

    @app.get("/endless")
    def forever() -> StreamingResponse:
        return sse_response(endless(), ping_s=1.0)

    with serve_in_thread(app) as url:
        response = httpx.get(f"{url}/stream", timeout=10)
        assert response.headers["content-type"].startswith("text/event-stream")
        assert response.headers["cache-control"] == "no-cache"
        assert response.headers["x-accel-buffering"] == "no"
        body = response.text
        assert body.startswith('data: {"type": "text"}\n\n')
        assert body.endswith('data: {"type": "end"}\n\n')
        assert body.count(PING) >= 2
        with httpx.stream("GET", f"{url}/endless", timeout=10) as live:
            lines = live.iter_lines()
            assert next(lines) == "data: tick"
        assert closed.wait(5), "the source was not closed when the client left"
