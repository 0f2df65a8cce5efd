"""Both vLLM backends against the real vLLM CPU build serving SmolLM2-135M-Instruct.

Needs the venv from `memos-ray vllm-env` (skipped without it). One `vllm serve` per module
(~30 s to start); the in-process engine runs in a subprocess under the vLLM venv's python,
since vllm cannot be imported in the project's venv.
"""

from __future__ import annotations

import json
import os
import subprocess
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from memos_ray.models.chat import (
    Adapter,
    ChatRequest,
    Message,
    SamplingParams,
    UnknownModelError,
)
from memos_ray.models.openai_chat import OpenAIChatModel
from memos_ray.runtime import vllm_env

pytestmark = [
    pytest.mark.vllm,
    pytest.mark.skipif(
        not vllm_env.is_ready(),
        reason=f"no vLLM venv at {vllm_env.default_venv()}: run `memos-ray vllm-env` (~2 min)",
    ),
]

REPO = Path(__file__).resolve().parents[2]
# vLLM's KV block size on CPU: prefix caching works in whole blocks of this many tokens.
CPU_BLOCK = 128
GREEDY = SamplingParams(max_tokens=48, temperature=0)
QUESTION = ChatRequest(
    messages=(Message(role="user", content="What is the capital of France?"),), params=GREEDY
)


