"""`ChatModel` over a remote OpenAI-compatible endpoint (vLLM server, Ollama, OpenAI, ...).

Retries cover only what cannot have produced output: connect errors, timeouts and dropped
connections before the response headers arrived, and 429/5xx answers (honouring
Retry-After). Once a response started, a failure is reported, never retried: a retried
stream would repeat text the caller already has.
"""

from __future__ import annotations

import contextlib
import email.utils
import json
import random
import threading
import time
from collections.abc import Iterator
from typing import Any

import httpx

from memos_ray.errors import BadRequestError, MemosError, PayloadTooLargeError
from memos_ray.models.chat import (
    ChatModel,
    ChatRequest,
    Delta,
    FinishReason,
    Generation,
    LLMError,
    Message,
    PrefixWarmup,
    UnknownModelError,
    Usage,
)

# Failures that happen before the server sent anything back: safe to send again.
_RETRY_TRANSPORT = (
    httpx.ConnectError,
    httpx.ConnectTimeout,
    httpx.ReadTimeout,
    httpx.PoolTimeout,
    httpx.RemoteProtocolError,
)


def _finish(reason: str | None) -> FinishReason:
    if reason == "length":
        return "length"
    if reason in ("content_filter", "error", "abort"):
        return "error"
    return "stop"  # stop, eos, tool_calls, or a server that leaves it out


def _usage(data: dict[str, Any] | None) -> Usage:
    if not data:
        return Usage()
    details = data.get("prompt_tokens_details") or {}
    return Usage(
        prompt_tokens=int(data.get("prompt_tokens") or 0),
        completion_tokens=int(data.get("completion_tokens") or 0),
        cached_tokens=int(details.get("cached_tokens") or 0),
    )


def _error_text(body: bytes) -> str:
    """The server's own message: OpenAI's {"error": {"message"}} or vLLM's {"message"}."""
    text = body.decode("utf-8", errors="replace").strip()
    try:
        data = json.loads(text)
    except ValueError:
        return text[:2000]
    if isinstance(data, dict):
        err = data.get("error", data)
        if isinstance(err, dict) and err.get("message"):
            return str(err["message"])
        if isinstance(err, str):
            return err
        if "detail" in data:
            return str(data["detail"])
    return text[:2000]


def _retry_after(response: httpx.Response) -> float | None:
    value = response.headers.get("retry-after")
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    with contextlib.suppress(TypeError, ValueError):
        when = email.utils.parsedate_to_datetime(value)
        return max(0.0, when.timestamp() - time.time())
    return None


def _status_error(status: int, path: str, text: str) -> MemosError:
    """A 4xx (not 429) as the error class the API maps to the right status."""
    message = f"LLM endpoint {path} answered {status}: {text}"
    if status == 404 and "model" in text.lower():
        return UnknownModelError(message)
    if status == 413:
        return PayloadTooLargeError(message)
    if status in (400, 422):
        return BadRequestError(message)
    # 401/403 (a wrong key in our config), 404 of a route, ...: the backend is misconfigured.
    return LLMError(message)


