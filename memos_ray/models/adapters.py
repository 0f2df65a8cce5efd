"""Parametric memory: per-cube LoRA adapters kept as files under the data dir.

Each upload is a new immutable version folder (PEFT layout) and a `current.json` pointer is
swapped atomically, so a replica that is loading the old version never reads a torn file,
and an engine can cache adapters by their versioned name.

An adapter is loaded into the model every tenant shares, so an upload is checked whole
before it is accepted (400 otherwise): its config against a strict model (LoRA, a bounded
rank, plain target module names that exist in the served base model), and its weights'
safetensors header against what that config and the base model imply, tensor by tensor.
What is stored is the normalised config, so the loader reads exactly what was checked.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import re
import shutil
import struct
import tempfile
import time
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, StrictFloat, StrictInt, ValidationError

from memos_ray.config import TransformersLLMConfig, VLLMConfig
from memos_ray.errors import BadRequestError, PayloadTooLargeError
from memos_ray.models import smollm2
from memos_ray.models.chat import Adapter

if TYPE_CHECKING:
    from memos_ray.config import MemosConfig

CONFIG_FILE = "adapter_config.json"
WEIGHTS_FILE = "adapter_model.safetensors"
MAX_RANK = 64
MAX_ADAPTER_BYTES = 32 << 20
MAX_TARGET_MODULES = 64
# PEFT's key of a LoRA tensor: base_model.model.<module>.lora_A.weight (adapter name dropped).
_TENSOR_KEY = re.compile(
    r"base_model\.model\.(?P<module>[A-Za-z0-9_.]+)\.lora_(?P<ab>[AB])\.weight"
)
_MODULE_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z0-9_]+)*")
_FLOAT_DTYPES = {"F16": 2, "BF16": 2, "F32": 4, "F64": 8}
# Keys PEFT writes into adapter_config.json that only describe, never change, what is loaded
# (or only matter with a switch that must stay off: qalora_group_size needs use_qalora).
_INFORMATIONAL = {
    "qalora_group_size",
    "runtime_config",
    "base_model_name_or_path",
    "revision",
    "inference_mode",
    "init_lora_weights",
    "auto_mapping",
    "megatron_core",
    "peft_version",
}

# Linear layers of a base model: module name -> (in_features, out_features).
BaseModules = Mapping[str, tuple[int, int]]


class LoraAdapterConfig(BaseModel):
    """The part of PEFT's LoraConfig an uploaded adapter may set. Other keys PEFT writes
    must hold their neutral value (None, false, empty): modules_to_save, rank_pattern,
    use_dora and the like would change what loading does beyond a plain LoRA."""

    model_config = ConfigDict(extra="allow")

    peft_type: Literal["LORA"]
    r: StrictInt = Field(ge=1, le=MAX_RANK)
    lora_alpha: StrictInt | StrictFloat = Field(default=8, gt=0, le=10_000)
    lora_dropout: StrictInt | StrictFloat = Field(default=0.0, ge=0, lt=1)
    target_modules: list[str] = Field(min_length=1, max_length=MAX_TARGET_MODULES)
    bias: Literal["none"] = "none"
    task_type: Literal["CAUSAL_LM"] | None = None

    def normalised(self) -> dict[str, Any]:
        """What is stored and loaded: only checked fields; weights come from the file."""
        return {
            "peft_type": "LORA",
            "r": self.r,
            "lora_alpha": self.lora_alpha,
            "lora_dropout": float(self.lora_dropout),
            "target_modules": sorted(set(self.target_modules)),
            "bias": "none",
            "task_type": self.task_type,
            "inference_mode": True,
            # Never false: PEFT would leave the layers' weights uninitialised before loading.
            "init_lora_weights": True,
        }


def parse_adapter_config(raw: Mapping[str, Any]) -> LoraAdapterConfig:
    """The checked config, or a BadRequestError that says what is wrong with it."""
    data = dict(raw)
    if isinstance(data.get("peft_type"), str):
        data["peft_type"] = data["peft_type"].upper()
    if isinstance(data.get("target_modules"), str):
        # PEFT reads a string as a regular expression over module names: only a plain name.
        data["target_modules"] = [data["target_modules"]]
    try:
        config = LoraAdapterConfig.model_validate(data)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"])
        raise BadRequestError(f"adapter_config.{where}: {first['msg']}") from None
    for name in config.target_modules:
        if not _MODULE_NAME.fullmatch(name):
            raise BadRequestError(
                f"adapter_config.target_modules: {name[:80]!r} is not a module name "
                "(plain names such as 'q_proj'; patterns are not accepted)"
            )
    for key, value in (config.model_extra or {}).items():
        if key not in _INFORMATIONAL and value not in (None, False, {}, [], "", 0):
            raise BadRequestError(
                f"adapter_config.{key} is not supported (only plain LoRA adapters are)"
            )
    return config


def base_modules_of(model_dir: Path) -> dict[str, tuple[int, int]]:
    """The Linear layers of a Hugging Face model folder, read from its safetensors headers
    (no weights loaded): 2-D `.weight` tensors other than embeddings."""
    modules: dict[str, tuple[int, int]] = {}
    for file in sorted(model_dir.glob("*.safetensors")):
        with open(file, "rb") as f:
            (length,) = struct.unpack("<Q", f.read(8))
            header = json.loads(f.read(length))
        for key, meta in header.items():
            if key == "__metadata__" or not key.endswith(".weight"):
                continue
            module = key[: -len(".weight")]
            shape = meta.get("shape") or []
            if len(shape) == 2 and "embed" not in module.rsplit(".", 1)[-1]:
                modules[module] = (int(shape[1]), int(shape[0]))
    return modules


class AdapterStore:
    """`base_model_dir`: the served model's folder, whose Linear layers an adapter's targets
    and tensor shapes must match (None, e.g. a remote engine's model: structure only)."""

    def __init__(
        self,
        root: Path,
        base_model_dir: Path | None = None,
        *,
        max_bytes: int = MAX_ADAPTER_BYTES,
        max_rank: int = MAX_RANK,
    ) -> None:
        self.root = root
        self._base_model_dir = base_model_dir
        self._base: dict[str, tuple[int, int]] | None = None
        self.max_bytes = max_bytes
        self.max_rank = max_rank

    @classmethod
    def for_config(cls, config: MemosConfig) -> AdapterStore:
        """The store of the served model: its folder (when local) and the upload limits."""

        llm = config.llm
        base: Path | None = None
        max_rank = config.limits.max_adapter_rank
        if isinstance(llm, TransformersLLMConfig):
            if llm.model:
                base = Path(llm.model).expanduser()
            else:
                base = smollm2.hf_dir_path(config.data_path(llm.models_dir))
        elif isinstance(llm, VLLMConfig):
            max_rank = min(max_rank, llm.max_lora_rank)
            if Path(llm.model).expanduser().is_dir():
                base = Path(llm.model).expanduser()
        return cls(
            config.data_path("adapters"),
            base,
            max_bytes=config.limits.max_adapter_bytes,
            max_rank=max_rank,
        )

    def base_modules(self) -> BaseModules | None:
        folder = self._base_model_dir
        if self._base is None and folder is not None and any(folder.glob("*.safetensors")):
            self._base = base_modules_of(folder)
        return self._base

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
        if len(weights) > self.max_bytes:
            raise PayloadTooLargeError(
                f"adapter weights are {len(weights)} bytes; the limit is {self.max_bytes}"
            )
        checked = parse_adapter_config(config)
        if checked.r > self.max_rank:
            raise BadRequestError(
                f"adapter_config.r is {checked.r}; the served model takes ranks up to "
                f"{self.max_rank}"
            )
        check_weights(weights, checked, self.base_modules())
        config = checked.normalised()
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


def _header(weights: bytes) -> dict[str, Any]:
    """A safetensors header: 8-byte little-endian length, then JSON."""
    if len(weights) < 8:
        raise BadRequestError("adapter weights are not a safetensors file (too short)")
    (length,) = struct.unpack("<Q", weights[:8])
    if length > min(len(weights) - 8, 1 << 24):
        raise BadRequestError("adapter weights are not a safetensors file (bad header length)")
    try:
        header = json.loads(weights[8 : 8 + length])
    except (UnicodeDecodeError, ValueError):
        raise BadRequestError("adapter weights are not a safetensors file (bad header)") from None
    if not isinstance(header, dict):
        raise BadRequestError("adapter weights are not a safetensors file (bad header)")
    return header


def check_weights(
    weights: bytes, config: LoraAdapterConfig, base: BaseModules | None
) -> dict[str, tuple[int, int]]:
    """Every tensor named and shaped as `config` and the base model imply, and each target
    module with both its A and B: returns module -> (in, out) as the adapter says."""
    if base is not None:
        _check_targets(config, base)
    header = _header(weights)
    body = len(weights) - 8 - struct.unpack("<Q", weights[:8])[0]
    shapes: dict[str, dict[str, list[int]]] = {}
    for key, meta in header.items():
        if key == "__metadata__":
            continue
        match = _TENSOR_KEY.fullmatch(key)
        if match is None:
            raise BadRequestError(f"adapter weights: unexpected tensor {key[:120]!r}")
        if not isinstance(meta, dict) or meta.get("dtype") not in _FLOAT_DTYPES:
            raise BadRequestError(f"adapter weights: {key} is not a float tensor")
        shape, offsets = meta.get("shape"), meta.get("data_offsets")
        if not (isinstance(shape, list) and len(shape) == 2 and all(_dim(n) for n in shape)):
            raise BadRequestError(f"adapter weights: {key} is not a 2-D tensor")
        size = _FLOAT_DTYPES[meta["dtype"]] * shape[0] * shape[1]
        if not (
            isinstance(offsets, list)
            and len(offsets) == 2
            and all(_dim(o, zero=True) for o in offsets)
            and offsets[1] - offsets[0] == size
            and offsets[1] <= body
        ):
            raise BadRequestError(f"adapter weights: {key}'s data does not match its shape")
        module = match["module"]
        if not any(module == t or module.endswith("." + t) for t in config.target_modules):
            raise BadRequestError(
                f"adapter weights: {module} is not one of target_modules {config.target_modules}"
            )
        shapes.setdefault(module, {})[match["ab"]] = shape
    if not shapes:
        raise BadRequestError("adapter weights hold no LoRA tensors (lora_A / lora_B)")
    found: dict[str, tuple[int, int]] = {}
    for module, pair in shapes.items():
        if set(pair) != {"A", "B"}:
            raise BadRequestError(f"adapter weights: {module} lacks its lora_A or lora_B")
        (rank_a, fan_in), (fan_out, rank_b) = pair["A"], pair["B"]
        if rank_a != config.r or rank_b != config.r:
            raise BadRequestError(
                f"adapter weights: {module} has rank {rank_a}/{rank_b}; the config says r="
                f"{config.r}"
            )
        found[module] = (fan_in, fan_out)
    if base is not None:
        _check_against_base(found, config, base)
    return found


def _check_targets(config: LoraAdapterConfig, base: BaseModules) -> None:
    for target in config.target_modules:
        if not any(m == target or m.endswith("." + target) for m in base):
            raise BadRequestError(
                f"adapter_config.target_modules: the served model has no module {target!r}"
            )


def _check_against_base(
    found: Mapping[str, tuple[int, int]], config: LoraAdapterConfig, base: BaseModules
) -> None:
    for module, (fan_in, fan_out) in found.items():
        if module not in base:
            raise BadRequestError(f"adapter weights: the served model has no module {module}")
        if base[module] != (fan_in, fan_out):
            raise BadRequestError(
                f"adapter weights: {module} is {fan_in}->{fan_out}; the served model's is "
                f"{base[module][0]}->{base[module][1]}"
            )
    expected = {
        m for m in base if any(m == t or m.endswith("." + t) for t in config.target_modules)
    }
    missing = sorted(expected - set(found))
    if missing:
        raise BadRequestError(
            f"adapter weights: no tensors for {len(missing)} targeted modules, e.g. {missing[0]}"
        )


def _dim(value: object, zero: bool = False) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= (0 if zero else 1)


def _write_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)
