"""Activation memory benchmark: time to first token with a memory prefix, cached or not.

The prefix is a system prompt holding about `--prefix-tokens` tokens of memories; each
question is asked twice with greedy decoding, once computing the whole prompt and once
reusing the prefix's KV cache. Answers must be equal token for token; the figure is the
ratio of median times to first token.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

from memos_ray.bench.common import machine, write_report
from memos_ray.models import smollm2
from memos_ray.models.chat import ChatRequest, Message, SamplingParams

QUESTIONS = (
    "Which city did Ana move to?",
    "What instrument does Ines play?",
    "When is the dentist appointment?",
    "What is the name of the grey cat?",
    "Which language course did Tomas start?",
)


def memory_lines(count: int) -> list[str]:
    """Deterministic, varied memories (names, places, dates) like a real cube's."""
    names = ("Ana", "Ines", "Tomas", "Mira", "Jonas", "Leila", "Oskar", "Priya")
    places = ("Porto", "Lyon", "Graz", "Malmo", "Bergen", "Cadiz", "Turin", "Ghent")
    things = ("violin", "kayak", "sourdough", "chess", "pottery", "cello", "climbing", "Italian")
    lines = []
    for i in range(count):
        who, where, what = names[i % 8], places[(i * 3) % 8], things[(i * 5) % 8]
        day = 1 + (i * 7) % 28
        lines.append(
            f"- [2026-{1 + i % 12:02d}-{day:02d}] {who} talked about {what} in {where}; "
            f"note {i}: the grey cat is called Miso, the dentist is on Friday at {8 + i % 9}:30."
        )
    return lines


def cmd_activation(args: argparse.Namespace) -> int:
    # deferred: imports torch
    import torch

    # deferred: imports torch and transformers
    from memos_ray.models.hf_chat import TransformersChatModel

    models_dir = Path(args.models_dir).expanduser()
    kv_dir = Path(tempfile.mkdtemp(prefix="memos-kv-"))
    print(f"loading SmolLM2 (converted once into {models_dir}) ...", flush=True)
    path = smollm2.hf_dir(models_dir)
    model = TransformersChatModel(
        path,
        served_name=smollm2.MODEL_NAME,
        device=args.device,
        dtype=args.dtype,
        threads=args.threads,
        kv_cache_dir=kv_dir,
    )
    header = "You are a helpful assistant. What you remember about the user:\n"
    lines: list[str] = []
    candidates = memory_lines(400)
    while model.count_tokens([Message(role="system", content=header + "\n".join(lines))]) < (
        args.prefix_tokens
    ):
        lines.append(candidates[len(lines)])
    system = Message(role="system", content=header + "\n".join(lines))
    greedy = SamplingParams(max_tokens=args.max_tokens, temperature=0)

    def request(question: str, cached: bool) -> ChatRequest:
        return ChatRequest(
            messages=(system, Message(role="user", content=question)),
            params=greedy,
            prefix_messages=1 if cached else 0,
        )

    warm = model.warm_prefix(request(QUESTIONS[0], True))
    print(f"prefix of {warm.tokens} tokens computed in {warm.seconds:.2f} s", flush=True)
    model.generate(request("warm up", False))  # first-call overheads out of the timings
    rows: list[dict[str, Any]] = []
    for round_ in range(args.rounds):
        for question in QUESTIONS:
            plain = model.generate(request(question, False))
            cached = model.generate(request(question, True))
            rows.append(
                {
                    "round": round_,
                    "question": question,
                    "ttft_text_s": plain.ttft_s,
                    "ttft_cached_s": cached.ttft_s,
                    "equal": plain.text == cached.text,
                    "cached_tokens": cached.usage.cached_tokens,
                }
            )
            print(
                f"  {question!r}: text {plain.ttft_s:.3f} s, cached {cached.ttft_s:.3f} s, "
                f"equal={plain.text == cached.text}",
                flush=True,
            )
    started = time.perf_counter()
    reloaded = TransformersChatModel(
        path, served_name="reload", device=args.device, dtype=args.dtype, kv_cache_dir=kv_dir
    )
    load_s = time.perf_counter() - started
    from_disk = reloaded.warm_prefix(request(QUESTIONS[0], True))
    text_ttft = statistics.median(r["ttft_text_s"] for r in rows)
    cached_ttft = statistics.median(r["ttft_cached_s"] for r in rows)
    figures = {
        "bench": "activation",
        "machine": machine(),
        "device": args.device,
        "torch_threads": torch.get_num_threads(),
        "model": smollm2.MODEL_NAME,
        "prefix_tokens": warm.tokens,
        "prefix_compute_s": round(warm.seconds, 3),
        "questions": len(rows),
        "ttft_text_median_s": round(text_ttft, 4),
        "ttft_cached_median_s": round(cached_ttft, 4),
        "ttft_ratio": round(text_ttft / cached_ttft, 2),
        "all_equal": all(r["equal"] for r in rows),
        "reload": {
            "model_load_s": round(load_s, 2),
            "prefix_from_disk_s": round(from_disk.seconds, 3),
            "recomputed": from_disk.computed,
        },
        "rows": rows,
    }
    write_report(figures, Path(args.out))
    return 0 if figures["all_equal"] else 1


def add_activation_parser(kinds: Any) -> None:
    p = kinds.add_parser(
        "activation", help="time to first token with a cached memory prefix vs the text"
    )
    p.add_argument("--prefix-tokens", type=int, default=2000)
    p.add_argument("--max-tokens", type=int, default=16, help="greedy tokens per answer")
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--models-dir", default="~/.memos-ray/models")
    p.add_argument("--device", default="cpu")
    p.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"])
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--out", default="bench-results/activation.json")
    p.set_defaults(func=cmd_activation)
