"""OpenAIChatModel's retries, error mapping and SSE parsing against a real local HTTP server.

The server is a fault injector: each test scripts the answers (503s, error bodies, streams,
a response that never comes) and the client is checked on what it does with them.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest

from memos_ray.errors import BadRequestError
from memos_ray.models.chat import (
    Adapter,
    ChatRequest,
    LLMError,
    Message,
    SamplingParams,
    UnknownModelError,
)
from memos_ray.models.openai_chat import OpenAIChatModel

# A handler gets (path, parsed JSON body) and returns (status, headers, body or chunks).
Reply = tuple[int, dict[str, str], bytes | list[bytes]]
Script = Callable[[str, Any], Reply]


class FaultServer:
    """Fault injector: a loopback HTTP server whose every answer comes from `script`."""

    def __init__(self, script: Script) -> None:
        self.script = script
        self.requests: list[tuple[str, Any]] = []
        self.release = threading.Event()  # set at teardown so hung handlers end
        outer = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: Any) -> None:
                pass

            def _handle(self) -> None:
                length = int(self.headers.get("content-length") or 0)
                raw = self.rfile.read(length) if length else b""
                body = json.loads(raw) if raw else None
                outer.requests.append((self.path, body))
                status, headers, payload = outer.script(self.path, body)
                self.send_response(status)
                for key, value in headers.items():
                    self.send_header(key, value)
                if isinstance(payload, list):  # streamed: no length, close when done
                    self.send_header("Connection", "close")
                    self.end_headers()
                    for piece in payload:
                        self.wfile.write(piece)
                        self.wfile.flush()
                    self.close_connection = True
                    return
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)

            do_GET = _handle
            do_POST = _handle

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.thread = threading.Thread(
            target=self.httpd.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True
        )

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.httpd.server_address[1]}/v1"

    def __enter__(self) -> FaultServer:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.release.set()
        self.httpd.shutdown()
        self.httpd.server_close()


def _json(status: int, data: Any, headers: dict[str, str] | None = None) -> Reply:
    return (
        status,
        {"Content-Type": "application/json", **(headers or {})},
        json.dumps(data).encode(),
    )


def _completion(text: str = "hello there", finish: str = "stop") -> dict[str, Any]:
    return {
        "id": "c1",
        "object": "chat.completion",
        "model": "m",
        "choices": [
            {"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": finish}
        ],
        "usage": {
            "prompt_tokens": 12,
            "completion_tokens": 3,
            "total_tokens": 15,
            "prompt_tokens_details": {"cached_tokens": 8},
        },
    }


def _sse(events: list[Any]) -> list[bytes]:
    out = [f"data: {json.dumps(e)}\n\n".encode() for e in events]
    return [b": keep-alive\n\n", *out, b"data: [DONE]\n\n"]


def _chunk(text: str | None = None, finish: str | None = None) -> dict[str, Any]:
    delta = {"content": text} if text is not None else {}
    return {"choices": [{"index": 0, "delta": delta, "finish_reason": finish}], "usage": None}


REQ = ChatRequest(
    messages=(Message(role="user", content="hi"),),
    params=SamplingParams(max_tokens=5, temperature=0, stop=("\n",), seed=3),
)


@pytest.fixture
def fast() -> Iterator[Callable[..., OpenAIChatModel]]:
    made: list[OpenAIChatModel] = []

    def make(url: str, **kw: Any) -> OpenAIChatModel:
        kw.setdefault("backoff_s", 0.01)
        model = OpenAIChatModel(url, "m", api_key="k", **kw)
        made.append(model)
        return model

    yield make
    for m in made:
        m.close()


def test_retries_503_then_succeeds_and_maps_usage(fast: Callable[..., OpenAIChatModel]) -> None:
    calls = {"n": 0}

    def script(path: str, body: Any) -> Reply:
        calls["n"] += 1
        if calls["n"] <= 2:
            return _json(503, {"error": {"message": "overloaded"}})
        return _json(200, _completion())

    with FaultServer(script) as server:
        gen = fast(server.url).generate(REQ)
        assert calls["n"] == 3
        path, body = server.requests[-1]
    assert path == "/v1/chat/completions"
    assert body["model"] == "m" and body["stream"] is False
    assert body["max_tokens"] == 5 and body["temperature"] == 0 and body["seed"] == 3
    assert body["stop"] == ["\n"]
    assert gen.text == "hello there" and gen.finish_reason == "stop"
    assert (gen.usage.prompt_tokens, gen.usage.completion_tokens) == (12, 3)
    assert gen.usage.cached_tokens == 8


def test_429_honours_retry_after(fast: Callable[..., OpenAIChatModel]) -> None:
    calls = {"n": 0}

    def script(path: str, body: Any) -> Reply:
        calls["n"] += 1
        if calls["n"] == 1:
            return _json(429, {"error": {"message": "slow down"}}, {"Retry-After": "0.3"})
        return _json(200, _completion(finish="length"))

    with FaultServer(script) as server:
        start = time.monotonic()
        gen = fast(server.url).generate(REQ)
        waited = time.monotonic() - start
    assert gen.finish_reason == "length"
    assert waited >= 0.3


def test_gives_up_after_max_retries(fast: Callable[..., OpenAIChatModel]) -> None:
    with FaultServer(lambda p, b: _json(500, {"message": "engine dead"})) as server:
        with pytest.raises(LLMError, match="engine dead") as info:
            fast(server.url, max_retries=2).generate(REQ)
        assert len(server.requests) == 3
    assert info.value.status_code == 502


def test_400_is_not_retried_and_carries_server_text(fast: Callable[..., OpenAIChatModel]) -> None:
    # vLLM's error shape: {"object": "error", "message": ..., "code": 400}
    body = {"object": "error", "message": "maximum context length is 2048 tokens", "code": 400}
    with FaultServer(lambda p, b: _json(400, body)) as server:
        with pytest.raises(BadRequestError, match="maximum context length is 2048"):
            fast(server.url).generate(REQ)
        assert len(server.requests) == 1


def test_unknown_model_404(fast: Callable[..., OpenAIChatModel]) -> None:
    body = {"error": {"message": "The model `m` does not exist.", "code": 404}}
    with (
        FaultServer(lambda p, b: _json(404, body)) as server,
        pytest.raises(UnknownModelError, match="does not exist"),
    ):
        fast(server.url).generate(REQ)
    with pytest.raises(UnknownModelError):  # checked locally too: no request needed
        fast("http://127.0.0.1:9").generate(REQ.model_copy(update={"model": "other"}))


def test_connect_error_retried_then_reported(fast: Callable[..., OpenAIChatModel]) -> None:
    with FaultServer(lambda p, b: _json(200, {})) as server:
        url = server.url
    # The port is closed now: every attempt is refused.
    with pytest.raises(LLMError, match="unreachable after 3 attempts"):
        fast(url, max_retries=2).generate(REQ)


def test_sse_stream(fast: Callable[..., OpenAIChatModel]) -> None:
    events = [
        {"choices": [{"index": 0, "delta": {"role": "assistant"}, "finish_reason": None}]},
        _chunk("Hel"),
        _chunk("lo"),
        _chunk("", "length"),
        {"choices": [], "usage": {"prompt_tokens": 7, "completion_tokens": 2}},
    ]
    script = lambda p, b: (200, {"Content-Type": "text/event-stream"}, _sse(events))  # noqa: E731
    with FaultServer(script) as server:
        deltas = list(fast(server.url).stream(REQ))
        body = server.requests[-1][1]
    assert body["stream"] is True and body["stream_options"] == {"include_usage": True}
    assert [d.text for d in deltas] == ["Hel", "lo", ""]
    assert deltas[0].ttft_s is not None and deltas[1].ttft_s is None
    last = deltas[-1]
    assert last.finish_reason == "length"
    assert last.usage is not None and last.usage.prompt_tokens == 7
    assert last.usage.completion_tokens == 2


def test_stream_broken_after_output_is_not_retried(fast: Callable[..., OpenAIChatModel]) -> None:
    pieces = [f"data: {json.dumps(_chunk('partial'))}\n\n".encode()]  # then the line drops
    script = lambda p, b: (200, {"Content-Type": "text/event-stream"}, pieces)  # noqa: E731
    with FaultServer(script) as server:
        got: list[str] = []
        with pytest.raises(LLMError, match="without a finish reason"):
            for delta in fast(server.url).stream(REQ):
                got.append(delta.text)
        assert got == ["partial"]
        assert len(server.requests) == 1


def test_stream_error_event(fast: Callable[..., OpenAIChatModel]) -> None:
    pieces = [b'data: {"error": {"message": "engine crashed", "code": 500}}\n\n']
    script = lambda p, b: (200, {"Content-Type": "text/event-stream"}, pieces)  # noqa: E731
    with FaultServer(script) as server, pytest.raises(LLMError, match="engine crashed"):
        list(fast(server.url).stream(REQ))


def test_hung_response_times_out_and_is_retried(fast: Callable[..., OpenAIChatModel]) -> None:
    """First answer never comes (read timeout before any byte): retried, second answers."""
    calls = {"n": 0}
    holder: dict[str, FaultServer] = {}

    def script(path: str, body: Any) -> Reply:
        calls["n"] += 1
        if calls["n"] == 1:
            holder["s"].release.wait(5)
        return _json(200, _completion("late"))

    with FaultServer(script) as server:
        holder["s"] = server
        start = time.monotonic()
        gen = fast(server.url, read_timeout_s=0.3).generate(REQ)
        took = time.monotonic() - start
    assert gen.text == "late" and calls["n"] == 2
    assert took < 3


def test_hung_response_gives_up(fast: Callable[..., OpenAIChatModel]) -> None:
    holder: dict[str, FaultServer] = {}

    def script(path: str, body: Any) -> Reply:
        holder["s"].release.wait(5)
        return _json(200, _completion())

    with FaultServer(script) as server:
        holder["s"] = server
        with pytest.raises(LLMError, match="ReadTimeout"):
            fast(server.url, read_timeout_s=0.2, max_retries=1).generate(REQ)


def test_count_tokens_uses_tokenize_then_falls_back(fast: Callable[..., OpenAIChatModel]) -> None:
    msgs = [Message(role="user", content="x" * 400)]
    with FaultServer(lambda p, b: _json(200, {"count": 42, "tokens": []})) as server:
        assert fast(server.url).count_tokens(msgs) == 42
        path, body = server.requests[-1]
    assert path == "/tokenize"
    assert body["add_generation_prompt"] is True and body["messages"][0]["role"] == "user"

    with FaultServer(lambda p, b: _json(404, {"detail": "Not Found"})) as server:
        model = fast(server.url)
        estimate = model.count_tokens(msgs)
        assert 100 <= estimate <= 120
        model.count_tokens(msgs)
        assert len(server.requests) == 1  # the missing route is remembered


def test_adapter_loaded_once_then_used_as_model(fast: Callable[..., OpenAIChatModel]) -> None:
    def script(path: str, body: Any) -> Reply:
        if path == "/v1/models":
            return _json(200, {"data": [{"id": "m"}]})
        if path == "/v1/load_lora_adapter":
            return 200, {"Content-Type": "text/plain"}, b"Success"
        return _json(200, _completion())

    req = REQ.model_copy(update={"adapter": Adapter(name="cube-a-v1", path="/srv/a")})
    with FaultServer(script) as server:
        model = fast(server.url)
        model.generate(req)
        model.generate(req)
        paths = [p for p, _ in server.requests]
        load = [b for p, b in server.requests if p == "/v1/load_lora_adapter"]
        last = server.requests[-1][1]
    assert paths.count("/v1/load_lora_adapter") == 1
    assert load[0] == {"lora_name": "cube-a-v1", "lora_path": "/srv/a"}
    assert last["model"] == "cube-a-v1"


def test_warm_prefix_sends_only_the_prefix(fast: Callable[..., OpenAIChatModel]) -> None:
    req = ChatRequest(
        messages=(
            Message(role="system", content="long memory block"),
            Message(role="user", content="question"),
        ),
        prefix_messages=1,
    )
    with FaultServer(lambda p, b: _json(200, _completion())) as server:
        warm = fast(server.url).warm_prefix(req)
        body = server.requests[-1][1]
    assert body["messages"] == [{"role": "system", "content": "long memory block"}]
    assert body["max_tokens"] == 1 and body["temperature"] == 0
    assert warm.tokens == 12 and not warm.computed  # 4 uncached: less than a block
