"""The transformers backend on the real SmolLM2: prefix KV caches never change the tokens."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from memos_ray.models.chat import ChatRequest, Message, SamplingParams, UnknownModelError
from memos_ray.models.hf_chat import TransformersChatModel

FACTS = " ".join(
    f"Note {i}: the {('red', 'blue', 'green')[i % 3]} box {i} holds {i * 7} marbles."
    for i in range(40)
)
SYSTEM = Message(role="system", content=f"You answer from these memories.\n{FACTS}")


@pytest.fixture(scope="module")
def model(smollm2_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> TransformersChatModel:
    kv = tmp_path_factory.mktemp("kv")
    return TransformersChatModel(smollm2_dir, served_name="smol", kv_cache_dir=kv)


def _request(question: str, prefix: int = 1, max_tokens: int = 16) -> ChatRequest:
    return ChatRequest(
        messages=(SYSTEM, Message(role="user", content=question)),
        params=SamplingParams(max_tokens=max_tokens, temperature=0),
        prefix_messages=prefix,
    )


def test_cached_prefix_gives_the_same_tokens_as_the_text(model: TransformersChatModel) -> None:
    question = "How many marbles does box 5 hold?"
    # Reference: transformers' own generate on the whole prompt text, no cache anywhere.
    text = model.render(_request(question).messages, True)
    ids = model.tokenizer(text, add_special_tokens=False, return_tensors="pt")["input_ids"]
    with torch.inference_mode():
        out = model.model.generate(
            input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=16, do_sample=False
        )
    reference = model.tokenizer.decode(out[0, ids.shape[1] :], skip_special_tokens=True)

    plain = model.generate(_request(question, prefix=0))
    assert plain.usage.cached_tokens == 0
    first = model.generate(_request(question))
    warm = model.warm_prefix(_request(question))
    again = model.generate(_request("Which box holds 21 marbles?"))
    assert warm.computed is False and warm.tokens == first.usage.cached_tokens > 300
    assert first.text == plain.text == reference
    assert again.usage.cached_tokens == first.usage.cached_tokens
    assert again.usage.prompt_tokens == model.count_tokens(
        _request("Which box holds 21 marbles?").messages
    )


def test_prefix_cache_reloads_from_disk(model: TransformersChatModel, smollm2_dir: Path) -> None:
    request = _request("What does box 9 hold?")
    expected = model.generate(request)
    fresh = TransformersChatModel(smollm2_dir, served_name="smol", kv_cache_dir=model._kv_dir)
    warm = fresh.warm_prefix(request)
    assert warm.computed is False  # loaded from the file the first model saved
    assert fresh.generate(request).text == expected.text


def test_stream_matches_generate_and_stops(model: TransformersChatModel) -> None:
    request = _request("Name two colours of boxes.", max_tokens=12)
    deltas = list(model.stream(request))
    assert deltas[-1].finish_reason in ("stop", "length")
    assert deltas[-1].usage is not None and deltas[-1].usage.completion_tokens <= 12
    assert "".join(d.text for d in deltas) == model.generate(request).text
    stopped = model.generate(
        request.model_copy(
            update={"params": SamplingParams(max_tokens=12, temperature=0, stop=(" ",))}
        )
    )
    assert " " not in stopped.text


def test_unknown_model_is_refused(model: TransformersChatModel) -> None:
    with pytest.raises(UnknownModelError):
        model.generate(_request("hi").model_copy(update={"model": "gpt-17"}))


def test_saved_caches_stay_within_their_disk_budget(
    model: TransformersChatModel, smollm2_dir: Path, tmp_path: Path
) -> None:
    model.warm_prefix(_request("Anything?"))
    one = max(p.stat().st_size for p in model._kv_dir.glob("*.pt"))
    small = TransformersChatModel(
        smollm2_dir, served_name="smol", kv_cache_dir=tmp_path, kv_cache_disk_bytes=one + one // 2
    )
    other = Message(role="system", content=f"Other memories.\n{FACTS}")
    small.warm_prefix(_request("Anything?"))
    first = {p.name for p in tmp_path.glob("*.pt")}
    small.warm_prefix(
        ChatRequest(
            messages=(other, Message(role="user", content="Anything?")),
            params=SamplingParams(max_tokens=4, temperature=0),
            prefix_messages=1,
        )
    )
    kept = {p.name for p in tmp_path.glob("*.pt")}
    assert len(first) == 1 and len(kept) == 1 and kept != first  # the older one went
