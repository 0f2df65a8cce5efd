"""Run under the vLLM venv's python (PYTHONPATH = the repo): VLLMEngineChatModel for real.

argv: model folder, LoRA adapter folder or "" ; prints one JSON line prefixed RESULT.
vLLM's engine core is a spawned process, hence the __main__ guard.
"""

from __future__ import annotations

import json
import sys
import time


def main() -> None:
    from memos_ray.models.chat import Adapter, ChatRequest, Message, SamplingParams
    from memos_ray.models.vllm_engine import VLLMEngineChatModel

    model_dir, adapter_dir = sys.argv[1], sys.argv[2]
    start = time.monotonic()
    model = VLLMEngineChatModel(
        model_dir,
        served_model_name="SmolLM2-135M-Instruct",
        dtype="bfloat16",
        max_model_len=2048,
        enforce_eager=True,
        max_loras=2,
        max_lora_rank=16,
    )
    out: dict = {"startup_s": time.monotonic() - start, "names": model.model_names}
    try:
        greedy = SamplingParams(max_tokens=32, temperature=0)
        req = ChatRequest(
            messages=(Message(role="user", content="What is the capital of France?"),),
            params=greedy,
        )
        t = time.monotonic()
        gen = model.generate(req)
        out["generate_s"] = time.monotonic() - t
        out["generate"] = gen.model_dump()
        deltas = list(model.stream(req))
        out["stream_text"] = "".join(d.text for d in deltas)
        out["stream_last"] = deltas[-1].model_dump()
        out["stream_pieces"] = len(deltas)
        out["count_tokens"] = model.count_tokens(req.messages)
        facts = " ".join(f"Fact {i}: item {i} is blue and weighs {i * 3} grams." for i in range(80))
        prefixed = ChatRequest(
            messages=(
                Message(role="system", content=facts),
                Message(role="user", content="What does item 7 weigh?"),
            ),
            params=greedy,
            prefix_messages=1,
        )
        out["warm1"] = model.warm_prefix(prefixed).model_dump()
        out["warm2"] = model.warm_prefix(prefixed).model_dump()
        out["prefixed"] = model.generate(prefixed).model_dump()
        if adapter_dir:
            lora = req.model_copy(update={"adapter": Adapter(name="test-lora", path=adapter_dir)})
            out["lora"] = model.generate(lora).model_dump()
        schema = {
            "type": "object",
            "properties": {"city": {"type": "string"}, "country": {"type": "string"}},
            "required": ["city", "country"],
        }
        guided = req.model_copy(
            update={
                "response_schema": schema,
                "params": SamplingParams(max_tokens=64, temperature=0),
            }
        )
        out["guided"] = model.generate(guided).model_dump()
        try:
            model.generate(req.model_copy(update={"model": "nope"}))
        except Exception as exc:
            out["unknown_model_error"] = type(exc).__name__
    finally:
        model.close()
    print("RESULT " + json.dumps(out), flush=True)


if __name__ == "__main__":
    main()
