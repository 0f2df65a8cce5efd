"""Chat through Ray Serve on the real CPU model: MemOS chat routes, OpenAI route, LoRA."""

from __future__ import annotations

import asyncio
import base64
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from memos_ray.config import MemosConfig
from memos_ray.runtime.launcher import wait_ready
from tests.fixtures.servers import free_port

pytestmark = pytest.mark.ray

USER = "mira"
FACT = "My grey cat is called Miso and she sleeps on the piano."
GREEDY = {"temperature": 0, "max_tokens": 12}


@pytest.fixture(scope="module")
def chat_config(tmp_path_factory: pytest.TempPathFactory, llm_models_dir: Path) -> MemosConfig:
    return MemosConfig(
        data_dir=tmp_path_factory.mktemp("chat-data"),
        embedder={"num_cpus": 0.5},
        llm={"backend": "transformers", "models_dir": str(llm_models_dir)},
        reorganize={"llm": "none"},  # as configs/local.yaml: SmolLM2 is no judge
    ).resolved()


@pytest.fixture(scope="module")
def chat_url(ray_cluster: None, chat_config: MemosConfig) -> Iterator[str]:
    from ray import serve

    from deployments.app import build_from_config
    from memos_ray.runtime.compose import stop_embedded

    config = chat_config
    port = free_port()
    serve.start(http_options={"host": "127.0.0.1", "port": port})
    url = f"http://127.0.0.1:{port}"
    serve.run(build_from_config(config), name="memos", route_prefix="/")
    wait_ready(url)
    added = httpx.post(
        f"{url}/product/add",
        json={
            "user_id": USER,
            "async_mode": "sync",
            "messages": [
                {"role": "user", "content": FACT, "chat_time": "2026-05-02T10:00:00"},
                {"role": "user", "content": "I work as a lighthouse keeper in Porto."},
            ],
        },
        timeout=60,
    )
    assert added.status_code == 200, added.text
    yield url
    serve.shutdown()
    stop_embedded(config)


def _chat(url: str, path: str, **body: object) -> httpx.Response:
    payload = {"user_id": USER, "query": "What is my cat called?", **GREEDY, **body}
    return httpx.post(f"{url}/product/chat/{path}", json=payload, timeout=120)


def _frames(response: httpx.Response) -> list[dict]:
    return [
        json.loads(line[len("data: ") :])
        for line in response.text.splitlines()
        if line.startswith("data: ") and line != "data: [DONE]"
    ]


def test_complete_and_stream_answer_with_the_cubes_memories(chat_url: str) -> None:
    done = _chat(chat_url, "complete", include_prompt=True, add_message_on_answer=False)
    assert done.status_code == 200, done.text
    data = done.json()["data"]
    assert data["response"].strip()
    assert 0 < data["usage"]["completion_tokens"] <= 12
    prompt_text = "\n".join(m["content"] for m in data["prompt"])
    assert FACT in prompt_text and "lighthouse keeper" in prompt_text
    assert data["prompt"][0]["role"] == "system" and FACT in data["prompt"][0]["content"]
    assert len(data["activation_memory_ids"]) == 2

    streamed = _chat(chat_url, "stream", include_prompt=True, add_message_on_answer=False)
    assert streamed.status_code == 200
    frames = _frames(streamed)
    assert frames[0]["type"] == "prompt" and frames[0]["data"] == data["prompt"]
    assert frames[-1]["type"] == "end" and frames[-1]["data"]["finish_reason"]
    text = "".join(f["data"] for f in frames if f["type"] == "text")
    assert text.strip() == data["response"]


def test_answer_is_written_back_to_the_writable_cube(chat_url: str) -> None:
    query = "Remember that my sister Ana visits every June."
    done = _chat(chat_url, "complete", query=query, user_id="writer")
    assert done.status_code == 200, done.text
    listed = httpx.post(
        f"{chat_url}/product/get_memory",
        json={"user_id": "writer", "mem_cube_id": "writer"},
        timeout=30,
    ).json()["data"]["text_mem"][0]["memories"]
    texts = [m["memory"] for m in listed]
    assert any(query in t for t in texts)
    assert any(done.json()["data"]["response"][:20] in t for t in texts)