@pytest.fixture(scope="module")
def model_dir(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """SmolLM2 as a Hugging Face folder: the session's shared one when that fixture exists."""
    try:
        return Path(request.getfixturevalue("smollm2_dir"))
    except pytest.FixtureLookupError:
        from memos_ray.models import smollm2

        return smollm2.hf_dir(tmp_path_factory.mktemp("vllm-models"))


@pytest.fixture(scope="module")
def lora_dir(model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A random (non-zero) rank-8 LoRA on q/v projections: it must change greedy output."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    torch.manual_seed(0)
    base = AutoModelForCausalLM.from_pretrained(model_dir)
    config = LoraConfig(r=8, target_modules=["q_proj", "v_proj"], init_lora_weights=False)
    out = tmp_path_factory.mktemp("lora") / "adapter"
    get_peft_model(base, config).save_pretrained(out)
    return out


@dataclass
class EngineRun:
    proc: subprocess.Popen[bytes]
    out: Path
    err: Path


@pytest.fixture(scope="module")
def engine_run(
    model_dir: Path, lora_dir: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[EngineRun]:
    """The in-process engine's check (engine_check.py, under the vLLM venv's python), started
    before `vllm serve` so that the two start-ups overlap; its test collects the result."""
    env = {
        **os.environ,
        "PYTHONPATH": str(REPO),
        "HF_HUB_OFFLINE": "1",
        "VLLM_CPU_KVCACHE_SPACE": "1",
        "VLLM_NO_USAGE_STATS": "1",
    }
    env.pop("VIRTUAL_ENV", None)
    folder = tmp_path_factory.mktemp("vllm-engine")
    out, err = folder / "stdout", folder / "stderr"
    script = Path(__file__).with_name("engine_check.py")
    with open(out, "wb") as stdout, open(err, "wb") as stderr:
        proc = subprocess.Popen(
            [str(vllm_env.venv_python()), str(script), str(model_dir), str(lora_dir)],
            env=env,
            stdout=stdout,
            stderr=stderr,
            cwd=REPO,
        )
    try:
        yield EngineRun(proc, out, err)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


@pytest.fixture(scope="module")
def server(
    model_dir: Path, tmp_path_factory: pytest.TempPathFactory, engine_run: EngineRun
) -> Iterator[Any]:
    log = tmp_path_factory.mktemp("vllm-serve") / "vllm.log"
    with vllm_env.VLLMServer(model_dir, log) as srv:
        print(f"\nvllm serve ready in {srv.startup_s:.1f} s (log {log})")
        yield srv


@pytest.fixture(scope="module")
def client(server: Any) -> Iterator[OpenAIChatModel]:
    model = OpenAIChatModel(
        f"{server.base_url}/v1", vllm_env.SERVED_NAME, cache_block_tokens=CPU_BLOCK
    )
    yield model
    model.close()


def test_generate_and_stream_agree(client: OpenAIChatModel) -> None:
    gen = client.generate(QUESTION)
    assert "Paris" in gen.text
    assert gen.finish_reason == "stop"
    assert gen.model == vllm_env.SERVED_NAME
    assert gen.usage.prompt_tokens > 0 and gen.usage.completion_tokens > 0

    start = time.monotonic()
    deltas = list(client.stream(QUESTION))
    took = time.monotonic() - start
    assert "".join(d.text for d in deltas) == gen.text
    last = deltas[-1]
    assert last.finish_reason == "stop" and last.usage is not None
    assert last.usage.prompt_tokens == gen.usage.prompt_tokens
    assert last.usage.completion_tokens == gen.usage.completion_tokens
    assert deltas[0].ttft_s is not None and 0 < deltas[0].ttft_s <= took
    assert client.count_tokens(QUESTION.messages) == gen.usage.prompt_tokens


def test_length_limit_and_decode_speed(client: OpenAIChatModel) -> None:
    story = ChatRequest(
        messages=(Message(role="user", content="Write a long story about a dragon."),),
        params=SamplingParams(max_tokens=128, temperature=0),
    )
    start = time.monotonic()
    deltas = list(client.stream(story))
    took = time.monotonic() - start
    last = deltas[-1]
    assert last.finish_reason == "length" and last.usage is not None
    assert last.usage.completion_tokens == 128
    ttft = deltas[0].ttft_s or 0.0
    print(
        f"\n128 tokens in {took:.2f} s, ttft {ttft:.3f} s, {127 / (took - ttft):.1f} tok/s decode"
    )


def test_prefix_cache_hit_after_warm(client: OpenAIChatModel) -> None:
    # A nonce first, so no earlier request shares a cached block with this prefix.
    facts = " ".join(f"Fact {i}: item {i} is blue and weighs {i * 3} grams." for i in range(80))
    system = f"Session {uuid.uuid4().hex}. {facts}"
    request = ChatRequest(
        messages=(
            Message(role="system", content=system),
            Message(role="user", content="What does item 7 weigh?"),
        ),
        params=GREEDY,
        prefix_messages=1,
    )
    first = client.warm_prefix(request)
    assert first.tokens > 900 and first.computed
    again = client.warm_prefix(request)
    assert not again.computed  # all whole blocks were cached already
    assert again.seconds < first.seconds

    gen = client.generate(request)
    # Every whole block of the prefix came from the cache.
    assert gen.usage.cached_tokens >= (first.tokens // CPU_BLOCK) * CPU_BLOCK > 0
    assert gen.usage.cached_tokens < gen.usage.prompt_tokens


def test_lora_adapter_changes_greedy_answer(client: OpenAIChatModel, lora_dir: Path) -> None:
    base = client.generate(QUESTION)
    adapter = Adapter(name=f"lora-{uuid.uuid4().hex[:8]}", path=str(lora_dir))
    tuned_request = QUESTION.model_copy(update={"adapter": adapter})
    tuned = client.generate(tuned_request)
    assert tuned.model == adapter.name
    assert tuned.text != base.text
    # Loaded once, then served by name; streaming goes through the same adapter.
    assert adapter.name in client._served()
    assert "".join(d.text for d in client.stream(tuned_request)) == tuned.text


def test_unknown_model(server: Any, client: OpenAIChatModel) -> None:
    with pytest.raises(UnknownModelError):
        client.generate(QUESTION.model_copy(update={"model": "no-such-model"}))  # local check
    other = OpenAIChatModel(f"{server.base_url}/v1", "no-such-model")
    try:
        with pytest.raises(UnknownModelError, match="does not exist"):
            other.generate(QUESTION)  # the server's 404
    finally:
        other.close()


def test_engine_backend_in_vllm_venv(engine_run: EngineRun, client: OpenAIChatModel) -> None:
    """VLLMEngineChatModel for real, in a subprocess under the vLLM venv's python.

    Compared with the server's answer: same weights, same greedy decoding.
    """
    returncode = engine_run.proc.wait(timeout=600)
    stdout = engine_run.out.read_text(errors="replace")
    stderr = engine_run.err.read_text(errors="replace")
    lines = [line for line in stdout.splitlines() if line.startswith("RESULT ")]
    assert returncode == 0 and lines, stderr[-4000:] + stdout[-2000:]
    out = json.loads(lines[-1][len("RESULT ") :])
    print(f"\nengine: start {out['startup_s']:.1f} s, generate {out['generate_s']:.2f} s")

    gen = out["generate"]
    assert "Paris" in gen["text"] and gen["finish_reason"] == "stop"
    assert gen["usage"]["prompt_tokens"] > 0 and gen["usage"]["completion_tokens"] > 0
    assert out["stream_text"] == gen["text"]
    assert out["stream_last"]["finish_reason"] == "stop"
    assert out["stream_last"]["usage"] == gen["usage"]
    assert out["stream_last"]["ttft_s"] > 0
    assert out["count_tokens"] == gen["usage"]["prompt_tokens"]
    served = client.generate(
        QUESTION.model_copy(update={"params": SamplingParams(max_tokens=32, temperature=0)})
    )
    assert gen["text"] == served.text
    assert out["warm1"]["computed"] and not out["warm2"]["computed"]
    assert out["warm1"]["tokens"] > 900
    assert out["prefixed"]["usage"]["cached_tokens"] >= CPU_BLOCK
    assert out["lora"]["model"] == "test-lora" and out["lora"]["text"] != gen["text"]
    assert out["unknown_model_error"] == "UnknownModelError"
    # Guided decoding: valid JSON with the schema's keys, straight from the engine.
    guided = json.loads(out["guided"]["text"])
    assert set(guided) == {"city", "country"}


@pytest.mark.ray
def test_memos_chat_route_through_vllm(
    ray_cluster: None, server: Any, tmp_path_factory: pytest.TempPathFactory
) -> None:
    """memos-ray's Serve app with vLLM as its remote backend: the activation prefix (the cube's
    hot memories) is served from vLLM's prefix cache on the second question."""
    import httpx
    from ray import serve

    from deployments.app import build_from_config
    from memos_ray.config import MemosConfig
    from memos_ray.embedded.falkordb_server import free_port
    from memos_ray.runtime.compose import stop_embedded
    from memos_ray.runtime.launcher import wait_ready

    config = MemosConfig(
        data_dir=tmp_path_factory.mktemp("vllm-chat-data"),
        embedder={"num_cpus": 0.5},
        llm={
            "backend": "openai",
            "base_url": f"{server.base_url}/v1",
            "model": vllm_env.SERVED_NAME,
            "cache_block_tokens": CPU_BLOCK,
        },
    ).resolved()
    port = free_port()
    serve.start(http_options={"host": "127.0.0.1", "port": port})
    url = f"http://127.0.0.1:{port}"
    try:
        serve.run(build_from_config(config), name="memos-vllm", route_prefix="/")
        wait_ready(url)
        facts = [
            {"role": "user", "content": f"Reminder {i}: locker {i} holds {i * 4} blue folders."}
            for i in range(30)
        ]
        facts.append({"role": "user", "content": "My grey cat is called Miso."})
        added = httpx.post(
            f"{url}/product/add",
            json={"user_id": "vllm-user", "async_mode": "sync", "messages": facts},
            timeout=120,
        )
        assert added.status_code == 200, added.text

        def ask(query: str) -> dict[str, Any]:
            response = httpx.post(
                f"{url}/product/chat/complete",
                json={
                    "user_id": "vllm-user",
                    "query": query,
                    "temperature": 0,
                    "max_tokens": 16,
                    "add_message_on_answer": False,
                    "include_prompt": True,
                },
                timeout=120,
            )
            assert response.status_code == 200, response.text
            return response.json()["data"]

        first = ask("What is my cat called?")
        assert "Miso" in first["prompt"][0]["content"] and first["response"].strip()
        second = ask("How many folders are in locker 3?")
        assert second["prompt"][0] == first["prompt"][0]  # the same activation prefix
        assert second["usage"]["cached_tokens"] >= CPU_BLOCK
        openai = httpx.post(
            f"{url}/v1/chat/completions",
            json={
                "model": vllm_env.SERVED_NAME,
                "user": "vllm-user",
                "messages": [{"role": "user", "content": "What is my cat called?"}],
                "temperature": 0,
                "max_tokens": 16,
            },
            headers={"X-Memos-Write-Back": "false"},
            timeout=120,
        )
        assert openai.status_code == 200, openai.text
        assert openai.json()["usage"]["prompt_tokens_details"]["cached_tokens"] >= CPU_BLOCK
    finally:
        serve.delete("memos-vllm")
        serve.shutdown()
        stop_embedded(config)


def test_guided_json_through_the_server(client: OpenAIChatModel) -> None:
    """`response_schema` becomes `response_format` and the server enforces it."""
    schema = {
        "type": "object",
        "properties": {"city": {"type": "string"}, "country": {"type": "string"}},
        "required": ["city", "country"],
    }
    request = QUESTION.model_copy(
        update={"response_schema": schema, "params": SamplingParams(max_tokens=64, temperature=0)}
    )
    answer = json.loads(client.generate(request).text)
    assert set(answer) == {"city", "country"}
