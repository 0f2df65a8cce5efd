"""LoRA adapters on the real SmolLM2 (transformers backend): uploads are checked whole, and
an adapter that fails to load leaves the shared model answering exactly as before."""

from __future__ import annotations

import base64
import json
from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors.torch import load as load_tensors
from safetensors.torch import save as save_tensors

from memos_ray.errors import BadRequestError, PayloadTooLargeError
from memos_ray.models.adapters import AdapterStore, base_modules_of
from memos_ray.models.chat import Adapter, ChatRequest, LLMError, Message, SamplingParams
from memos_ray.models.hf_chat import TransformersChatModel, _linear_layers

QUESTION = "Name three colours of the rainbow."


@pytest.fixture(scope="module")
def model(smollm2_dir: Path) -> TransformersChatModel:
    return TransformersChatModel(smollm2_dir, served_name="smol", kv_cache_dir=None)


@pytest.fixture(scope="module")
def lora(smollm2_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """A real PEFT adapter (random, so it changes answers): its config and weights."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    out = tmp_path_factory.mktemp("lora")
    torch.manual_seed(7)
    base = AutoModelForCausalLM.from_pretrained(smollm2_dir, dtype=torch.float32)
    config = LoraConfig(
        r=4, lora_alpha=16, target_modules=["q_proj", "v_proj"], init_lora_weights=False
    )
    get_peft_model(base, config).save_pretrained(out)
    return {
        "config": json.loads((out / "adapter_config.json").read_text()),
        "weights": (out / "adapter_model.safetensors").read_bytes(),
    }


def greedy(model: TransformersChatModel, adapter: Adapter | None = None) -> str:
    request = ChatRequest(
        messages=(Message(role="user", content=QUESTION),),
        params=SamplingParams(max_tokens=12, temperature=0),
        adapter=adapter,
    )
    return model.generate(request).text


def folder(root: Path, name: str, config: dict[str, Any], weights: bytes) -> Adapter:
    """An adapter folder as an older version (no upload checks) could have left it."""
    path = root / name
    path.mkdir()
    (path / "adapter_config.json").write_text(json.dumps(config))
    (path / "adapter_model.safetensors").write_bytes(weights)
    return Adapter(name=name, path=str(path))


def mismatched(weights: bytes) -> bytes:
    """One lora_B tensor of the wrong shape: PEFT used to fail halfway through loading."""
    tensors = load_tensors(weights)
    key = sorted(k for k in tensors if "lora_B" in k)[-1]
    tensors[key] = torch.zeros(tensors[key].shape[0] + 1, tensors[key].shape[1])
    return save_tensors(tensors)


def test_a_failed_load_leaves_every_other_tenant_answering_the_same(
    model: TransformersChatModel, lora: dict[str, Any], tmp_path: Path
) -> None:
    before = greedy(model)
    bad = folder(
        tmp_path,
        "broken",
        {**lora["config"], "init_lora_weights": False},
        mismatched(lora["weights"]),
    )
    with pytest.raises(LLMError, match="invalid"):
        greedy(model, bad)
    assert greedy(model) == before
    assert _linear_layers(model.model) == model._linear
    # A good adapter still loads, answers differently, and a failing one beside it changes
    # neither the good adapter's answer nor the base's.
    good = folder(tmp_path, "good", lora["config"], lora["weights"])
    adapted = greedy(model, good)
    assert adapted != before
    nan = load_tensors(lora["weights"])
    nan[next(iter(nan))][0, 0] = float("nan")
    with pytest.raises(LLMError, match="non-finite"):
        greedy(model, folder(tmp_path, "nan", lora["config"], save_tensors(nan)))
    assert greedy(model, good) == adapted
    assert greedy(model) == before
    assert set(model._peft.peft_config) == {"good"}


def test_removing_the_last_adapter_restores_the_plain_base_model(
    model: TransformersChatModel, lora: dict[str, Any], tmp_path: Path
) -> None:
    """The clean-up a failed injection runs: after it, no LoRA layer is left anywhere."""
    before = greedy(model)
    adapter = folder(tmp_path, "once", lora["config"], lora["weights"])
    greedy(model, adapter)
    for name in list(model._peft.peft_config) if model._peft is not None else []:
        model._drop_adapter(name)
    assert model._peft is None
    assert _linear_layers(model.model) == model._linear
    assert greedy(model) == before


def test_an_injection_that_fails_midway_is_undone(
    model: TransformersChatModel, lora: dict[str, Any], tmp_path: Path
) -> None:
    """A valid adapter whose name PEFT cannot register ("half" is a torch Module method):
    PEFT fails after it has wrapped layers of the shared model; they must not stay."""
    if model._peft is not None:
        for name in list(model._peft.peft_config):
            model._drop_adapter(name)
    before = greedy(model)
    with pytest.raises(LLMError, match="cannot load"):
        greedy(model, folder(tmp_path, "half", lora["config"], lora["weights"]))
    assert _linear_layers(model.model) == model._linear
    assert greedy(model) == before


def _store(root: Path, smollm2_dir: Path, **kw: Any) -> AdapterStore:
    return AdapterStore(root, smollm2_dir, **kw)


BAD_CONFIGS: list[tuple[str, dict[str, Any], str]] = [
    ("huge rank", {"r": 10**12}, "r"),
    ("boolean rank", {"r": True}, "r"),
    ("rank as text", {"r": "4"}, "r"),
    ("regex targets", {"target_modules": ".*"}, "not a module name"),
    ("unknown module", {"target_modules": ["q_proj", "no_such_proj"]}, "no module 'no_such_proj'"),
    ("not lora", {"peft_type": "IA3"}, "peft_type"),
    ("alpha NaN", {"lora_alpha": float("nan")}, "lora_alpha"),
    ("dora", {"use_dora": True}, "use_dora"),
    ("modules_to_save", {"modules_to_save": ["lm_head"]}, "modules_to_save"),
    ("bias", {"bias": "all"}, "bias"),
]


@pytest.mark.parametrize(
    ("label", "change", "message"), BAD_CONFIGS, ids=[b[0] for b in BAD_CONFIGS]
)
def test_bad_configs_are_refused_at_upload(
    lora: dict[str, Any], smollm2_dir: Path, tmp_path: Path, label: str, change: dict, message: str
) -> None:
    store = _store(tmp_path, smollm2_dir)
    with pytest.raises(BadRequestError, match=message):
        store.put("cube", {**lora["config"], **change}, lora["weights"])
    assert store.get("cube") is None


def test_bad_weights_are_refused_at_upload(
    lora: dict[str, Any], smollm2_dir: Path, tmp_path: Path
) -> None:
    store = _store(tmp_path, smollm2_dir)
    tensors = load_tensors(lora["weights"])
    only_q = {k: v for k, v in tensors.items() if "v_proj" not in k}
    no_b = {
        k: v
        for k, v in tensors.items()
        if not k.endswith("layers.0.self_attn.q_proj.lora_B.weight")
    }
    extra = {**tensors, "base_model.model.lm_head.weight": torch.zeros(2, 2)}
    rank8 = {k: torch.zeros(8, v.shape[1]) if "lora_A" in k else v for k, v in tensors.items()}
    ints = {k: v.to(torch.int32) for k, v in tensors.items()}
    cases = [
        (mismatched(lora["weights"]), "served model's is"),
        (save_tensors(only_q), "no tensors for"),
        (save_tensors(no_b), "lacks its lora_A or lora_B"),
        (save_tensors(extra), "unexpected tensor"),
        (save_tensors(rank8), "rank 8/4"),
        (save_tensors(ints), "not a float tensor"),
        (b"not safetensors at all", "not a safetensors file"),
        (lora["weights"][: len(lora["weights"]) // 2], "does not match its shape"),
    ]
    for weights, message in cases:
        with pytest.raises(BadRequestError, match=message):
            store.put("cube", lora["config"], weights)
    with pytest.raises(PayloadTooLargeError):
        _store(tmp_path, smollm2_dir, max_bytes=1000).put("cube", lora["config"], lora["weights"])
    with pytest.raises(BadRequestError, match="ranks up to 2"):
        _store(tmp_path, smollm2_dir, max_rank=2).put("cube", lora["config"], lora["weights"])
    assert store.get("cube") is None


def test_a_good_upload_is_stored_normalised(
    lora: dict[str, Any], smollm2_dir: Path, tmp_path: Path
) -> None:
    store = _store(tmp_path, smollm2_dir)
    encoded = base64.b64encode(lora["weights"]).decode()
    adapter = store.put_base64("cube", {**lora["config"], "init_lora_weights": False}, encoded)
    stored = json.loads((Path(adapter.path) / "adapter_config.json").read_text())
    assert stored["init_lora_weights"] is True and stored["r"] == 4
    assert stored["target_modules"] == ["q_proj", "v_proj"]
    assert store.info("cube")["r"] == 4  # type: ignore[index]
    modules = base_modules_of(smollm2_dir)
    assert modules["model.layers.0.self_attn.q_proj"][0] == 576
    assert not any("embed" in m for m in modules)
