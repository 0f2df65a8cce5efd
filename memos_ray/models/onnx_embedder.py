"""MiniLM-style sentence-transformers models on ONNX Runtime.

PyTorch spends most of a short query's time in per-op dispatch: one MiniLM query costs
about 7 ms of CPU there and 2.6 ms on ONNX Runtime, and a batch of 64 documents runs about
1.8 times faster. The model is exported once from the same weights (PyTorch's dynamo
exporter, exact to ~1e-6) into a cache folder shared by every process of the machine, so
vectors match the PyTorch backend's and stored memories need no re-embedding.

Only Transformer -> Pooling (mean or CLS) -> Normalize pipelines are exported; anything else
(a Dense projection head, max pooling) raises `OnnxUnsupported` and the caller keeps PyTorch.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import logging
import os
import shutil
import tempfile
import threading
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any, Literal

import numpy as np

from memos_ray.errors import MemosError
from memos_ray.models.embedder import Embedder, Encoded, _attended, default_model_path

log = logging.getLogger(__name__)

Quantize = Literal["none", "int8"]
# Bump when the export recipe changes: old cache entries are then ignored.
EXPORT_VERSION = 1
ONNX_FILE = "model.onnx"
TRANSFORMER = "sentence_transformers.models.Transformer"
POOLING = "sentence_transformers.models.Pooling"
NORMALIZE = "sentence_transformers.models.Normalize"


class OnnxUnsupported(MemosError):
    """This model or machine cannot run on ONNX Runtime here (the caller falls back)."""


def default_cache_dir() -> Path:
    """Exports outlive a data dir: every service and test on the machine shares them."""
    configured = os.environ.get("MEMOS_RAY_CACHE")
    if configured:
        return Path(configured) / "onnx"
    base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return base / "memos-ray" / "onnx"


def _pooling(model_dir: Path) -> Literal["mean", "cls"]:
    modules_file = model_dir / "modules.json"
    if not modules_file.exists():
        raise OnnxUnsupported(f"{model_dir}: no modules.json (not a sentence-transformers model)")
    modules = json.loads(modules_file.read_text())
    kinds = [m.get("type") for m in modules]
    if kinds not in ([TRANSFORMER, POOLING, NORMALIZE], [TRANSFORMER, POOLING]):
        raise OnnxUnsupported(f"{model_dir}: modules {kinds} are not Transformer-Pooling")
    pooling_dir = model_dir / next(m["path"] for m in modules if m.get("type") == POOLING)
    config = json.loads((pooling_dir / "config.json").read_text())
    modes = [k for k, v in config.items() if k.startswith("pooling_mode") and v]
    if modes == ["pooling_mode_mean_tokens"]:
        return "mean"
    if modes == ["pooling_mode_cls_token"]:
        return "cls"
    raise OnnxUnsupported(f"{model_dir}: pooling {modes} is not exported")


def _cache_key(model_dir: Path, quantize: Quantize) -> str:
    import onnxruntime
    import torch

    weights = sorted(
        (p.name, p.stat().st_size, int(p.stat().st_mtime))
        for p in model_dir.iterdir()
        if p.suffix in (".safetensors", ".bin", ".json", ".txt")
    )
    spec = [str(model_dir.resolve()), weights, quantize, EXPORT_VERSION]
    spec += [torch.__version__, onnxruntime.__version__]
    return hashlib.sha256(json.dumps(spec).encode()).hexdigest()[:20]


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[None]:
    """One exporter per cache entry across processes; the others wait and reuse it."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def export_model(model_dir: Path, quantize: Quantize, cache_dir: Path | None = None) -> Path:
    """The ONNX file for this model, exported on first use (a few seconds) and cached."""
    cache = cache_dir or default_cache_dir()
    target = cache / _cache_key(model_dir, quantize)
    if (target / ONNX_FILE).exists():
        return target / ONNX_FILE
    with _locked(cache / f"{target.name}.lock"):
        if (target / ONNX_FILE).exists():
            return target / ONNX_FILE
        staging = Path(tempfile.mkdtemp(prefix=f"{target.name}.", dir=cache))
        try:
            _export(model_dir, staging / "fp32" / ONNX_FILE)
            if quantize == "int8":
                from onnxruntime.quantization import QuantType, quantize_dynamic

                (staging / "out").mkdir()
                quantize_dynamic(
                    staging / "fp32" / ONNX_FILE,
                    staging / "out" / ONNX_FILE,
                    weight_type=QuantType.QInt8,
                    per_channel=True,
                )
            else:
                (staging / "fp32").rename(staging / "out")
            os.replace(staging / "out", target)
        finally:
            shutil.rmtree(staging, ignore_errors=True)
    log.info("exported %s to ONNX (%s) in %s", model_dir.name, quantize, target)
    return target / ONNX_FILE


