"""Server-sent event responses: the frames as the routes write them (MemOS's bytes), plus
what proxies and idle connections need: `Cache-Control: no-cache`, `X-Accel-Buffering: no`
(nginx would otherwise hold the frames back), and a comment line every `ping_s` while no frame
comes, so that a long model call or a quiet task log does not get the connection cut.

Not sse-starlette: it formats each event itself, and these frames must stay byte-for-byte
what MemOS's clients parse.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Iterator

from starlette.concurrency import iterate_in_threadpool
from starlette.responses import StreamingResponse

PING = ": ping\n\n"
HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}


def sse_response(
    frames: Iterator[str] | AsyncIterator[str], ping_s: float = 15.0
) -> StreamingResponse:
    """A stream of pre-formatted frames (`data: ...\\n\\n`); a sync iterator runs in the
    thread pool, one frame at a time."""
    source = frames if isinstance(frames, AsyncIterator) else iterate_in_threadpool(frames)
    return StreamingResponse(
        with_pings(source, ping_s), media_type="text/event-stream", headers=HEADERS
    )


async def with_pings(frames: AsyncIterator[str], ping_s: float) -> AsyncIterator[str]:
    """The frames, with a ping comment whenever `ping_s` passes without one."""
    pending: asyncio.Future[str] | None = None
    try:
        while True:
            if pending is None:
                pending = asyncio.ensure_future(anext(frames))
            done, _ = await asyncio.wait({pending}, timeout=ping_s)
            if not done:
                yield PING
                continue
            finished, pending = pending, None
            try:
                frame = finished.result()
            except StopAsyncIteration:
                return
            yield frame
    finally:
        if pending is not None:
            pending.cancel()
            with contextlib.suppress(asyncio.CancelledError, StopAsyncIteration):
                await pending
        closer = getattr(frames, "aclose", None)
        if closer is not None:
            await closer()
