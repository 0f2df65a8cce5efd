"""Hugging Face transformers as a `ChatModel`: the CPU backend (SmolLM2 by default).

Activation memory lives here on CPU: the KV cache of a request's stable prefix (a cube's hot
memories in the system prompt) is computed once, kept in memory and on disk, and reused as a
`DynamicCache`. Prompts are always tokenised as prefix ids + suffix ids, with or without a
cache, so the cache can only change how fast an answer comes, never which tokens it has.
"""

from __future__ import annotations

import copy
import hashlib
import inspect
import json
import logging
import os
import queue
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, nullcontext
from pathlib import Path
from typing import Any

import torch

from memos_ray.errors import BadRequestError, MemosError
from memos_ray.models.adapters import CONFIG_FILE, WEIGHTS_FILE, check_weights, parse_adapter_config
from memos_ray.models.chat import (
    Adapter,
    ChatModel,
    ChatRequest,
    Delta,
    FinishReason,
    Generation,
    LLMError,
    Message,
    PrefixWarmup,
    Usage,
    collect,
)

logger = logging.getLogger("memos_ray.llm")


class _Prompt:
    """Token ids of a rendered request, split where its cacheable prefix ends."""

    def __init__(self, prefix: list[int], suffix: list[int]) -> None:
        self.prefix = prefix
        self.suffix = suffix

    @property
    def ids(self) -> list[int]:
        return self.prefix + self.suffix


class _TokenQueue:
    """A generate() streamer: the first put is the prompt, later puts are new tokens."""

    def __init__(self) -> None:
        self.queue: queue.Queue[int | None] = queue.Queue()
        self._prompt_seen = False
        self.first_token_at: float | None = None

    def put(self, value: torch.Tensor) -> None:
        if not self._prompt_seen:
            self._prompt_seen = True
            return
        if self.first_token_at is None:
            self.first_token_at = time.perf_counter()
        for token in value.reshape(-1).tolist():
            self.queue.put(int(token))

    def end(self) -> None:
        self.queue.put(None)


