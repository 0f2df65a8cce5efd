"""The ONNX Runtime embedder against the PyTorch one: the same vectors from the same weights.

Runs the real export (PyTorch's dynamo exporter) into a temporary cache, so a change of
torch, transformers or onnxruntime that breaks the export or drifts the vectors fails here.
"""

from __future__ import annotations

import json
import shutil
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from memos_ray.config import EmbedderConfig
from memos_ray.models.embedder import Encoded, SentenceTransformerEmbedder, default_model_path
from memos_ray.models.onnx_embedder import OnnxEmbedder, OnnxUnsupported, export_model
from memos_ray.models.runtimes import load_embedder

TEXTS = [
    "Caroline: I went to the LGBTQ support group yesterday and it was so powerful.",
    "Melanie: That's great! What did you paint last week?",
    "When did Ana go on the hiking trip?",
    "x",
    "",
    # longer than the model's 256-token window: truncated the same way by both runtimes
    "tell me more " * 200,
]


@pytest.fixture(scope="module")
def cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("onnx-cache")


def test_onnx_vectors_match_pytorch(cache: Path) -> None:
    torch_out = SentenceTransformerEmbedder().encode(TEXTS)
    onnx = OnnxEmbedder(cache_dir=cache, batch_size=4)
    onnx_out = onnx.encode(TEXTS)
    assert onnx.dim == 384
    assert onnx_out.dense.shape == (len(TEXTS), 384)
    np.testing.assert_allclose(onnx_out.dense, torch_out.dense, atol=1e-4)
    assert onnx_out.tokens is not None and torch_out.tokens is not None
    for ours, theirs in zip(onnx_out.tokens, torch_out.tokens, strict=True):
        assert ours.dtype == np.float16 and ours.shape == theirs.shape
        np.testing.assert_allclose(ours.astype(np.float32), theirs.astype(np.float32), atol=2e-3)
    # Padding must not leak into a short text's vector: alone or in a batch, the same.
    alone = onnx.embed([TEXTS[3]])
    np.testing.assert_allclose(alone[0], onnx_out.dense[3], atol=1e-5)
    assert onnx.embed([]).shape == (0, 384)


def _all_at_once(onnx: OnnxEmbedder, chunks: list[list[str]]) -> list[Encoded]:
    """Each chunk encoded on a thread of its own, all released together."""
    start = threading.Barrier(len(chunks))

    def together(chunk: list[str]) -> Encoded:
        start.wait()
        return onnx.encode(chunk)

    with ThreadPoolExecutor(max_workers=len(chunks)) as pool:
        return list(pool.map(together, chunks))


def test_concurrent_batches_run_on_one_thread_each_with_the_same_vectors(cache: Path) -> None:
    """Encodes that overlap take the one-thread session; their vectors are the lone ones."""
    onnx = OnnxEmbedder(cache_dir=cache, batch_size=2, threads=2)
    alone = onnx.encode(TEXTS)
    assert onnx._solo is None  # nothing ran beside anything yet
    texts = [f"{t} ({i})" for i in range(8) for t in TEXTS[:3]]
    expected = [onnx.encode([t]).dense[0] for t in texts]
    results = _all_at_once(onnx, [texts[i::4] for i in range(4)])
    assert onnx._solo is not None
    for i, result in enumerate(results):
        np.testing.assert_allclose(result.dense, np.array(expected[i::4]), atol=1e-5)
    np.testing.assert_allclose(onnx.encode(TEXTS).dense, alone.dense, atol=1e-5)


def test_no_more_runs_at_once_than_threads(cache: Path) -> None:
    """Six encodes started together: two runs at a time on two threads, none lost."""
    onnx = OnnxEmbedder(cache_dir=cache, batch_size=1, threads=2).load()
    lock, in_flight, most = threading.Lock(), [0], [0]

    class Counted:
        def __init__(self, inner: Any) -> None:
            self.inner = inner

        def run(self, *args: Any) -> Any:
            with lock:
                in_flight[0] += 1
                most[0] = max(most[0], in_flight[0])
            try:
                time.sleep(0.01)  # long enough for the others to pile up
                return self.inner.run(*args)
            finally:
                with lock:
                    in_flight[0] -= 1

    session_for = onnx._session_for
    onnx._session_for = lambda crowded: Counted(session_for(crowded))  # type: ignore[method-assign]
    texts = [f"{t} ({i})" for i in range(6) for t in TEXTS[:2]]
    results = _all_at_once(onnx, [texts[i::6] for i in range(6)])
    assert most[0] == 2
    assert [len(r.dense) for r in results] == [2] * 6


def test_export_is_cached_and_reused(cache: Path) -> None:
    first = export_model(Path(default_model_path()), "none", cache)
    stamp = first.stat().st_mtime_ns
    again = export_model(Path(default_model_path()), "none", cache)
    assert again == first and again.stat().st_mtime_ns == stamp
    assert not [p for p in cache.iterdir() if p.is_dir() and "." in p.name]  # no staging left


def test_int8_is_close_but_not_equal(cache: Path) -> None:
    fp32 = OnnxEmbedder(cache_dir=cache).embed(TEXTS[:3])
    int8 = OnnxEmbedder(cache_dir=cache, quantize="int8").embed(TEXTS[:3])
    cosines = (fp32 * int8).sum(axis=1)
    assert (cosines > 0.95).all() and (cosines < 0.99999).any()


def test_unsupported_model_is_refused_and_loader_falls_back(tmp_path: Path) -> None:
    model = tmp_path / "with-dense"
    shutil.copytree(default_model_path(), model)
    modules = json.loads((model / "modules.json").read_text())
    modules.append(
        {"idx": 3, "name": "3", "path": "3_Dense", "type": "sentence_transformers.models.Dense"}
    )
    (model / "modules.json").write_text(json.dumps(modules))
    with pytest.raises(OnnxUnsupported, match="Transformer-Pooling"):
        OnnxEmbedder(str(model))
    # The configured default falls back to PyTorch for it rather than failing the service.
    (model / "modules.json").write_text(json.dumps(modules[:3]))
    (model / "1_Pooling" / "config.json").write_text(
        json.dumps({"word_embedding_dimension": 384, "pooling_mode_max_tokens": True})
    )
    assert isinstance(load_embedder(str(model)), SentenceTransformerEmbedder)


def test_int8_needs_the_onnx_runtime() -> None:
    with pytest.raises(ValueError, match="quantize"):
        EmbedderConfig(runtime="torch", quantize="int8")
    assert EmbedderConfig().runtime == "onnx" and EmbedderConfig().query_quantize == "int8"
    # int8 queries need ONNX on CPU: elsewhere queries use the documents' model.
    assert EmbedderConfig(runtime="torch").query_quantize is None
    assert EmbedderConfig(device="cuda").query_quantize is None