def _export(model_dir: Path, path: Path) -> None:
    # deferred: torch and transformers are only needed to export, once per machine
    import torch
    from transformers import AutoModel

    class LastHidden(torch.nn.Module):
        def __init__(self, model: Any) -> None:
            super().__init__()
            self.model = model

        def forward(self, input_ids: Any, attention_mask: Any, token_type_ids: Any) -> Any:
            out = self.model(
                input_ids=input_ids, attention_mask=attention_mask, token_type_ids=token_type_ids
            )
            return out.last_hidden_state

    model = AutoModel.from_pretrained(model_dir, attn_implementation="eager").eval()
    # A padded row in the sample: traced with an all-ones mask, the model's "no padding"
    # shortcut would be baked in and padded batches would come out wrong.
    ids = torch.tensor([[101, 2023, 2003, 1037, 7099, 6251, 1012, 102]] * 2, dtype=torch.int64)
    mask = torch.ones_like(ids)
    mask[1, 5:] = 0
    batch, length = torch.export.Dim("batch"), torch.export.Dim("length")
    shapes = {name: {0: batch, 1: length} for name in INPUTS}
    path.parent.mkdir(parents=True)
    with torch.inference_mode():
        torch.onnx.export(
            LastHidden(model),
            (ids, mask, torch.zeros_like(ids)),
            str(path),
            input_names=list(INPUTS),
            output_names=["last_hidden_state"],
            dynamic_shapes=shapes,
            opset_version=18,
            dynamo=True,
            external_data=False,
        )


INPUTS = ("input_ids", "attention_mask", "token_type_ids")


