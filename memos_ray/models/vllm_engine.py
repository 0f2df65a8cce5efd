"""`ChatModel` on vLLM's engine in-process: the GPU Serve replica's backend.

vLLM's engine is asyncio-native (`AsyncLLM`), the `ChatModel` interface is synchronous and
called from many threads; the engine therefore lives on a private event loop in its own
thread and every call is a coroutine submitted to it. Concurrent calls are batched by the
engine (continuous batching), which is the point of running it here.

vllm is imported lazily, so this module imports (and the class can be named in configs)
where vllm is not installed.
"""

from __future__ import annotations

import asyncio
import itertools
import queue
import threading
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from concurrent.futures import Future
from pathlib import Path
from typing import Any

from memos_ray.models.chat import (
    ChatModel,
    ChatRequest,
    Delta,
    FinishReason,
    Generation,
    LLMError,
    Message,
    PrefixWarmup,
    Usage,
)

_END = object()


def _finish(reason: str | None) -> FinishReason:
    if reason == "length":
        return "length"
    if reason == "abort":
        return "error"
    return "stop"


class VLLMEngineChatModel(ChatModel):
    """vLLM `AsyncLLM` with automatic prefix caching and multi-LoRA.

    `engine_kwargs` go to `AsyncEngineArgs` unchanged (e.g. `tensor_parallel_size`,
    `max_num_seqs`, `block_size`), for what the named arguments do not cover.
    """

    def __init__(
        self,
        model: str,
        *,
        served_model_name: str | None = None,
        dtype: str = "auto",
        max_model_len: int | None = None,
        gpu_memory_utilization: float = 0.9,
        enforce_eager: bool = False,
        max_loras: int = 4,
        max_lora_rank: int = 16,
        enable_lora: bool = True,
        engine_kwargs: dict[str, Any] | None = None,
        startup_timeout_s: float = 900.0,
    ) -> None:
        self.model = model
        self.name = served_model_name or Path(model.rstrip("/")).name
        self._lora_ids: dict[str, int] = {}
        self._lora_counter = itertools.count(1)
        self._lora_lock = threading.Lock()
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(
            target=self._loop.run_forever, name="vllm-loop", daemon=True
        )
        self._thread.start()
        kwargs: dict[str, Any] = {
            "model": model,
            "served_model_name": self.name,
            "dtype": dtype,
            "max_model_len": max_model_len,
            "gpu_memory_utilization": gpu_memory_utilization,
            "enforce_eager": enforce_eager,
            "enable_prefix_caching": True,
            "enable_lora": enable_lora,
            "max_loras": max_loras,
            "max_lora_rank": max_lora_rank,
            **(engine_kwargs or {}),
        }
        try:
            # Created on the loop: AsyncLLM starts its output handler on the running loop.
            self._engine = self._call(self._create(kwargs), startup_timeout_s)
            self._tokenizer = self._engine.get_tokenizer()
            self.block_size = int(self._engine.vllm_config.cache_config.block_size or 16)
        except BaseException:
            self._stop_loop()
            raise

    @staticmethod
    async def _create(kwargs: dict[str, Any]) -> Any:
        # deferred: imports vLLM, on GPU machines only
        from vllm.engine.arg_utils import AsyncEngineArgs

        # deferred: imports vLLM, on GPU machines only
        from vllm.v1.engine.async_llm import AsyncLLM

        return AsyncLLM.from_engine_args(AsyncEngineArgs(**kwargs))

    # -- loop bridge -------------------------------------------------------------------

    def _call(self, coro: Any, timeout: float | None = None) -> Any:
        future = asyncio.run_coroutine_threadsafe(coro, self._loop)
        try:
            return future.result(timeout)
        except BaseException:
            future.cancel()  # aborts the engine request when the caller gave up
            raise

    def _stop_loop(self) -> None:
        if self._loop.is_running():
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(10)

    def close(self) -> None:
        engine = getattr(self, "_engine", None)
        if engine is not None:
            self._engine = None
            engine.shutdown()
        self._stop_loop()

    @property
    def model_names(self) -> list[str]:
        return [self.name]

    # -- request building --------------------------------------------------------------

    def _token_ids(
        self, messages: tuple[Message, ...] | list[Message], gen_prompt: bool
    ) -> list[int]:
        chat = [{"role": m.role, "content": m.content} for m in messages]
        text = self._tokenizer.apply_chat_template(
            chat, tokenize=False, add_generation_prompt=gen_prompt
        )
        # The template already wrote BOS/special tokens: do not add them twice.
        return list(self._tokenizer.encode(text, add_special_tokens=False))

    def _lora(self, request: ChatRequest) -> Any:
        if request.adapter is None:
            return None
        # deferred: imports vLLM, on GPU machines only
        from vllm.lora.request import LoRARequest

        with self._lora_lock:
            # One int id per adapter name for this engine's life: vLLM caches by that id.
            lora_id = self._lora_ids.setdefault(request.adapter.name, next(self._lora_counter))
        return LoRARequest(request.adapter.name, lora_id, request.adapter.path)

    def _sampling(self, request: ChatRequest, kind: str, max_tokens: int | None = None) -> Any:
        # deferred: imports vLLM, on GPU machines only
        from vllm.sampling_params import RequestOutputKind, SamplingParams

        p = request.params
        extra: dict[str, Any] = {}
        if request.response_schema is not None:
            # Guided decoding: the answer is valid JSON for the schema by construction.
            # deferred: imports vLLM, on GPU machines only
            from vllm.sampling_params import StructuredOutputsParams

            extra["structured_outputs"] = StructuredOutputsParams(json=request.response_schema)
        return SamplingParams(
            max_tokens=max_tokens or p.max_tokens,
            temperature=p.temperature,
            top_p=p.top_p if p.temperature > 0 else 1.0,
            stop=list(p.stop) or None,
            seed=p.seed,
            output_kind=RequestOutputKind[kind],
            **extra,
        )

    def _outputs(
        self, request: ChatRequest, ids: list[int], kind: str, max_tokens: int | None = None
    ) -> AsyncIterator[Any]:
        # deferred: imports vLLM, on GPU machines only
        from vllm.inputs import TokensPrompt

        return self._engine.generate(
            TokensPrompt(prompt_token_ids=ids),
            self._sampling(request, kind, max_tokens),
            uuid.uuid4().hex,
            lora_request=self._lora(request),
        )

    def _model_of(self, request: ChatRequest) -> str:
        return request.adapter.name if request.adapter is not None else self.name

    # -- ChatModel ---------------------------------------------------------------------

    def _check(self, request: ChatRequest) -> None:
        """Unknown names fail here, before the engine (whose errors become LLMError)."""
        if request.adapter is None:
            self.check_model(request.model)

    def generate(self, request: ChatRequest) -> Generation:
        self._check(request)
        return self._call(self._generate(request))

    async def _generate(self, request: ChatRequest) -> Generation:
        ids = self._token_ids(request.messages, True)
        final = None
        try:
            async for out in self._outputs(request, ids, "FINAL_ONLY"):
                final = out
        except Exception as exc:  # engine died, adapter failed to load, ...
            raise LLMError(f"vLLM engine: {type(exc).__name__}: {exc}") from exc
        if final is None or not final.outputs:
            raise LLMError("vLLM engine returned no output")
        completion = final.outputs[0]
        return Generation(
            text=completion.text,
            finish_reason=_finish(completion.finish_reason),
            usage=Usage(
                prompt_tokens=len(ids),
                completion_tokens=len(completion.token_ids),
                cached_tokens=int(getattr(final, "num_cached_tokens", None) or 0),
            ),
            model=self._model_of(request),
        )

    def stream(self, request: ChatRequest) -> Iterator[Delta]:
        self._check(request)
        return self._stream(request)

    def _stream(self, request: ChatRequest) -> Iterator[Delta]:
        items: queue.Queue[Any] = queue.Queue()
        future: Future[None] = asyncio.run_coroutine_threadsafe(
            self._pump(request, items), self._loop
        )
        try:
            while True:
                item = items.get()
                if item is _END:
                    break
                if isinstance(item, BaseException):
                    raise item
                yield item
        finally:
            future.cancel()  # the caller stopped reading: abort the engine request

    async def _pump(self, request: ChatRequest, items: queue.Queue[Any]) -> None:
        start = time.monotonic()
        try:
            ids = self._token_ids(request.messages, True)
            ttft: float | None = None
            completion_tokens = 0
            cached = 0
            finish: str | None = None
            async for out in self._outputs(request, ids, "DELTA"):
                cached = int(getattr(out, "num_cached_tokens", None) or cached)
                if not out.outputs:
                    continue
                piece = out.outputs[0]
                completion_tokens += len(piece.token_ids)
                finish = piece.finish_reason or finish
                if piece.text:
                    first = ttft is None
                    if first:
                        ttft = time.monotonic() - start
                    items.put(Delta(text=piece.text, ttft_s=ttft if first else None))
            usage = Usage(
                prompt_tokens=len(ids), completion_tokens=completion_tokens, cached_tokens=cached
            )
            items.put(Delta(finish_reason=_finish(finish), usage=usage, ttft_s=ttft))
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            items.put(LLMError(f"vLLM engine: {type(exc).__name__}: {exc}"))
        finally:
            items.put(_END)

    def count_tokens(self, messages: tuple[Message, ...] | list[Message]) -> int:
        return len(self._token_ids(messages, True))

    def warm_prefix(self, request: ChatRequest) -> PrefixWarmup:
        """Prefill the first `prefix_messages` messages (one token out) into the prefix cache.

        The prefix is rendered without a generation prompt so that its tokens are a true
        prefix of every later request that starts with these messages.
        """
        self._check(request)
        n = min(request.prefix_messages, len(request.messages))
        if n == 0:
            return PrefixWarmup(tokens=0, seconds=0.0, computed=False)
        warm = request.model_copy(
            update={
                "params": request.params.model_copy(
                    update={"max_tokens": 1, "temperature": 0.0, "stop": ()}
                )
            }
        )
        return self._call(self._warm(warm, n))

    async def _warm(self, request: ChatRequest, n: int) -> PrefixWarmup:
        start = time.monotonic()
        ids = self._token_ids(request.messages[:n], False)
        final = None
        try:
            async for out in self._outputs(request, ids, "FINAL_ONLY", max_tokens=1):
                final = out
        except Exception as exc:
            raise LLMError(f"vLLM engine: {type(exc).__name__}: {exc}") from exc
        cached = int(getattr(final, "num_cached_tokens", None) or 0)
        return PrefixWarmup(
            tokens=len(ids),
            seconds=time.monotonic() - start,
            # Only whole KV blocks are cached; a partial last block is always recomputed.
            computed=len(ids) - cached >= self.block_size,
        )