def test_openai_route_injects_memories(chat_url: str) -> None:
    body = {
        "model": "SmolLM2-135M-Instruct",
        "user": USER,
        "messages": [{"role": "user", "content": "Where do I work?"}],
        "temperature": 0,
        "max_tokens": 12,
    }
    headers = {"X-Memos-Include-Prompt": "true", "X-Memos-Write-Back": "false"}
    plain = httpx.post(f"{chat_url}/v1/chat/completions", json=body, headers=headers, timeout=120)
    assert plain.status_code == 200, plain.text
    out = plain.json()
    assert out["object"] == "chat.completion"
    answer = out["choices"][0]["message"]["content"]
    assert answer.strip() and out["usage"]["completion_tokens"] > 0
    prompt = "\n".join(m["content"] for m in out["memos"]["prompt"])
    assert "lighthouse keeper in Porto" in prompt

    streamed = httpx.post(
        f"{chat_url}/v1/chat/completions",
        json={**body, "stream": True, "stream_options": {"include_usage": True}},
        headers=headers,
        timeout=120,
    )
    assert streamed.status_code == 200
    assert streamed.text.rstrip().endswith("data: [DONE]")
    chunks = _frames(streamed)
    text = "".join(c["choices"][0]["delta"].get("content", "") for c in chunks if c["choices"])
    assert text == answer
    assert chunks[-1]["usage"]["completion_tokens"] == out["usage"]["completion_tokens"]


def test_bad_chat_input_is_refused(chat_url: str) -> None:
    assert _chat(chat_url, "complete", query="  ").status_code == 422
    assert _chat(chat_url, "complete", max_tokens=0).status_code == 422
    too_many = _chat(chat_url, "complete", max_tokens=100_000)
    assert too_many.status_code == 400 and "max_tokens" in too_many.json()["message"]
    unknown = _chat(chat_url, "complete", model_name_or_path="gpt-17")
    assert unknown.status_code == 404 and "gpt-17" in unknown.json()["message"]
    openai = httpx.post(
        f"{chat_url}/v1/chat/completions",
        json={"model": "gpt-17", "user": USER, "messages": [{"role": "user", "content": "hi"}]},
        timeout=60,
    )
    assert openai.status_code == 404
    assert openai.json()["error"]["code"] == "model_not_found"
    no_user = httpx.post(
        f"{chat_url}/v1/chat/completions",
        json={"model": "SmolLM2-135M-Instruct", "messages": [{"role": "user", "content": "hi"}]},
        timeout=60,
    )
    assert no_user.status_code == 400 and "user" in no_user.json()["error"]["message"]


def _tiny_adapter(base: Path, out: Path) -> dict[str, str | dict]:
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    torch.manual_seed(7)
    model = AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32)
    config = LoraConfig(
        r=4, lora_alpha=16, target_modules=["q_proj", "v_proj"], init_lora_weights=False
    )
    get_peft_model(model, config).save_pretrained(out)
    return {
        "adapter_config": json.loads((out / "adapter_config.json").read_text()),
        "weights_base64": base64.b64encode(
            (out / "adapter_model.safetensors").read_bytes()
        ).decode(),
    }


def test_cube_with_lora_adapter_answers_differently(
    chat_url: str, smollm2_dir: Path, tmp_path: Path
) -> None:
    ask = {"add_message_on_answer": False, "max_tokens": 10}
    before = _chat(chat_url, "complete", **ask).json()["data"]
    assert before["adapter"] is None
    upload = _tiny_adapter(smollm2_dir, tmp_path / "adapter")
    put = httpx.put(
        f"{chat_url}/product/cubes/{USER}/adapter", json={"user_id": USER, **upload}, timeout=60
    )
    assert put.status_code == 200, put.text
    assert put.json()["data"]["r"] == 4
    adapted = _chat(chat_url, "complete", **ask).json()["data"]
    assert adapted["adapter"] == put.json()["data"]["name"]
    assert adapted["response"] != before["response"]
    # Without the adapter the cube answers as before: the base weights were not touched.
    gone = httpx.delete(f"{chat_url}/product/cubes/{USER}/adapter?user_id={USER}", timeout=30)
    assert gone.status_code == 200
    after = _chat(chat_url, "complete", **ask).json()["data"]
    assert after["adapter"] is None and after["response"] == before["response"]
    bad = httpx.put(
        f"{chat_url}/product/cubes/{USER}/adapter",
        json={
            "user_id": USER,
            "adapter_config": {"peft_type": "LORA", "r": 4, "target_modules": ["q_proj"]},
            "weights_base64": "bm90IHNhZmV0ZW5zb3Jz",
        },
        timeout=30,
    )
    assert bad.status_code == 400


