"""Parametric memory: per-cube LoRA adapters kept as files under the data dir.

Each upload is a new immutable version folder (PEFT layout) and a `current.json` pointer is
swapped atomically, so a replica that is loading the old version never reads a torn file,
and an engine can cache adapters by their versioned name.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

from memos_ray.errors import BadRequestError
from memos_ray.models.chat import Adapter

CONFIG_FILE = "adapter_config.json"
WEIGHTS_FILE = "adapter_model.safetensors"


class AdapterStore:
    def __init__(self, root: Path) -> None:
        self.root = root

    def _cube_dir(self, cube_id: str) -> Path:
        # Cube ids are free text: hash them into a safe folder name.
        return self.root / hashlib.sha256(cube_id.encode()).hexdigest()[:24]

    def get(self, cube_id: str) -> Adapter | None:
        pointer = self._cube_dir(cube_id) / "current.json"
        try:
            current = json.loads(pointer.read_text())
        except FileNotFoundError:
            return None
        path = self._cube_dir(cube_id) / current["version"]
        return Adapter(name=current["name"], path=str(path))

    def info(self, cube_id: str) -> dict[str, Any] | None:
        adapter = self.get(cube_id)
        if adapter is None:
            return None
        config = json.loads((Path(adapter.path) / CONFIG_FILE).read_text())
        return {
            "cube_id": cube_id,
            "name": adapter.name,
            "peft_type": config.get("peft_type"),
            "r": config.get("r"),
            "target_modules": config.get("target_modules"),
            "bytes": (Path(adapter.path) / WEIGHTS_FILE).stat().st_size,
        }

    def put(self, cube_id: str, config: dict[str, Any], weights: bytes) -> Adapter:
        _check_config(config)
        _check_weights(weights)
        cube_dir = self._cube_dir(cube_id)
        cube_dir.mkdir(parents=True, exist_ok=True)
        digest = hashlib.sha256(weights).hexdigest()[:12]
        version = f"v{time.time_ns()}-{digest}"
        work = Path(tempfile.mkdtemp(prefix=".upload-", dir=cube_dir))
        try:
            (work / CONFIG_FILE).write_text(json.dumps(config))
            (work / WEIGHTS_FILE).write_bytes(weights)
            os.replace(work, cube_dir / version)
        finally:
            shutil.rmtree(work, ignore_errors=True)
        name = f"cube-{cube_dir.name[:12]}-{digest}"
        _write_atomic(cube_dir / "current.json", json.dumps({"version": version, "name": name}))
        self._prune(cube_dir, keep=version)
        return Adapter(name=name, path=str(cube_dir / version))

    def put_folder(self, cube_id: str, folder: Path) -> Adapter:
        """Register an adapter saved by PEFT's `save_pretrained` (copied in)."""
        try:
            config = json.loads((folder / CONFIG_FILE).read_text())
            weights = (folder / WEIGHTS_FILE).read_bytes()
        except (OSError, ValueError) as exc:
            raise BadRequestError(f"not a PEFT adapter folder: {folder}: {exc}") from exc
        return self.put(cube_id, config, weights)

    def put_base64(self, cube_id: str, config: dict[str, Any], weights_b64: str) -> Adapter:
        try:
            weights = base64.b64decode(weights_b64, validate=True)
        except ValueError as exc:
            raise BadRequestError(f"weights_base64 is not base64: {exc}") from exc
        return self.put(cube_id, config, weights)

    def delete(self, cube_id: str) -> bool:
        cube_dir = self._cube_dir(cube_id)
        pointer = cube_dir / "current.json"
        if not pointer.exists():
            return False
        pointer.unlink()
        self._prune(cube_dir, keep=None)
        return True

    @staticmethod
    def _prune(cube_dir: Path, keep: str | None) -> None:
        """Drop old versions, keeping the one before the current for replicas mid-load."""
        versions = sorted(p for p in cube_dir.iterdir() if p.is_dir() and p.name.startswith("v"))
        keep_set = {keep} if keep else set()
        if keep is not None:
            older = [v.name for v in versions if v.name != keep]
            keep_set.update(older[-1:])
        for version in versions:
            if version.name not in keep_set:
                shutil.rmtree(version, ignore_errors=True)


def _check_config(config: dict[str, Any]) -> None:
    if str(config.get("peft_type", "")).upper() != "LORA":
        raise BadRequestError("adapter_config.peft_type must be LORA")
    if not isinstance(config.get("r"), int) or config["r"] < 1:
        raise BadRequestError("adapter_config.r must be a positive integer (the LoRA rank)")
    if not config.get("target_modules"):
        raise BadRequestError("adapter_config.target_modules is required")


def _check_weights(weights: bytes) -> None:
    """A safetensors file: 8-byte header length, JSON header, tensor bytes."""
    from safetensors import safe_open

    if len(weights) < 8:
        raise BadRequestError("adapter weights are not a safetensors file")
    with tempfile.NamedTemporaryFile(suffix=".safetensors") as tmp:
        tmp.write(weights)
        tmp.flush()
        try:
            with safe_open(tmp.name, framework="pt") as f:
                names = list(f.keys())
        except Exception as exc:
            raise BadRequestError(f"adapter weights are not a safetensors file: {exc}") from exc
    if not any("lora_" in n for n in names):
        raise BadRequestError("adapter weights hold no LoRA tensors (lora_A / lora_B)")


def _write_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)
