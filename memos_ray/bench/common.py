"""What every bench shares: the service it measures, its report and the machine it ran on."""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import socket
import tempfile
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Any

from memos_ray.config import MemosConfig, load_config
from memos_ray.models import smollm2
from memos_ray.runtime import vllm_env
from memos_ray.runtime.launcher import local_service


@contextmanager
def service_url(
    args: argparse.Namespace, extra: dict[str, Any] | None = None
) -> Iterator[tuple[str, MemosConfig | None]]:
    """The given --url, or a fresh local service on the embedded defaults (and its config);
    `extra` overrides parts of the started service's config."""
    if args.url:
        yield args.url, None
        return

    data_dir = (
        Path(args.data_dir) if args.data_dir else Path(tempfile.mkdtemp(prefix="memos-bench-"))
    )
    if data_dir.exists() and any(data_dir.iterdir()):
        raise SystemExit(f"memos-ray bench: data dir {data_dir} is not empty")
    # Retrieval, latency and ingest need no chat model (leave its replica out), except fine
    # mode, which extracts with a remote OpenAI-compatible endpoint.
    llm: dict[str, Any] = {"backend": "none"}
    with ExitStack() as stack:
        if getattr(args, "mode", "fast") == "fine":
            llm = fine_llm(args, data_dir, stack)
        overrides: dict[str, Any] = {
            **(extra or {}),
            "data_dir": str(data_dir),
            "admin_key": None,
            "admin_key_sha256": None,
            "llm": llm,
        }
        if getattr(args, "facts_only", False):
            overrides["fine"] = {"keep_turns": False}
        config = load_config(overrides)
        print(f"starting memos-ray on the embedded defaults in {config.data_dir} ...", flush=True)
        with local_service(config, port=listen_port()) as url:
            print(f"service ready at {url}", flush=True)
            yield url, config


def listen_port(low: int = 20000, high: int = 32767) -> int:
    """A free port below Linux's ephemeral range (32768 up). A client hammering a closed port
    in that range can be handed the same number as its own source port and connect to
    itself, which then holds the port: a restarted replica could not listen on it."""

    rng = random.Random()
    for _ in range(200):
        port = rng.randint(low, high)
        with socket.socket() as sock:
            try:
                sock.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    raise SystemExit(f"memos-ray bench: no free port in {low}..{high}")


def fine_llm(args: argparse.Namespace, data_dir: Path, stack: ExitStack) -> dict[str, Any]:
    """The extraction model: --llm-url, or (--vllm) SmolLM2 on vLLM's CPU build, started here."""
    if args.llm_url:
        return {"backend": "openai", "base_url": args.llm_url, "model": args.llm_model}
    if not args.vllm:
        # The embedded default: SmolLM2 with transformers in the LLM deployment.
        return {"backend": "transformers"}

    model_dir = smollm2.hf_dir(data_dir / "models")
    print("starting vLLM (CPU build) with SmolLM2 for extraction ...", flush=True)
    server = stack.enter_context(vllm_env.VLLMServer(model_dir, data_dir / "vllm.log"))
    print(f"vLLM ready at {server.base_url} in {server.startup_s:.0f} s", flush=True)
    return {
        "backend": "openai",
        "base_url": f"{server.base_url}/v1",
        "model": vllm_env.SERVED_NAME,
        "cache_block_tokens": 128,
    }


def write_report(figures: dict[str, Any], path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(figures, indent=2) + "\n")
    print(json.dumps(figures, indent=2))
    print(f"figures written to {path}", flush=True)


def machine() -> dict[str, Any]:

    return {
        "cpus": os.cpu_count(),
        "platform": platform.platform(),
        "python": platform.python_version(),
    }


def add_service_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--url", help="use a running service instead of starting one")
    p.add_argument("--api-key", default=os.environ.get("MEMOS_API_KEY"), help="for --url")
    p.add_argument("--data-dir", help="data dir of the started service (default: a new temp dir)")