def test_python_client_and_cli_chat(
    chat_url: str, capsys: pytest.CaptureFixture[str], smollm2_dir: Path, tmp_path: Path
) -> None:
    from memos_ray.cli import main
    from memos_ray.client import AsyncMemosClient, BadRequestError, MemosClient

    with MemosClient(chat_url) as client:
        done = client.chat(USER, "What is my cat called?", add_message_on_answer=False, **GREEDY)
        frames = list(
            client.chat_stream(
                USER, "What is my cat called?", add_message_on_answer=False, **GREEDY
            )
        )
        assert "".join(f.data for f in frames if f.type == "text").strip() == done.response

        async def async_frames() -> list[Any]:
            async with AsyncMemosClient(chat_url) as async_client:
                stream = async_client.chat_stream(
                    USER, "What is my cat called?", add_message_on_answer=False, **GREEDY
                )
                return [f async for f in stream]

        streamed = asyncio.run(async_frames())
        assert "".join(f.data for f in streamed if f.type == "text") == "".join(
            f.data for f in frames if f.type == "text"
        )
        assert streamed[-1].type == "end" == frames[-1].type
        with pytest.raises(BadRequestError):
            client.chat(USER, "hello", max_tokens=100_000)
        _tiny_adapter(smollm2_dir, tmp_path / "adapter")
        info = client.set_adapter("cli-user", "cli-user", tmp_path / "adapter")
        assert info.model_dump()["peft_type"] == "LORA"
    code = main(
        [
            "chat",
            "--url",
            chat_url,
            "--user",
            USER,
            "--no-write-back",
            "--max-tokens",
            "8",
            "What is my cat called?",
        ]
    )
    out = capsys.readouterr()
    assert code == 0 and out.out.strip() and "memories retrieved" in out.err


def test_preferences_written_elsewhere_reach_search_and_chat(
    chat_url: str, chat_config: MemosConfig
) -> None:
    """The replica and this test process share the Milvus Lite server the Ray actor owns."""
    import ray

    from memos_ray.models.embedder import SentenceTransformerEmbedder
    from memos_ray.stores.preference.base import Preference
    from memos_ray.stores.preference.milvus import MilvusPreferenceStore

    user = "pref-user"
    httpx.post(
        f"{chat_url}/product/add",
        json={"user_id": user, "async_mode": "sync", "messages": "I fly to Oslo in May."},
        timeout=60,
    )
    from memos_ray.embedded.falkordb_actor import actor_suffix

    actor = ray.get_actor(
        f"memos-milvus-{actor_suffix(chat_config)}", namespace=chat_config.serving.namespace
    )
    store = MilvusPreferenceStore(384, uri=ray.get(actor.uri.remote()))
    text = "Prefers aisle seats on long flights"
    vector = SentenceTransformerEmbedder().embed([text])
    store.upsert(
        user,
        [Preference(id="p-aisle", cube_id=user, user_id=user, kind="explicit", preference=text)],
        vector,
    )
    found = httpx.post(
        f"{chat_url}/product/search",
        json={"user_id": user, "query": "which seat on the plane?"},
        timeout=60,
    ).json()["data"]
    assert [m["memory"] for m in found["pref_mem"][0]["memories"]] == [text]
    answer = _chat(
        chat_url,
        "complete",
        user_id=user,
        query="Which seat should I book?",
        include_prompt=True,
        add_message_on_answer=False,
    ).json()["data"]
    assert answer["preference_ids"] == ["p-aisle"] and text in answer["prompt"][-1]["content"]