class TransformersChatModel(ChatModel):
    def __init__(
        self,
        model_path: str | Path,
        *,
        served_name: str,
        device: str = "cpu",
        dtype: str = "float32",
        threads: int | None = None,
        kv_cache_dir: Path | None = None,
        max_prefix_caches: int = 8,
        max_context_tokens: int | None = None,
        kv_cache_disk_bytes: int = 2 << 30,
    ) -> None:
        # deferred: imports transformers
        from transformers import AutoModelForCausalLM, AutoTokenizer

        if threads:
            torch.set_num_threads(threads)
        self._name = served_name
        self._device = torch.device(device)
        self.tokenizer = AutoTokenizer.from_pretrained(str(model_path))
        self.model = AutoModelForCausalLM.from_pretrained(
            str(model_path), dtype=getattr(torch, dtype)
        ).to(self._device)  # type: ignore[arg-type]
        self.model.eval()
        self._model_path = Path(model_path)
        self._dtype = dtype
        # The base model's Linear layers, taken before any LoRA wraps them: every adapter's
        # tensors are checked against these before it touches the shared model.
        self._linear = _linear_layers(self.model)
        self._cache_arg = _cache_argument(self.model)
        limit = getattr(self.model.config, "max_position_embeddings", None) or 4096
        self.max_context_tokens = min(max_context_tokens or limit, limit)
        self._lock = threading.Lock()
        # A fast tokenizer shared by threads can fail ("Already borrowed"): one user at a time.
        self._tokenizer_lock = threading.Lock()
        self._peft: Any = None
        self._caches: OrderedDict[str, Any] = OrderedDict()
        self._max_caches = max_prefix_caches
        self._kv_dir = kv_cache_dir if kv_cache_disk_bytes > 0 else None
        self._kv_disk_bytes = kv_cache_disk_bytes
        # Disk caches are only valid for these exact weights.
        self._fingerprint = hashlib.sha256(
            f"{Path(model_path).resolve()}|{dtype}|{self.model.config.to_json_string()}".encode()
        ).hexdigest()[:16]

    # -- ChatModel -------------------------------------------------------------------------

    @property
    def model_names(self) -> list[str]:
        return [self._name]

    def count_tokens(self, messages: tuple[Message, ...] | list[Message]) -> int:
        return len(self._prompt(tuple(messages), 0).ids)

    def generate(self, request: ChatRequest) -> Generation:
        return collect(self.stream(request), self._name)

    def stream(self, request: ChatRequest) -> Iterator[Delta]:
        self.check_model(request.model)
        prompt = self._prompt(request.messages, request.prefix_messages)
        params = request.params
        if len(prompt.ids) + params.max_tokens > self.max_context_tokens:
            raise _context_error(len(prompt.ids), params.max_tokens, self.max_context_tokens)
        with self._lock:
            yield from self._stream_locked(request, prompt)

    def warm_prefix(self, request: ChatRequest) -> PrefixWarmup:
        prompt = self._prompt(request.messages, request.prefix_messages)
        if not prompt.prefix:
            return PrefixWarmup(tokens=0, seconds=0.0, computed=False)
        start = time.perf_counter()
        with self._lock:
            model, adapter_scope = self._use_adapter(request.adapter)
            _, computed = self._prefix_cache(prompt.prefix, request.adapter, model, adapter_scope)
        return PrefixWarmup(
            tokens=len(prompt.prefix), seconds=time.perf_counter() - start, computed=computed
        )

    def close(self) -> None:
        self._caches.clear()

    # -- prompt ----------------------------------------------------------------------------

    def render(self, messages: tuple[Message, ...], generation_prompt: bool) -> str:
        with self._tokenizer_lock:
            return self.tokenizer.apply_chat_template(  # type: ignore[return-value]
                [m.model_dump() for m in messages],
                tokenize=False,
                add_generation_prompt=generation_prompt,
            )

    def _encode(self, text: str) -> list[int]:
        with self._tokenizer_lock:
            return list(self.tokenizer(text, add_special_tokens=False)["input_ids"])

    def _decode(self, ids: list[int]) -> str:
        with self._tokenizer_lock:
            return str(self.tokenizer.decode(ids, skip_special_tokens=True))

    def _prompt(self, messages: tuple[Message, ...], prefix_messages: int) -> _Prompt:
        full = self.render(messages, True)
        if 0 < prefix_messages < len(messages):
            head = self.render(messages[:prefix_messages], False)
            if full.startswith(head):
                return _Prompt(self._encode(head), self._encode(full[len(head) :]))
            logger.warning("chat template does not render the prefix alone; no prefix cache")
        return _Prompt([], self._encode(full))

    # -- generation ------------------------------------------------------------------------

    def _stream_locked(self, request: ChatRequest, prompt: _Prompt) -> Iterator[Delta]:
        started = time.perf_counter()
        model, adapter_scope = self._use_adapter(request.adapter)
        cache = None
        cached = 0
        if prompt.prefix and prompt.suffix:
            stored, _ = self._prefix_cache(prompt.prefix, request.adapter, model, adapter_scope)
            # generate() extends the cache it is given: keep the stored prefix intact.
            cache = copy.deepcopy(stored)
            cached = len(prompt.prefix)
        ids = torch.tensor([prompt.ids], device=self._device)
        streamer = _TokenQueue()
        cancel = threading.Event()
        kwargs = self._generate_kwargs(request, ids, streamer, cancel)
        if cache is not None:
            kwargs[self._cache_arg] = cache
        failure: list[BaseException] = []

        def run() -> None:
            try:
                with torch.inference_mode(), adapter_scope():
                    model.generate(**kwargs)
            except BaseException as exc:
                failure.append(exc)
                streamer.end()

        worker = threading.Thread(target=run, name="hf-generate", daemon=True)
        worker.start()
        generated: list[int] = []
        emitted = ""
        ttft: float | None = None
        stops = request.params.stop
        try:
            while True:
                token = streamer.queue.get()
                if token is None:
                    break
                generated.append(token)
                if ttft is None:
                    ttft = (streamer.first_token_at or time.perf_counter()) - started
                text = self._decode(generated)
                if text.endswith("\ufffd"):
                    continue  # half of a multi-byte character: wait for the rest
                visible = _visible(text, stops, final=False)
                if len(visible) > len(emitted):
                    piece = visible[len(emitted) :]
                    emitted = visible
                    yield Delta(text=piece, ttft_s=ttft)
        finally:
            cancel.set()
            worker.join()
        if failure:
            raise LLMError(f"generation failed: {failure[0]!r}") from failure[0]
        final = _visible(self._decode(generated), stops, True)
        eos = set(_eos_ids(self.model, self.tokenizer))
        finish: FinishReason = "stop"
        if len(generated) >= request.params.max_tokens and generated[-1] not in eos:
            finish = "length"
        yield Delta(
            text=final[len(emitted) :],
            finish_reason=finish,
            usage=Usage(
                prompt_tokens=len(prompt.ids),
                completion_tokens=len(generated),
                cached_tokens=cached,
            ),
            ttft_s=ttft,
        )

    def _generate_kwargs(
        self,
        request: ChatRequest,
        ids: torch.Tensor,
        streamer: _TokenQueue,
        cancel: threading.Event,
    ) -> dict[str, Any]:
        # deferred: imports transformers
        from transformers import StoppingCriteria, StoppingCriteriaList

        class Cancelled(StoppingCriteria):
            """Ends generation when the consumer went away (client disconnected)."""

            def __call__(self, input_ids: torch.Tensor, scores: Any, **_: Any) -> torch.Tensor:
                return torch.full(
                    (input_ids.shape[0],), cancel.is_set(), dtype=torch.bool, device=ids.device
                )

        params = request.params
        kwargs: dict[str, Any] = {
            "input_ids": ids,
            "attention_mask": torch.ones_like(ids),
            "max_new_tokens": params.max_tokens,
            "streamer": streamer,
            "stopping_criteria": StoppingCriteriaList([Cancelled()]),
            "pad_token_id": self.tokenizer.pad_token_id or self.tokenizer.eos_token_id,
        }
        if params.temperature == 0:
            kwargs.update(do_sample=False, temperature=None, top_p=None, top_k=None)
        else:
            kwargs.update(do_sample=True, temperature=params.temperature, top_p=params.top_p)
            if params.seed is not None:
                torch.manual_seed(params.seed)
        if params.stop:
            kwargs.update(stop_strings=list(params.stop), tokenizer=self.tokenizer)
        return kwargs

    # -- prefix KV caches ------------------------------------------------------------------

    def _prefix_cache(
        self,
        prefix: list[int],
        adapter: Adapter | None,
        model: Any,
        adapter_scope: Callable[[], AbstractContextManager[Any]],
    ) -> tuple[Any, bool]:
        """The stored cache of `prefix` (memory, then disk, else computed now)."""
        key = hashlib.sha256(
            f"{self._fingerprint}|{adapter.name if adapter else ''}|{prefix}".encode()
        ).hexdigest()[:32]
        cache = self._caches.get(key)
        if cache is not None:
            self._caches.move_to_end(key)
            return cache, False
        cache = self._load_cache(key, len(prefix))
        computed = cache is None
        if cache is None:
            # deferred: imports transformers
            from transformers import DynamicCache

            cache = DynamicCache(config=self.model.config)
            with torch.inference_mode(), adapter_scope():
                model(
                    input_ids=torch.tensor([prefix], device=self._device),
                    use_cache=True,
                    **{self._cache_arg: cache},
                )
            self._save_cache(key, cache)
        self._caches[key] = cache
        while len(self._caches) > self._max_caches:
            self._caches.popitem(last=False)
        return cache, computed

    def _save_cache(self, key: str, cache: Any) -> None:
        if self._kv_dir is None:
            return
        self._kv_dir.mkdir(parents=True, exist_ok=True)
        layers = [(layer.keys.cpu(), layer.values.cpu()) for layer in cache.layers]
        tmp = self._kv_dir / f".{key}.{os.getpid()}.tmp"
        torch.save(layers, tmp)
        os.replace(tmp, self._kv_dir / f"{key}.pt")
        self._prune_disk()

    def _prune_disk(self) -> None:
        """Keep the saved caches within their byte budget, least recently used out first."""
        assert self._kv_dir is not None
        files = []
        for path in self._kv_dir.glob("*.pt"):
            try:
                stat = path.stat()
            except FileNotFoundError:  # another replica pruned it
                continue
            files.append((stat.st_mtime, stat.st_size, path))
        total = sum(size for _, size, _ in files)
        for _, size, path in sorted(files):
            if total <= self._kv_disk_bytes:
                break
            path.unlink(missing_ok=True)
            total -= size

    def _load_cache(self, key: str, length: int) -> Any:
        if self._kv_dir is None or not (self._kv_dir / f"{key}.pt").is_file():
            return None
        # deferred: imports transformers
        from transformers import DynamicCache

        path = self._kv_dir / f"{key}.pt"
        try:
            layers = torch.load(path, weights_only=True)
            os.utime(path)  # recently used: pruned last
        except Exception:  # a torn or foreign file: recompute rather than fail the chat
            logger.warning("unreadable KV cache file %s; recomputing", key)
            return None
        cache = DynamicCache(config=self.model.config)
        for index, (keys, values) in enumerate(layers):
            cache.update(keys.to(self._device), values.to(self._device), index)
        if cache.get_seq_length() != length:
            return None
        return cache

    # -- LoRA ------------------------------------------------------------------------------

    def _use_adapter(
        self, adapter: Adapter | None
    ) -> tuple[Any, Callable[[], AbstractContextManager[Any]]]:
        """The model to call and the context to call it in, for this adapter (or none).

        PEFT's own model wrapper is used (transformers' adapter methods need a newer PEFT);
        wrapping injects LoRA layers into the base model, so without an adapter they are
        switched off for the call.
        """
        if adapter is None:
            if self._peft is None:
                return self.model, nullcontext
            return self.model, self._peft.disable_adapter
        self._load_adapter(adapter)
        self._peft.set_adapter(adapter.name)
        return self._peft, nullcontext

    def _load_adapter(self, adapter: Adapter) -> None:
        """Check the adapter whole, then inject it; a failure leaves the shared model as it
        was (the probe that motivated this: a half-loaded adapter's layers stayed in the base
        model and garbled every tenant's answers, even after the adapter was deleted)."""
        if self._peft is not None and adapter.name in self._peft.peft_config:
            return
        config, state = self._checked_adapter(adapter)
        # deferred: imports peft
        from peft import PeftModel, set_peft_model_state_dict

        created = self._peft is None
        try:
            if created:
                self._peft = PeftModel(self.model, config, adapter_name=adapter.name)
                self._peft.eval()
            else:
                self._peft.add_adapter(adapter.name, config)
            result: Any = set_peft_model_state_dict(self._peft, state, adapter_name=adapter.name)
            unexpected = list(result.unexpected_keys)
            missing = [k for k in result.missing_keys if f".{adapter.name}." in k]
            if unexpected or missing:
                raise ValueError(f"tensors not loaded: {(unexpected + missing)[:3]}")
        except Exception as exc:
            self._drop_adapter(adapter.name)
            raise LLMError(f"cannot load LoRA adapter {adapter.name}: {exc}") from exc

    def _checked_adapter(self, adapter: Adapter) -> tuple[Any, dict[str, torch.Tensor]]:
        """The adapter's LoraConfig and tensors, checked against this model's layers and
        for finite values; nothing is injected yet."""
        # deferred: imports peft
        from peft import LoraConfig

        # deferred: imports safetensors (with torch)
        from safetensors.torch import load as load_tensors

        folder = Path(adapter.path)
        try:
            raw = json.loads((folder / CONFIG_FILE).read_text())
            weights = (folder / WEIGHTS_FILE).read_bytes()
            checked = parse_adapter_config(raw)
            check_weights(weights, checked, self._linear)
            state = load_tensors(weights)
        except MemosError as exc:
            raise LLMError(f"LoRA adapter {adapter.name} is invalid: {exc.message}") from exc
        except Exception as exc:
            raise LLMError(f"cannot read LoRA adapter {adapter.name}: {exc}") from exc
        for key, tensor in state.items():
            if not torch.isfinite(tensor).all():
                raise LLMError(f"LoRA adapter {adapter.name}: {key} has non-finite values")
        fields = checked.normalised()
        fields.pop("peft_type")
        dtype = next(self.model.parameters()).dtype
        return LoraConfig(**fields), {k: v.to(dtype) for k, v in state.items()}

    def _drop_adapter(self, name: str) -> None:
        """Remove a (partly) loaded adapter and check the base model is as it was; if it
        cannot be, the base weights are loaded again rather than served wrong."""
        peft = self._peft
        try:
            if peft is not None and name in peft.peft_config:
                if len(peft.peft_config) == 1:
                    peft.unload()  # puts the original layers back into self.model
                    self._peft = None
                else:
                    peft.delete_adapter(name)
            if self._peft is not None:
                # Layers injected before PEFT registered the adapter's config, if any.
                for module in self._peft.modules():
                    if name in getattr(module, "lora_A", {}) and hasattr(module, "delete_adapter"):
                        module.delete_adapter(name)
        except Exception:
            logger.exception("removing LoRA adapter %s failed", name)
            if self._peft is not None:
                self._reload_base()
        if self._peft is None and _linear_layers(self.model) != self._linear:
            logger.error("LoRA layers stayed in the base model; reloading its weights")
            self._reload_base()

    def _reload_base(self) -> None:
        # deferred: imports transformers
        from transformers import AutoModelForCausalLM

        self.model = AutoModelForCausalLM.from_pretrained(
            str(self._model_path), dtype=getattr(torch, self._dtype)
        ).to(self._device)  # type: ignore[arg-type]
        self.model.eval()
        self._peft = None
        self._caches.clear()


