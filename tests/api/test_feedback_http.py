"""Fine adds, feedback, recovery and token budgets through real HTTP on real stores.

The LLM is the scripted TEST DOUBLE (tests/fixtures/scripted_model.py): these tests pin down
what the service does with given model answers, not what a model would answer.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass, field

import httpx
import pytest

from memos_ray import __version__
from memos_ray.api.app import create_app
from memos_ray.api.context import ApiContext
from memos_ray.config import MemosConfig
from memos_ray.fine import FineService
from memos_ray.models.chat import ChatRequest
from memos_ray.models.embedder import SentenceTransformerEmbedder
from memos_ray.tenancy import AccessControl
from memos_ray.wiring import LocalStack
from tests.fixtures.scripted_model import ScriptedChatModel
from tests.fixtures.servers import serve_in_thread


@dataclass
class Script:
    """Answers queued per kind of request (told apart by their system prompts)."""

    extract: list[str] = field(default_factory=list)
    judge: list[str] = field(default_factory=list)
    feedback: list[str] = field(default_factory=list)

    def __call__(self, request: ChatRequest) -> str:
        system = request.messages[0].content
        queue = (
            self.extract
            if system.startswith("You turn a conversation")
            else self.judge
            if system.startswith("You compare")
            else self.feedback
        )
        assert queue, f"no scripted answer left for: {system[:40]}"
        return queue.pop(0)


@pytest.fixture(scope="module")
def api(
    tmp_path_factory: pytest.TempPathFactory, embedder: SentenceTransformerEmbedder
) -> Iterator[tuple[httpx.Client, Script]]:
    config = MemosConfig(data_dir=tmp_path_factory.mktemp("feedback")).resolved()
    script = Script()
    with LocalStack(config, embedder=embedder) as stack:
        fine = FineService(stack.service, ScriptedChatModel(script), ledger=stack.tenancy)
        context = ApiContext(
            config, stack.service, AccessControl(stack.tenancy, None), __version__, fine=fine
        )
        with (
            serve_in_thread(create_app(lambda: context)) as url,
            httpx.Client(base_url=url, timeout=60) as http,
        ):
            yield http, script


def _facts(*values: str) -> str:
    return json.dumps(
        {"memories": [{"key": "", "memory_type": "UserMemory", "value": v} for v in values]}
    )


def _add_fine(http: httpx.Client, user: str, text: str) -> httpx.Response:
    return http.post(
        "/product/add",
        json={
            "user_id": user,
            "async_mode": "sync",
            "mode": "fine",
            "messages": [{"role": "user", "content": text, "chat_time": "2026-03-02T09:00:00"}],
        },
    )


def _memory(http: httpx.Client, user: str, memory_id: str) -> dict:
    response = http.get(f"/product/get_memory/{memory_id}", params={"user_id": user})
    assert response.status_code == 200, response.text
    return response.json()["data"]


def _search(http: httpx.Client, user: str, query: str) -> list[str]:
    body = {"user_id": user, "query": query, "relativity": 0}
    data = http.post("/product/search", json=body).json()["data"]
    return [m["id"] for m in data["text_mem"][0]["memories"]]


def test_feedback_corrects_a_fact_and_the_old_one_can_be_recovered(
    api: tuple[httpx.Client, Script],
) -> None:
    http, script = api
    script.extract.append(_facts("Jane lives in Boston."))
    added = _add_fine(http, "jane", "I live in Boston.")
    assert added.status_code == 200, added.text
    [entry] = added.json()["data"]
    assert entry["action"] == "added" and entry["memory"] == "Jane lives in Boston."
    old_id = entry["memory_id"]

    script.feedback.append(
        json.dumps(
            {
                "operations": [{"op": "update", "index": 0, "text": "Jane lives in Denver."}],
                "answer": "Got it, you live in Denver now.",
            }
        )
    )
    response = http.post(
        "/product/feedback",
        json={
            "user_id": "jane",
            "feedback_content": "Wrong: I moved to Denver, I don't live in Boston any more.",
            "retrieved_memory_ids": [old_id],
            "history": [
                {"role": "user", "content": "Where do I live?"},
                {"role": "assistant", "content": "In Boston."},
            ],
        },
    )
    assert response.status_code == 200, response.text
    data = response.json()["data"]
    assert data["answer"] == "Got it, you live in Denver now."
    [update] = data["record"]["update"]
    assert update["archived_id"] == old_id and update["origin_memory"] == "Jane lives in Boston."
    new_id = update["id"]
    old = _memory(http, "jane", old_id)
    assert old["metadata"]["status"] == "archived"
    assert old["metadata"]["history"][-1]["memory"] == "Jane lives in Boston."
    assert _search(http, "jane", "Where does Jane live?") == [new_id]

    recovered = http.post(
        "/product/recover_memory", json={"user_id": "jane", "memory_ids": [old_id]}
    )
    assert recovered.status_code == 200, recovered.text
    assert [m["id"] for m in recovered.json()["data"]["recovered"]] == [old_id]
    assert _memory(http, "jane", old_id)["metadata"]["status"] == "activated"
    assert set(_search(http, "jane", "Where does Jane live?")) == {old_id, new_id}


def test_feedback_delete_is_soft_and_recoverable(api: tuple[httpx.Client, Script]) -> None:
    http, script = api
    script.extract.append(_facts("Omar has a pet snake."))
    snake = _add_fine(http, "omar", "my snake!").json()["data"][0]["memory_id"]
    script.feedback.append('{"operations": [{"op": "delete", "index": 0}], "answer": "Removed."}')
    done = http.post(
        "/product/feedback",
        json={
            "user_id": "omar",
            "feedback_content": "I never had a snake.",
            "retrieved_memory_ids": [snake],
        },
    ).json()["data"]
    assert [d["id"] for d in done["record"]["delete"]] == [snake]
    assert _search(http, "omar", "snake") == []
    http.post("/product/recover_memory", json={"user_id": "omar", "memory_ids": [snake]})
    assert _search(http, "omar", "snake") == [snake]


def test_unreadable_feedback_decision_keeps_the_feedback(api: tuple[httpx.Client, Script]) -> None:
    http, script = api
    script.feedback.append("I am not sure what to do here.")
    response = http.post(
        "/product/feedback",
        json={"user_id": "lena", "feedback_content": "My birthday is on 3 June, not 3 July."},
    )
    assert response.status_code == 200, response.text
    assert "unreadable" in response.json()["message"]
    [kept] = response.json()["data"]["record"]["add"]
    assert kept["text"] == "My birthday is on 3 June, not 3 July."
    assert _search(http, "lena", "birthday") == [kept["id"]]


def test_token_budget_pauses_fine_extraction(api: tuple[httpx.Client, Script]) -> None:
    http, script = api
    script.extract.append(_facts("Kim plays chess."))
    assert _add_fine(http, "kim", "I play chess").status_code == 200
    usage = http.get("/product/cubes/kim/llm_usage", params={"user_id": "kim"}).json()["data"]
    assert usage["calls"] == 1 and usage["total_tokens"] > 0 and usage["budget_tokens"] is None
    budget = http.put("/product/cubes/kim/llm_budget", json={"user_id": "kim", "budget_tokens": 1})
    assert budget.status_code == 200 and budget.json()["data"]["over_budget"]
    paused = _add_fine(http, "kim", "I also play go")  # no scripted answer: no LLM call made
    assert paused.status_code == 200 and "paused" in paused.json()["message"]
    assert [e["action"] for e in paused.json()["data"]] == ["raw"]
    assert (
        http.put(
            "/product/cubes/kim/llm_budget", json={"user_id": "kim", "budget_tokens": -5}
        ).status_code
        == 422
    )


def test_feedback_input_is_checked(api: tuple[httpx.Client, Script]) -> None:
    http, _ = api
    assert (
        http.post("/product/feedback", json={"user_id": "x", "feedback_content": ""}).status_code
        == 422
    )
    assert (
        http.post("/product/feedback", json={"user_id": "x", "feedback_content": "  "}).status_code
        == 400
    )
    assert (
        http.post("/product/recover_memory", json={"user_id": "x", "memory_ids": []}).status_code
        == 422
    )