def test_async_add_is_distilled_later_by_the_cube_scheduler(chat_url: str) -> None:
    """MemOS's default async add: fast memories now, fine ones later from the cube's
    scheduler actor (real SmolLM2 through the LLM deployment); first ids stay resolvable."""
    user = "async-user"
    added = httpx.post(
        f"{chat_url}/product/add",
        json={
            "user_id": user,
            "messages": [
                {"role": "user", "content": "I moved to Lisbon in March and I teach chemistry."},
                {"role": "assistant", "content": "Lisbon and chemistry, lovely!"},
            ],
        },
        timeout=60,
    )
    assert added.status_code == 200, added.text
    entries = added.json()["data"]
    task_ids = {e["task_id"] for e in entries}
    assert len(task_ids) == 1 and len(entries) == 2
    waited = httpx.post(
        f"{chat_url}/product/scheduler/wait",
        json={"user_name": user, "user_id": user, "timeout_seconds": 300},
        timeout=320,
    ).json()["data"]
    assert waited["pending"] == 0 and waited["failed"] == 0
    status = httpx.get(
        f"{chat_url}/product/scheduler/status", params={"user_id": user}, timeout=30
    ).json()["data"]
    [task] = [t for t in status if t["label"] == "mem_read"]
    assert task["state"] == "completed"
    result = task["result"]
    # Its follow-ups: a mem_organize of the cube when it stored memories, and a pref_add
    # when it read preferences; each ran in its own task.
    others = [t for t in status if t["task_id"] != task["task_id"]]
    assert [t["task_id"] for t in others] == result["follow_up_task_ids"]
    assert all(t["state"] == "completed" for t in others)
    labels = [t["label"] for t in others]
    assert ("mem_organize" in labels) == bool(result["fine_memory_ids"])
    assert set(labels) <= {"mem_organize", "pref_add"}
    graph = httpx.post(f"{chat_url}/product/get_all", json={"user_id": user}, timeout=30).json()
    edges = {(e["source"], e["target"]) for e in graph["data"][0]["memories"][0]["edges"]}
    for entry in entries:
        first = httpx.get(
            f"{chat_url}/product/get_memory/{entry['memory_id']}",
            params={"user_id": user},
            timeout=30,
        )
        assert first.status_code == 200  # the id returned first stays resolvable
        # fine.keep_turns (default): the turn stays searchable; what was read from it links
        # to it by MATERIAL. A failed extraction leaves it as it was: nothing is lost.
        assert first.json()["data"]["metadata"]["status"] == "activated"
        if result["fine_memory_ids"] and not result["errors"]:
            assert {(f, entry["memory_id"]) for f in result["fine_memory_ids"]} <= edges


def test_async_feedback_is_applied_by_the_cube_scheduler(chat_url: str) -> None:
    """async_mode="async" feedback is recorded as a `mem_feedback` task and applied by the
    cube's scheduler (real SmolLM2); whatever it decided, the memory it concerned is kept."""
    user = "feedback-async"
    added = httpx.post(
        f"{chat_url}/product/add",
        json={"user_id": user, "async_mode": "sync", "messages": "I live in Porto."},
        timeout=60,
    ).json()["data"]
    queued = httpx.post(
        f"{chat_url}/product/feedback",
        json={
            "user_id": user,
            "async_mode": "async",
            "feedback_content": "That is outdated: I moved from Porto to Braga.",
            "retrieved_memory_ids": [added[0]["memory_id"]],
        },
        timeout=60,
    )
    assert queued.status_code == 200, queued.text
    task_id = queued.json()["data"][0]["task_id"]
    waited = httpx.post(
        f"{chat_url}/product/scheduler/wait",
        json={"user_name": user, "user_id": user, "timeout_seconds": 300},
        timeout=320,
    ).json()["data"]
    assert waited["pending"] == 0 and waited["failed"] == 0
    status = httpx.get(
        f"{chat_url}/product/scheduler/status", params={"user_id": user}, timeout=30
    ).json()["data"]
    [task] = status
    assert task["task_id"] == task_id and task["label"] == "mem_feedback"
    assert task["state"] == "completed"
    assert set(task["result"]["record"]) == {"add", "update", "delete"}
    kept = httpx.get(
        f"{chat_url}/product/get_memory/{added[0]['memory_id']}",
        params={"user_id": user},
        timeout=30,
    )
    assert kept.status_code == 200