class OpenAIChatModel(ChatModel):
    """A served model behind `base_url` (with or without the trailing /v1).

    `extra_models` are further names the server serves (e.g. LoRA adapters loaded at its
    start); `model_names` lists `model` first, the default. `cache_block_tokens` is the
    server's KV block size (vLLM: 16 on GPU, 128 on CPU): prefix caches hold whole blocks
    only, so a warm-up that left less than one block uncached found the prefix cached.
    """

    def __init__(
        self,
        base_url: str,
        model: str,
        api_key: str | None = None,
        *,
        extra_models: tuple[str, ...] | list[str] = (),
        connect_timeout_s: float = 5.0,
        read_timeout_s: float = 120.0,
        max_retries: int = 3,
        backoff_s: float = 0.5,
        max_backoff_s: float = 30.0,
        cache_block_tokens: int = 16,
    ) -> None:
        root = base_url.rstrip("/")
        # vLLM's /tokenize and /v1/load_lora_adapter live beside /v1, so keep the root.
        self.root = root.removesuffix("/v1")
        self.model = model
        self._names = [model, *(n for n in extra_models if n != model)]
        self.max_retries = max_retries
        self.backoff_s = backoff_s
        self.max_backoff_s = max_backoff_s
        self.cache_block_tokens = cache_block_tokens
        headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self._client = httpx.Client(
            base_url=self.root,
            headers=headers,
            timeout=httpx.Timeout(read_timeout_s, connect=connect_timeout_s),
        )
        self._adapters: set[str] = set()
        self._adapter_lock = threading.Lock()
        self._tokenize: bool | None = None  # None: not tried yet
        # Guided JSON decoding (`response_format`), until the server refuses it once.
        self._structured = True

    @property
    def model_names(self) -> list[str]:
        return list(self._names)

    def close(self) -> None:
        self._client.close()

    # -- HTTP with retries -------------------------------------------------------------

    def _backoff(self, attempt: int, hint: float | None) -> float:
        delay = self.backoff_s * (2**attempt) * (0.5 + random.random() / 2)
        if hint is not None:
            delay = max(delay, hint)
        return min(delay, self.max_backoff_s)

    @contextlib.contextmanager
    def _open(self, method: str, path: str, body: Any = None) -> Iterator[httpx.Response]:
        """A response whose headers arrived with status < 400; its body is not read yet."""
        last = ""
        for attempt in range(self.max_retries + 1):
            request = self._client.build_request(method, path, json=body)
            try:
                response = self._client.send(request, stream=True)
            except _RETRY_TRANSPORT as exc:
                last = f"{type(exc).__name__}: {exc}"
                if attempt < self.max_retries:
                    time.sleep(self._backoff(attempt, None))
                    continue
                raise LLMError(
                    f"LLM endpoint {self.root}{path} unreachable after "
                    f"{attempt + 1} attempts: {last}"
                ) from exc
            except httpx.HTTPError as exc:
                raise LLMError(f"LLM endpoint {self.root}{path} failed: {exc}") from exc
            try:
                status = response.status_code
                if status < 400:
                    yield response
                    return
                try:
                    text = _error_text(response.read())
                except httpx.HTTPError as exc:
                    text = f"(error body unreadable: {exc})"
                if status == 429 or status >= 500:
                    last = f"{status}: {text}"
                    if attempt < self.max_retries:
                        time.sleep(self._backoff(attempt, _retry_after(response)))
                        continue
                    raise LLMError(
                        f"LLM endpoint {self.root}{path} failed after {attempt + 1} "
                        f"attempts: {last}"
                    )
                raise _status_error(status, path, text)
            finally:
                response.close()
        raise AssertionError("unreachable")

    def _post_json(self, path: str, body: Any) -> Any:
        with self._open("POST", path, body) as response:
            try:
                return json.loads(response.read())
            except (httpx.HTTPError, ValueError) as exc:
                raise LLMError(f"LLM endpoint {path}: bad response: {exc}") from exc

    # -- requests ----------------------------------------------------------------------

    def _body(self, request: ChatRequest, stream: bool) -> dict[str, Any]:
        params = request.params
        body: dict[str, Any] = {
            "model": self._target(request),
            "messages": [{"role": m.role, "content": m.content} for m in request.messages],
            "max_tokens": params.max_tokens,
            "temperature": params.temperature,
            "top_p": params.top_p,
            "stream": stream,
        }
        if params.stop:
            body["stop"] = list(params.stop)
        if params.seed is not None:
            body["seed"] = params.seed
        if stream:
            body["stream_options"] = {"include_usage": True}
        if request.response_schema is not None and self._structured:
            body["response_format"] = {
                "type": "json_schema",
                "json_schema": {"name": "answer", "schema": request.response_schema},
            }
        return body

    def _target(self, request: ChatRequest) -> str:
        if request.adapter is not None:
            self._ensure_adapter(request)
            return request.adapter.name
        return self.check_model(request.model)

    def _ensure_adapter(self, request: ChatRequest) -> None:
        """Load the adapter through vLLM's runtime LoRA API unless the server has it.

        Needs a server started with `--enable-lora` and VLLM_ALLOW_RUNTIME_LORA_UPDATING=True;
        the adapter's path must be readable by the server.
        """
        adapter = request.adapter
        assert adapter is not None
        with self._adapter_lock:
            if adapter.name in self._adapters:
                return
            if adapter.name not in self._served():
                try:
                    self._post_text(
                        "/v1/load_lora_adapter",
                        {"lora_name": adapter.name, "lora_path": adapter.path},
                    )
                except BadRequestError as exc:
                    # Another client loaded it between our listing and our load.
                    if "already" not in exc.message.lower():
                        raise
            self._adapters.add(adapter.name)

    def _served(self) -> set[str]:
        data = self._get_json("/v1/models")
        return {str(m.get("id")) for m in data.get("data") or [] if isinstance(m, dict)}

    def _get_json(self, path: str) -> Any:
        with self._open("GET", path) as response:
            try:
                return json.loads(response.read())
            except (httpx.HTTPError, ValueError) as exc:
                raise LLMError(f"LLM endpoint {path}: bad response: {exc}") from exc

    def _post_text(self, path: str, body: Any) -> str:
        with self._open("POST", path, body) as response:
            return response.read().decode("utf-8", errors="replace")

    def _forget_adapter(self, request: ChatRequest) -> bool:
        """After a 404 for a loaded adapter (server restarted): forget it, so it reloads."""
        if request.adapter is None:
            return False
        with self._adapter_lock:
            if request.adapter.name not in self._adapters:
                return False
            self._adapters.discard(request.adapter.name)
            return True

    def generate(self, request: ChatRequest) -> Generation:
        try:
            return self._generate(request)
        except UnknownModelError:
            if not self._forget_adapter(request):
                raise
            return self._generate(request)

    def _generate(self, request: ChatRequest) -> Generation:
        body = self._body(request, stream=False)
        try:
            data = self._post_json("/v1/chat/completions", body)
        except BadRequestError:
            if "response_format" not in body:
                raise
            # The server has no guided decoding: ask without it (the caller parses leniently).
            self._structured = False
            body.pop("response_format")
            data = self._post_json("/v1/chat/completions", body)
        try:
            choice = data["choices"][0]
            text = choice["message"].get("content") or ""
        except (KeyError, IndexError, TypeError, AttributeError) as exc:
            raise LLMError(f"LLM endpoint: unexpected completion {str(data)[:500]}") from exc
        return Generation(
            text=text,
            finish_reason=_finish(choice.get("finish_reason")),
            usage=_usage(data.get("usage")),
            model=body["model"],
        )

    def stream(self, request: ChatRequest) -> Iterator[Delta]:
        try:
            body = self._body(request, stream=True)
        except UnknownModelError:
            if not self._forget_adapter(request):
                raise
            body = self._body(request, stream=True)
        return self._stream(request, body)

    def _stream(self, request: ChatRequest, body: dict[str, Any]) -> Iterator[Delta]:
        start = time.monotonic()
        try:
            opened = self._open("POST", "/v1/chat/completions", body)
            response = opened.__enter__()
        except UnknownModelError:
            if not self._forget_adapter(request):
                raise
            body = self._body(request, stream=True)
            opened = self._open("POST", "/v1/chat/completions", body)
            response = opened.__enter__()
        try:
            yield from self._parse_sse(response, start)
        finally:
            opened.__exit__(None, None, None)

    def _parse_sse(self, response: httpx.Response, start: float) -> Iterator[Delta]:
        finish: str | None = None
        usage = Usage()
        ttft: float | None = None
        done = False
        try:
            for line in response.iter_lines():
                if not line.startswith("data:"):
                    continue  # blank separators, ": keep-alive" comments, "event:" lines
                payload = line[5:].strip()
                if payload == "[DONE]":
                    done = True
                    break
                try:
                    chunk = json.loads(payload)
                except ValueError as exc:
                    raise LLMError(f"LLM stream: bad event {payload[:200]!r}") from exc
                if chunk.get("error"):
                    raise LLMError(f"LLM stream failed: {_error_text(payload.encode())}")
                if chunk.get("usage"):
                    usage = _usage(chunk["usage"])
                for choice in chunk.get("choices") or []:
                    text = (choice.get("delta") or {}).get("content") or ""
                    if choice.get("finish_reason"):
                        finish = choice["finish_reason"]
                    if text:
                        first = ttft is None
                        if first:
                            ttft = time.monotonic() - start
                        yield Delta(text=text, ttft_s=ttft if first else None)
        except httpx.HTTPError as exc:
            raise LLMError(f"LLM stream broke off: {type(exc).__name__}: {exc}") from exc
        if not done and finish is None:
            raise LLMError("LLM stream ended without a finish reason or [DONE]")
        yield Delta(finish_reason=_finish(finish), usage=usage, ttft_s=ttft)

    def count_tokens(self, messages: tuple[Message, ...] | list[Message]) -> int:
        """Exact via vLLM's POST /tokenize (chat template applied, generation prompt added).

        OpenAI, DeepSeek and others have no such route: then a rough estimate
        (characters / 4 plus a few tokens per message for the template) is returned.
        """
        if self._tokenize is not False:
            body = {
                "model": self.model,
                "messages": [{"role": m.role, "content": m.content} for m in messages],
                "add_generation_prompt": True,
            }
            try:
                data = self._post_json("/tokenize", body)
                self._tokenize = True
                return int(data["count"])
            except (UnknownModelError, LLMError) as exc:
                # 404/405 of the route: not vLLM. Anything else on a server known to have it
                # is a real failure.
                if self._tokenize or not _missing_route(exc):
                    raise
                self._tokenize = False
            except (KeyError, TypeError, ValueError) as exc:
                raise LLMError(f"LLM endpoint /tokenize: unexpected answer: {exc}") from exc
        return sum(len(m.content) for m in messages) // 4 + 4 * len(messages) + 3

    def warm_prefix(self, request: ChatRequest) -> PrefixWarmup:
        """Prefill the first `prefix_messages` messages (one output token, greedy) so the
        server's automatic prefix cache holds their KV for the requests that follow."""
        n = min(request.prefix_messages, len(request.messages))
        if n == 0:
            return PrefixWarmup(tokens=0, seconds=0.0, computed=False)
        warm = request.model_copy(
            update={
                "messages": request.messages[:n],
                "params": request.params.model_copy(
                    update={"max_tokens": 1, "temperature": 0.0, "stop": ()}
                ),
            }
        )
        start = time.monotonic()
        result = self.generate(warm)
        usage = result.usage
        return PrefixWarmup(
            tokens=usage.prompt_tokens,
            seconds=time.monotonic() - start,
            computed=usage.prompt_tokens - usage.cached_tokens >= self.cache_block_tokens,
        )


def _missing_route(exc: MemosError) -> bool:
    return " answered 404:" in exc.message or " answered 405:" in exc.message
