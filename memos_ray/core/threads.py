"""BLAS threads for a serving process.

A search multiplies a cube's vectors by one query (a 10k x 384 float32 matvec). OpenBLAS
splits that over every core by default, and on a machine whose cores are busy with the other
requests, the embedder and the stores, waking its threads cost more than the work: 4.4 ms
instead of 0.2 ms on one thread, measured on two cores. Concurrent requests are what uses the
cores; each one's linear algebra runs on its own thread.
"""

from __future__ import annotations

import threadpoolctl


def one_blas_thread() -> None:
    """Limit this process's BLAS (numpy's OpenBLAS or MKL) to one thread; models' own thread
    pools (PyTorch, ONNX Runtime) keep their settings."""
    threadpoolctl.threadpool_limits(limits=1, user_api="blas")