def _cache_argument(model: Any) -> str:
    """The name forward() and generate() take a KV cache by: `cache` from transformers 5.24,
    `past_key_values` before (the releases vLLM pins). The wrong name is no error: forward()
    swallows it and the prefix cache stays empty; 5.24+ only warns on the old one."""
    return "cache" if "cache" in inspect.signature(model.forward).parameters else "past_key_values"


def _linear_layers(model: Any) -> dict[str, tuple[int, int]]:
    """Plain Linear layers by module name (a LoRA-wrapped layer is not one)."""
    return {
        name: (module.in_features, module.out_features)
        for name, module in model.named_modules()
        if type(module) is torch.nn.Linear
    }


def _eos_ids(model: Any, tokenizer: Any) -> list[int]:
    ids = model.generation_config.eos_token_id
    if ids is None:
        ids = tokenizer.eos_token_id
    if ids is None:
        return []
    return list(ids) if isinstance(ids, list | tuple) else [int(ids)]


def _visible(text: str, stops: tuple[str, ...], final: bool) -> str:
    """Text up to the first stop string; mid-stream, hold back what may start one."""
    if not stops:
        return text
    cuts = [at for at in (text.find(stop) for stop in stops) if at >= 0]
    if cuts:
        return text[: min(cuts)]
    if final:
        return text
    return text[: max(0, len(text) - max(len(stop) for stop in stops) + 1)]


def _context_error(prompt: int, max_tokens: int, limit: int) -> Exception:

    return BadRequestError(
        f"prompt ({prompt} tokens) plus max_tokens ({max_tokens}) exceeds the model's "
        f"context of {limit} tokens"
    )