class OnnxEmbedder(Embedder):
    """The Embedder interface on ONNX Runtime; same vectors as `SentenceTransformerEmbedder`
    (fp32), or int8 weights when asked (faster, vectors drift: measure retrieval first)."""

    def __init__(
        self,
        model: str | None = None,
        batch_size: int = 64,
        threads: int | None = None,
        quantize: Quantize = "none",
        cache_dir: Path | None = None,
    ) -> None:
        self._dir = Path(model or default_model_path())
        self._batch_size = batch_size
        # Threads of the full session; a one-thread session is only worth having past one.
        self._threads = threads or os.cpu_count() or 1
        self._quantize = quantize
        self._cache_dir = cache_dir
        self._lock = threading.Lock()
        self._session: Any = None
        self._tokenizer: Any = None
        # Batches that run while another one does (concurrent bulk adds in an embedder
        # replica) take a one-thread session: on a busy machine, runs side by side each on
        # one thread out-ran runs that split every operator over the cores (bulk add
        # through the API +6-8% with 3 requests in flight on 2 cores). A batch alone still
        # gets every thread. The cost: a second copy of the weights, once crowded.
        self._solo: Any = None
        self._path: Path | None = None
        self._running = 0
        self._running_lock = threading.Lock()
        # At most as many runs at once as the full session has threads: a third overlapping
        # batch waits for a slot rather than add threads to cores already taken. Through the API
        # (`bench ingest`, 3 requests in flight, 2 cores), 164-201 memories/s (median 196)
        # against 160-183 (median 166) with every overlapping batch running.
        self._slots = threading.BoundedSemaphore(self._threads)
        self._pooling = _pooling(self._dir)
        self._dim = int(json.loads((self._dir / "config.json").read_text())["hidden_size"])

    def load(self) -> OnnxEmbedder:
        """Export (first time on this machine) and open the session; idempotent."""
        with self._lock:
            if self._session is None:
                try:
                    import onnxruntime  # noqa: F401  (checked here: missing, it is OnnxUnsupported)
                    from tokenizers import Tokenizer
                except ImportError as exc:
                    raise OnnxUnsupported(f"ONNX Runtime is not installed: {exc}") from exc
                tokenizer_file = self._dir / "tokenizer.json"
                if not tokenizer_file.exists():
                    raise OnnxUnsupported(f"{self._dir}: no tokenizer.json")
                self._path = export_model(self._dir, self._quantize, self._cache_dir)
                tokenizer = Tokenizer.from_file(str(tokenizer_file))
                tokenizer.enable_truncation(self._max_length())
                tokenizer.enable_padding()
                self._tokenizer = tokenizer
                self._session = self._open(self._threads)
        return self

    def _open(self, threads: int) -> Any:
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        # Idle ORT threads sleep instead of spinning against the other processes.
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        return ort.InferenceSession(str(self._path), options, providers=["CPUExecutionProvider"])

    def _session_for(self, crowded: bool) -> Any:
        """The full session, or the one-thread one when another batch is running."""
        if not crowded or self._threads == 1:
            return self._session
        with self._lock:
            if self._solo is None:
                self._solo = self._open(1)
        return self._solo

    def _run(self, feed: dict[str, np.ndarray]) -> np.ndarray:
        with self._slots:
            with self._running_lock:
                self._running += 1
                crowded = self._running > 1
            try:
                (hidden,) = self._session_for(crowded).run(None, feed)
            finally:
                with self._running_lock:
                    self._running -= 1
        return np.asarray(hidden)

    def _max_length(self) -> int:
        config = self._dir / "sentence_bert_config.json"
        if config.exists():
            return int(json.loads(config.read_text()).get("max_seq_length") or 512)
        return 512

    @property
    def dim(self) -> int:
        return self._dim

    def embed(self, texts: Sequence[str]) -> np.ndarray:
        return self.encode(texts, with_tokens=False).dense

    def encode(self, texts: Sequence[str], with_tokens: bool = True) -> Encoded:
        self.load()
        if not texts:
            return Encoded(np.zeros((0, self._dim), dtype=np.float32), [])
        order = sorted(range(len(texts)), key=lambda i: -len(texts[i]))
        dense = np.zeros((len(texts), self._dim), dtype=np.float32)
        tokens: list[np.ndarray] = [np.zeros((0, self._dim), dtype=np.float16)] * len(texts)
        for start in range(0, len(order), self._batch_size):
            idx = order[start : start + self._batch_size]
            batch = self._tokenizer.encode_batch([texts[i] for i in idx])
            ids = np.array([e.ids for e in batch], dtype=np.int64)
            mask = np.array([e.attention_mask for e in batch], dtype=np.int64)
            types = np.array([e.type_ids for e in batch], dtype=np.int64)
            hidden = self._run({"input_ids": ids, "attention_mask": mask, "token_type_ids": types})
            if self._pooling == "mean":
                weights = mask[:, :, None].astype(np.float32)
                pooled = (hidden * weights).sum(axis=1) / np.maximum(weights.sum(axis=1), 1e-9)
            else:
                pooled = hidden[:, 0]
            dense[idx] = _unit(pooled)
            if with_tokens:
                rows = _unit(hidden).astype(np.float16)
                lengths = mask.sum(axis=1)
                for j, i in enumerate(idx):
                    tokens[i] = _attended(rows[j], int(lengths[j]))
        return Encoded(dense, tokens if with_tokens else None)


def _unit(x: np.ndarray) -> np.ndarray:
    norms = np.linalg.norm(x, axis=-1, keepdims=True)
    return (x / np.maximum(norms, 1e-12)).astype(np.float32)
