"""The embedder alone: memories per second on a device, the ceiling bulk ingest is held to.

Imports nothing but the embedder, so it runs on a bare GPU box (torch + sentence-transformers)
to size a cluster: `python -m memos_ray.bench.embedder --device cuda --texts FILE`.
Texts are what ingest embeds (one `speaker: content` turn per line), from a file or a
LoCoMo / LongMemEval dataset.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path
from typing import Any

from pydantic import BaseModel, Field

from memos_ray.models.embedder import SentenceTransformerEmbedder
from memos_ray.services.ingest.datasets import locomo_cubes, longmemeval_cubes


class EmbedderBenchArgs(BaseModel):
    model: str | None = None
    device: str = "cpu"
    dtype: str = Field(default="float32", pattern="^(float32|float16|bfloat16)$")
    batch_sizes: list[int] = Field(default_factory=lambda: [64, 256])
    # Also produce the per-token vectors ingest stores (late interaction): costs a device copy.
    tokens: bool = True
    limit: int = Field(default=20_000, ge=1)
    seconds: float = Field(default=20.0, gt=0)


def load_texts(path: Path, fmt: str) -> list[str]:
    if fmt == "lines":
        return [line for line in path.read_text().splitlines() if line.strip()]

    cubes = locomo_cubes(path) if fmt == "locomo" else longmemeval_cubes(path)
    return [
        f"{turn.speaker or turn.role}: {turn.content}"
        for cube in cubes
        for session in cube.sessions
        for turn in session.turns
        if turn.content.strip()
    ]


def measure(texts: list[str], args: EmbedderBenchArgs) -> dict[str, Any]:
    """Throughput per batch size: repeated passes over the texts for about `seconds` each."""
    # deferred: imports torch
    import torch

    texts = texts[: args.limit]
    rows: dict[str, Any] = {}
    for batch in args.batch_sizes:
        embedder = SentenceTransformerEmbedder(args.model, device=args.device, batch_size=batch)
        model = embedder._load()
        if args.dtype != "float32":
            model.to(getattr(torch, args.dtype))
        run = embedder.encode if args.tokens else embedder.embed
        run(texts[: batch * 2])  # warm-up: kernels, allocator
        # Chunks of a few batches, so that a slow device still stops near `seconds`.
        chunk = batch * 8
        done, started = 0, time.perf_counter()
        while time.perf_counter() - started < args.seconds:
            start = done % len(texts)
            part = texts[start : start + chunk]
            run(part)
            done += len(part)
        if args.device.startswith("cuda"):
            torch.cuda.synchronize()
        elapsed = time.perf_counter() - started
        rows[str(batch)] = {
            "texts": done,
            "seconds": round(elapsed, 2),
            "per_s": round(done / elapsed, 1),
        }
        print(f"batch {batch}: {done / elapsed:,.0f} texts/s", file=sys.stderr, flush=True)
        del embedder, model
    best = max(rows.values(), key=lambda r: r["per_s"])
    return {
        "bench": "embedder",
        "device": _device_name(args.device),
        "dtype": args.dtype,
        "tokens": args.tokens,
        "texts": len(texts),
        "mean_chars": round(sum(map(len, texts)) / max(1, len(texts)), 1),
        "by_batch": rows,
        "best_per_s": best["per_s"],
        "machine": platform.node(),
    }


def _device_name(device: str) -> str:
    if device.startswith("cuda"):
        # deferred: imports torch
        import torch

        return torch.cuda.get_device_name(0)
    return f"cpu x{__import__('os').cpu_count()}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--texts", type=Path, required=True)
    parser.add_argument("--format", choices=["lines", "locomo", "longmemeval"], default="lines")
    parser.add_argument("--model", help="sentence-transformers model path (default MiniLM)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", default="float32")
    parser.add_argument("--batch-sizes", default="64,256")
    parser.add_argument("--no-tokens", action="store_true", help="dense vectors only")
    parser.add_argument("--limit", type=int, default=20_000)
    parser.add_argument("--seconds", type=float, default=20.0)
    parser.add_argument("--out", type=Path, help="also write the figures JSON here")
    ns = parser.parse_args(argv)
    args = EmbedderBenchArgs(
        model=ns.model,
        device=ns.device,
        dtype=ns.dtype,
        batch_sizes=[int(b) for b in ns.batch_sizes.split(",")],
        tokens=not ns.no_tokens,
        limit=ns.limit,
        seconds=ns.seconds,
    )
    figures = measure(load_texts(ns.texts, ns.format), args)
    line = json.dumps(figures)
    if ns.out:
        ns.out.write_text(line + "\n")
    print(line)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
