"""Which runtime embeds: ONNX Runtime where the model allows it, else PyTorch."""

from __future__ import annotations

import logging
from typing import Literal

from memos_ray.config import EmbedderConfig
from memos_ray.models.embedder import Embedder, SentenceTransformerEmbedder

log = logging.getLogger(__name__)


def load_embedder(
    model: str | None = None,
    *,
    device: str = "cpu",
    batch_size: int = 64,
    runtime: Literal["onnx", "torch"] = "onnx",
    quantize: Literal["none", "int8"] = "none",
    threads: int | None = None,
) -> Embedder:
    """The embedder for a runtime, loaded now. ONNX on CPU when the model allows it, else
    sentence-transformers on PyTorch (with a warning when ONNX was asked for)."""
    if runtime == "onnx" and device == "cpu":
        # deferred: onnxruntime loads only for this runtime
        from memos_ray.models.onnx_embedder import OnnxEmbedder

        try:
            return OnnxEmbedder(model, batch_size, threads, quantize).load()
        except Exception as exc:  # an export that fails must not stop the service
            if quantize != "none":
                raise
            log.warning("embedder stays on PyTorch: ONNX Runtime cannot run it (%s)", exc)
    return SentenceTransformerEmbedder(model, device=device, batch_size=batch_size)


def configured_embedder(
    cfg: EmbedderConfig,
    model: str | None,
    *,
    threads: int | None = None,
    for_queries: bool = False,
) -> Embedder:
    """`model` (None: the packaged one) with the configured runtime, device and batch size;
    queries take `query_quantize` where set, everything else `quantize`."""
    quantize = cfg.quantize
    if for_queries and cfg.query_quantize is not None:
        quantize = cfg.query_quantize
    return load_embedder(
        model,
        device=cfg.device,
        batch_size=cfg.batch_size,
        runtime=cfg.runtime,
        quantize=quantize,
        threads=threads or cfg.threads,
    )
