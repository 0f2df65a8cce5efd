"""Natural batching for an in-process embedder: calls that arrive while the model is busy
are embedded together, so one caller pays no wait and many callers share a forward pass."""

from __future__ import annotations

import queue
import threading
from collections.abc import Sequence
from concurrent.futures import Future

import numpy as np

from memos_ray.models.embedder import Embedder, Encoded


class BatchingEmbedder(Embedder):
    def __init__(self, inner: Embedder, max_batch: int = 32, threads: int | None = None) -> None:
        self._inner = inner
        self._threads = threads
        self._max_batch = max_batch
        self._queue: queue.Queue[tuple[list[str], Future[Encoded]]] = queue.Queue()
        self._worker: threading.Thread | None = None
        self._lock = threading.Lock()

    @property
    def dim(self) -> int:
        return self._inner.dim

    def embed(self, texts: Sequence[str]) -> np.ndarray:
        return self.encode(texts).dense

    def encode(self, texts: Sequence[str]) -> Encoded:
        if not texts:
            return Encoded(np.zeros((0, self.dim), dtype=np.float32), [])
        self._ensure_worker()
        future: Future[Encoded] = Future()
        self._queue.put((list(texts), future))
        return future.result()

    def _ensure_worker(self) -> None:
        with self._lock:
            if self._worker is None or not self._worker.is_alive():
                self._worker = threading.Thread(
                    target=self._run, name="memos-embed-batcher", daemon=True
                )
                self._worker.start()

    def _run(self) -> None:
        if self._threads:
            # OpenMP's thread count is per calling thread: set it where the model runs.
            # deferred: imports torch
            import torch

            torch.set_num_threads(self._threads)
        while True:
            batch = [self._queue.get()]
            size = len(batch[0][0])
            while size < self._max_batch:
                try:
                    item = self._queue.get_nowait()
                except queue.Empty:
                    break
                batch.append(item)
                size += len(item[0])
            texts = [t for request, _ in batch for t in request]
            try:
                encoded = self._inner.encode(texts)
            except BaseException as exc:
                for _, future in batch:
                    future.set_exception(exc)
                continue
            start = 0
            for request, future in batch:
                end = start + len(request)
                tokens = encoded.tokens[start:end] if encoded.tokens is not None else None
                future.set_result(Encoded(encoded.dense[start:end], tokens))
                start = end
