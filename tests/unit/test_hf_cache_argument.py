"""The KV cache reaches the model under the name its transformers release takes.

transformers 5.24 renamed `past_key_values` to `cache`; the `vllm` extra pins releases before
it. A wrong name raises nothing: forward() swallows it in **kwargs and the prefix cache stays
empty (tests/models/test_hf_chat.py then fails on the older releases).
"""

from __future__ import annotations

from typing import Any

from memos_ray.models.hf_chat import _cache_argument


class _Renamed:
    def forward(self, input_ids: Any = None, cache: Any = None, **kwargs: Any) -> None: ...


class _Before:
    def forward(
        self, input_ids: Any = None, past_key_values: Any = None, **kwargs: Any
    ) -> None: ...


def test_the_argument_follows_the_models_signature() -> None:
    assert _cache_argument(_Renamed()) == "cache"
    assert _cache_argument(_Before()) == "past_key_values"


def test_the_installed_release_fills_the_cache_it_is_given() -> None:
    """What hf_chat's prefix cache relies on, on a one-layer model built in memory."""
    # deferred: imports torch and transformers
    import torch
    from transformers import DynamicCache, LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(
        vocab_size=32,
        hidden_size=8,
        intermediate_size=16,
        num_hidden_layers=1,
        num_attention_heads=2,
        num_key_value_heads=2,
    )
    model = LlamaForCausalLM(config).eval()
    cache = DynamicCache(config=model.config)
    with torch.inference_mode():
        model(
            input_ids=torch.tensor([[1, 2, 3]]), use_cache=True, **{_cache_argument(model): cache}
        )
    assert cache.get_seq_length() == 3
    assert all(layer.keys is not None for layer in cache.layers)
