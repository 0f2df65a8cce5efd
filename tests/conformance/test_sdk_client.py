"""MemOS's own SDK (`memos.api.client.MemOSClient`, MemOS 2.0.33) against memos-ray.

Each SDK method is called as an application would, with `base_url` at /api/openmem/v1; the
SDK parses every answer into its own response models, and the tests check what the answers
say: an added message is found again, a deleted one is gone, a knowledge-base file is
searchable until it is deleted. Chat and feedback run on the scripted TEST DOUBLE of the
chat model (tests/fixtures/scripted_model.py): they check the wiring, not a model's answers.
Error cases go through httpx (the SDK retries and logs on errors).
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest

from memos_ray import __version__
from memos_ray.api.app import create_app
from memos_ray.api.context import ApiContext
from memos_ray.config import MemosConfig
from memos_ray.models.chat import ChatRequest
from memos_ray.models.embedder import SentenceTransformerEmbedder
from memos_ray.runtime.compose import LocalStack
from memos_ray.stores.sql.tasks import SQLTaskStore, Task
from tests.conformance.conftest import Memos
from tests.fixtures.api import ADMIN_KEY, RunningApi
from tests.fixtures.scripted_model import ScriptedChatModel
from tests.fixtures.servers import serve_in_thread

PREFIX = "/api/openmem/v1"


def _client(memos: Memos, url: str, key: str = "any-key-in-open-mode") -> Any:
    return memos.client.MemOSClient(api_key=key, base_url=f"{url}{PREFIX}")


def _values(memories: list[Any]) -> list[str]:
    return [m.memory_value for m in memories]


def _ids(memories: list[Any]) -> list[str]:
    return [m.id for m in memories]


CONVERSATION = [
    {
        "role": "user",
        "content": "I adopted a grey cat named Miso.",
        "chat_time": "2026-05-02T10:00",
    },
    {"role": "assistant", "content": "Congratulations on Miso!", "chat_time": "2026-05-02T10:01"},
    {"role": "user", "content": "She loves tuna.", "chat_time": "2026-05-02T10:02"},
]


def test_messages_are_added_found_listed_and_deleted(open_api: RunningApi, memos: Memos) -> None:
    client = _client(memos, open_api.url)
    added = client.add_message(CONVERSATION, user_id="sdk-ann", conversation_id="conv-1")
    assert isinstance(added, memos.models.MemOSAddResponse)
    assert added.code == 200 and added.success and added.task_id

    status = client.get_task_status(added.task_id)
    assert isinstance(status, memos.models.MemOSGetTaskStatusResponse)
    assert status.data.task_id == added.task_id and status.data.status == "completed"

    found = client.search_memory("What is my cat called?", user_id="sdk-ann")
    assert isinstance(found, memos.models.MemOSSearchResponse)
    [cat] = [m for m in found.memories if "Miso" in m.memory_value]
    assert cat.conversation_id == "conv-1" and cat.relativity > 0

    listed = client.get_memory(user_id="sdk-ann", size=50)
    assert isinstance(listed, memos.models.MemOSGetMemoryResponse)
    assert cat.id in _ids(listed.memories) and listed.data.total == len(listed.memories)
    assert listed.data.current == 1 and listed.data.pages == 1

    one = client.get_memory_by_id(cat.id)
    assert one["code"] == 200 and one["data"]["id"] == cat.id
    assert "Miso" in one["data"]["memory_value"]

    messages = client.get_message(user_id="sdk-ann", conversation_id="conv-1")
    assert isinstance(messages, memos.models.MemOSGetMessagesResponse)
    got = [(m.role, m.content) for m in messages.messages]
    assert got == [(m["role"], m["content"]) for m in CONVERSATION]
    assert messages.messages[0].create_time == "2026-05-02T10:00"
    last = client.get_message(user_id="sdk-ann", conversation_id="conv-1", message_limit_number=1)
    assert [m.content for m in last.messages] == ["She loves tuna."]
    other = client.get_message(user_id="sdk-ann", conversation_id="no-such-conversation")
    assert other.messages == []

    deleted = client.delete_memory(memory_ids=[cat.id])
    assert isinstance(deleted, memos.models.MemOSDeleteMemoryResponse) and deleted.success
    assert cat.id not in _ids(client.search_memory("cat Miso", user_id="sdk-ann").memories)
    assert cat.id not in _ids(client.get_memory(user_id="sdk-ann", size=50).memories)
    gone = open_api.http.get(f"{PREFIX}/get/memory/{cat.id}")
    assert gone.status_code == 404 and gone.json()["code"] == 404


def test_agent_id_stands_for_the_user_and_a_user_can_be_cleared(
    open_api: RunningApi, memos: Memos
) -> None:
    client = _client(memos, open_api.url)
    message = [{"role": "user", "content": "The deploy window is Thursday at noon."}]
    added = client.add_message(message, agent_id="sdk-agent-7", async_mode=False)
    assert added.success and added.status == "completed"
    found = client.search_memory("When is the deploy window?", agent_id="sdk-agent-7")
    assert any("Thursday" in v for v in _values(found.memories))
    assert client.get_memory(agent_id="sdk-agent-7").data.total == 1

    cleared = client.delete_memory(user_id="sdk-agent-7")
    assert cleared.success
    assert client.get_memory(agent_id="sdk-agent-7").memories == []


def test_knowledge_base_files_are_searchable_until_deleted(
    open_api: RunningApi, memos: Memos, tmp_path: Path
) -> None:
    client = _client(memos, open_api.url)
    created = client.create_knowledgebase("Travel handbook", "expense rules")
    assert isinstance(created, memos.models.MemOSCreateKnowledgebaseResponse)
    kb_id = created.knowledgebase_id

    hotel = "Hotel nights are reimbursed up to 180 euros per night in every city."
    added = client.add_knowledgebase_file_json(
        kb_id, [{"name": "hotels.md", "content": f"# Hotels\n\n{hotel}"}]
    )
    assert isinstance(added, memos.models.MemOSAddKnowledgebaseFileResponse)
    [hotel_file] = added.data
    assert hotel_file["name"] == "hotels.md" and hotel_file["status"] == "completed"
    assert hotel_file["chunks"] == 1

    parking = tmp_path / "parking.txt"
    parking.write_text("Airport parking is paid back for at most three days.\n")
    form = client.add_knowledgebase_file_form(kb_id, [str(parking)])
    [parking_file] = form.data
    assert parking_file["name"] == "parking.txt" and parking_file["chunks"] == 1

    files = client.get_knowledgebase_file(knowledgebase_id=kb_id)
    assert isinstance(files, memos.models.MemOSGetKnowledgebaseFileResponse)
    assert [f.name for f in files.files] == ["hotels.md", "parking.txt"]
    assert files.data.total == 2
    by_id = client.get_knowledgebase_file(file_ids=[parking_file["id"]])
    assert [f.id for f in by_id.files] == [parking_file["id"]]

    def kb_search(query: str) -> list[str]:
        return _values(
            client.search_memory(query, user_id="sdk-bea", knowledgebase_ids=[kb_id]).memories
        )

    assert any(hotel in v for v in kb_search("How much is a hotel night reimbursed?"))
    assert any("Airport parking" in v for v in kb_search("How many days of airport parking?"))
    # Not in the user's own memory: only through knowledgebase_ids.
    own = client.search_memory("How much is a hotel night reimbursed?", user_id="sdk-bea")
    assert not any(hotel in v for v in _values(own.memories))

    dropped = client.delete_knowledgebase_file([hotel_file["id"]])
    assert isinstance(dropped, memos.models.MemOSDeleteKnowledgebaseResponse) and dropped.success
    assert not any(hotel in v for v in kb_search("How much is a hotel night reimbursed?"))
    left = client.get_knowledgebase_file(knowledgebase_id=kb_id)
    assert [f.id for f in left.files] == [parking_file["id"]]

    removed = client.delete_knowledgebase(kb_id)
    assert removed.success
    assert client.get_knowledgebase_file(knowledgebase_id=kb_id).files == []
    assert not any("Airport parking" in v for v in kb_search("airport parking days"))


def test_errors_keep_memos_rays_envelope(open_api: RunningApi) -> None:
    http = open_api.http
    no_llm = http.post(
        f"{PREFIX}/add/feedback", json={"user_id": "sdk-cy", "feedback_content": "Wrong."}
    )
    assert no_llm.status_code == 503
    assert no_llm.json()["code"] == 503 and no_llm.json()["data"] is None
    assert (
        http.post(
            f"{PREFIX}/chat", json={"user_id": "sdk-cy", "conversation_id": "c", "query": "hi"}
        ).status_code
        == 503
    )
    invalid = http.post(f"{PREFIX}/search/memory", json={"user_id": "sdk-cy"})
    assert invalid.status_code == 422 and invalid.json()["code"] == 422
    unknown = http.post(f"{PREFIX}/get/status", json={"task_id": "no-such-task"})
    assert unknown.status_code == 404
    kb_id = http.post(f"{PREFIX}/create/knowledgebase", json={"knowledgebase_name": "kb"}).json()[
        "data"
    ]["id"]
    for file in (
        {"content": "https://example.com/file.docx"},
        {"content": "# skill", "type": "skill"},
    ):
        refused = http.post(
            f"{PREFIX}/add/knowledgebase-file", json={"knowledgebase_id": kb_id, "file": [file]}
        )
        assert refused.status_code == 400, refused.text
    missing = http.post(
        f"{PREFIX}/add/knowledgebase-file",
        json={"knowledgebase_id": "no-such-kb", "file": [{"content": "text"}]},
    )
    assert missing.status_code == 404
    bad_file = http.post(f"{PREFIX}/delete/knowledgebase-file", json={"file_ids": ["file_x"]})
    assert bad_file.status_code == 400


# -- tenancy ----------------------------------------------------------------------------------


def _user(api: RunningApi, user_id: str) -> str:
    response = api.post("/admin/users", {"user_id": user_id}, key=ADMIN_KEY)
    assert response.status_code == 200, response.text
    return str(response.json()["data"]["api_key"])


def test_a_user_key_reaches_no_other_users_memory(auth_api: RunningApi, memos: Memos) -> None:
    alice_key, bob_key = _user(auth_api, "alice"), _user(auth_api, "bob")
    alice = _client(memos, auth_api.url, alice_key)
    secret = "Alice's locker code is 4417."
    alice.add_message([{"role": "user", "content": secret}], user_id="alice", conversation_id="a-1")
    [memory_id] = [m.id for m in alice.search_memory("locker code", user_id="alice").memories]
    kb_id = alice.create_knowledgebase("Alice's notes").knowledgebase_id
    [file] = alice.add_knowledgebase_file_json(
        kb_id, [{"name": "notes.txt", "content": "The vault opens at dawn."}]
    ).data

    def as_bob(path: str, body: dict[str, Any]) -> httpx.Response:
        return auth_api.http.post(
            f"{PREFIX}{path}", json=body, headers={"Authorization": f"Token {bob_key}"}
        )

    message = [{"role": "user", "content": "Bob was here."}]
    forbidden = {
        "/search/memory": {"query": "locker code", "user_id": "alice"},
        "/get/memory": {"user_id": "alice"},
        "/get/message": {"user_id": "alice", "conversation_id": "a-1"},
        "/add/message": {"user_id": "alice", "messages": message},
        "/delete/memory": {"user_id": "alice"},
        "/add/knowledgebase-file": {"knowledgebase_id": kb_id, "file": [{"content": "x"}]},
        "/delete/knowledgebase-file": {"file_ids": [file["id"]]},
        "/get/knowledgebase-file": {"knowledgebase_id": kb_id},
        "/delete/knowledgebase": {"knowledgebase_id": kb_id},
    }
    for path, body in forbidden.items():
        response = as_bob(path, body)
        assert response.status_code == 403, (path, response.text)
        assert response.json()["code"] == 403
    kb_search = as_bob(
        "/search/memory", {"query": "vault", "user_id": "bob", "knowledgebase_ids": [kb_id]}
    )
    assert kb_search.status_code == 403

    # Reads by id and deletes by id see nothing of Alice's: no existence leak.
    by_id = auth_api.http.get(
        f"{PREFIX}/get/memory/{memory_id}", headers={"Authorization": f"Token {bob_key}"}
    )
    assert by_id.status_code == 404 and secret not in by_id.text
    files = as_bob("/get/knowledgebase-file", {"file_ids": [file["id"]]})
    assert files.status_code == 200 and files.json()["data"]["file_detail_list"] == []
    delete = as_bob("/delete/memory", {"memory_ids": [memory_id]})
    assert delete.status_code == 200 and delete.json()["data"]["deleted_count"] == 0
    assert alice.get_memory_by_id(memory_id)["data"]["memory_value"].endswith(secret)
    assert any(
        "vault" in v
        for v in _values(
            alice.search_memory("vault", user_id="alice", knowledgebase_ids=[kb_id]).memories
        )
    )

    # Bob's own calls work and show nothing of Alice's.
    bob = _client(memos, auth_api.url, bob_key)
    assert bob.add_message(message, user_id="bob").success
    seen = _values(bob.search_memory("locker code", user_id="bob", relativity=0.0).memories)
    assert seen and not any("4417" in v for v in seen)
    no_key = auth_api.http.post(f"{PREFIX}/get/memory", json={"user_id": "alice"})
    assert no_key.status_code == 401


# -- chat and feedback (scripted LLM) ---------------------------------------------------------


@dataclass
class Script:
    """The scripted model's answers: feedback decisions and chat answers."""

    feedback: list[str] = field(default_factory=list)
    chat: list[str] = field(default_factory=list)
    chat_requests: list[ChatRequest] = field(default_factory=list)

    def __call__(self, request: ChatRequest) -> str:
        if request.messages[0].content.startswith("The user corrects"):
            queue = self.feedback
        else:
            queue = self.chat
            self.chat_requests.append(request)
        assert queue, f"no scripted answer left for: {request.messages[0].content[:40]}"
        return queue.pop(0)


@pytest.fixture(scope="module")
def llm_stack(
    tmp_path_factory: pytest.TempPathFactory, embedder: SentenceTransformerEmbedder
) -> Iterator[tuple[LocalStack, Script]]:
    config = MemosConfig(data_dir=tmp_path_factory.mktemp("sdk-llm")).resolved()
    script = Script()
    with LocalStack(config, embedder=embedder, chat=ScriptedChatModel(script)) as stack:
        yield stack, script


@pytest.fixture(scope="module")
def llm_api(llm_stack: tuple[LocalStack, Script]) -> Iterator[tuple[str, Script]]:
    stack, script = llm_stack
    context = ApiContext.of(stack.services, __version__)
    with serve_in_thread(create_app(lambda: context)) as url:
        yield url, script


def test_chat_answers_with_memory_and_continues_the_conversation(
    llm_api: tuple[str, Script], memos: Memos
) -> None:
    url, script = llm_api
    client = _client(memos, url)
    client.add_message(
        [{"role": "user", "content": "I live in Boston."}],
        user_id="sdk-dan",
        conversation_id="talk",
    )
    script.chat.append("You live in Boston.")
    answer = client.chat(user_id="sdk-dan", conversation_id="talk", query="Where do I live?")
    assert isinstance(answer, memos.models.MemOSChatResponse)
    assert answer.response == "You live in Boston."
    prompt = script.chat_requests[-1].messages
    # The conversation so far is the history.
    assert any(m.role == "user" and m.content == "I live in Boston." for m in prompt[1:-1])
    # The memory (in the activation prefix or beside the question), then the question.
    assert "Boston" in prompt[0].content + prompt[-1].content
    assert prompt[-1].content.endswith("Where do I live?")

    messages = client.get_message(user_id="sdk-dan", conversation_id="talk")
    assert [(m.role, m.content) for m in messages.messages] == [
        ("user", "I live in Boston."),
        ("user", "Where do I live?"),
        ("assistant", "You live in Boston."),
    ]

    script.chat.append("Boston, still.")
    frames = list(
        client.chat(user_id="sdk-dan", conversation_id="talk", query="And now?", stream=True)
    )
    events = [json.loads(f) for f in frames]
    text = "".join(e["data"] for e in events if e["type"] == "text")
    assert text == "Boston, still." and events[-1]["type"] == "end"
    tail = client.get_message(user_id="sdk-dan", conversation_id="talk", message_limit_number=2)
    assert [m.content for m in tail.messages] == ["And now?", "Boston, still."]


def test_feedback_is_applied_and_its_task_reports_completed(
    llm_api: tuple[str, Script], memos: Memos
) -> None:
    url, script = llm_api
    client = _client(memos, url)
    client.add_message(
        [{"role": "user", "content": "I work at the bakery."}],
        user_id="sdk-eve",
        conversation_id="job",
    )
    script.feedback.append(
        json.dumps(
            {
                "operations": [{"op": "add", "text": "Eve now works at the library."}],
                "answer": "Noted: the library.",
            }
        )
    )
    feedback = client.add_feedback(
        user_id="sdk-eve", conversation_id="job", feedback_content="I moved to the library."
    )
    assert isinstance(feedback, memos.models.MemOSAddFeedBackResponse)
    assert feedback.success and feedback.status == "completed"
    assert client.get_task_status(feedback.task_id).data.status == "completed"
    found = client.search_memory("Where does Eve work?", user_id="sdk-eve")
    assert "Eve now works at the library." in _values(found.memories)


class QueueOnly:
    """A TEST DOUBLE of `SchedulerClient`: tasks are recorded in the real task log and left
    waiting (no scheduler actor runs them), so what the routes answer about them is fixed."""

    def __init__(self, tasks: SQLTaskStore) -> None:
        self.tasks = tasks

    def ensure_room(self, cube_ids: Any) -> None:
        pass

    def record(
        self, cube_id: str, user_id: str, label: str, payload: dict[str, Any], **kw: Any
    ) -> Task:
        return self.tasks.enqueue(cube_id, user_id, label, payload, **kw)

    def submit(self, cube_id: str, user_id: str, label: str, payload: dict[str, Any]) -> Task:
        return self.tasks.enqueue(cube_id, user_id, label, payload)

    def wake(self, cube_id: str) -> None:
        pass

    def discard(self, task_ids: Any) -> int:
        return 0


def test_with_a_scheduler_adds_and_feedback_answer_their_queued_tasks(
    llm_stack: tuple[LocalStack, Script], memos: Memos
) -> None:
    stack, _ = llm_stack
    tasks = SQLTaskStore(stack.services.tenancy.engine)
    scheduler: Any = QueueOnly(tasks)
    context = ApiContext.of(stack.services, __version__, scheduler=scheduler)
    with serve_in_thread(create_app(lambda: context)) as url:
        client = _client(memos, url)
        added = client.add_message(
            [{"role": "user", "content": "I collect stamps."}], user_id="sdk-fay"
        )
        assert added.status == "waiting"
        [task] = tasks.get([added.task_id])
        assert task.label == "mem_read" and task.cube_id == "sdk-fay"
        status = client.get_task_status(added.task_id)
        assert status.data.task_id == added.task_id and status.data.status == "waiting"

        feedback = client.add_feedback(user_id="sdk-fay", feedback_content="I quit stamps.")
        assert feedback.status == "waiting"
        [queued] = tasks.get([feedback.task_id])
        assert queued.label == "mem_feedback"
        assert queued.payload["feedback_content"] == "I quit stamps."
        assert client.get_task_status(feedback.task_id).data.status == "waiting"


def test_a_read_scoped_key_only_reads_through_the_sdk(auth_api: RunningApi, memos: Memos) -> None:
    """MemOS's default key scope is `read`: such a key searches and lists, and every SDK
    call that would change memories is refused (403) before anything is written."""
    writer = _client(memos, auth_api.url, _user(auth_api, "rhea"))
    writer.add_message([{"role": "user", "content": "Rhea's boat is called Tern."}], "rhea", "r-1")
    made = auth_api.post("/admin/keys", {"user_name": "rhea", "scopes": ["read"]}, key=ADMIN_KEY)
    assert made.status_code == 200, made.text
    reader = _client(memos, auth_api.url, made.json()["key"])
    found = reader.search_memory("what is the boat called", user_id="rhea")
    assert any("Tern" in m.memory_value for m in found.data.memory_detail_list)
    headers = {"Authorization": f"Token {made.json()['key']}"}
    message = [{"role": "user", "content": "Overwritten."}]
    writes = {
        "/add/message": {"user_id": "rhea", "messages": message},
        "/delete/memory": {"user_id": "rhea"},
        "/add/feedback": {"user_id": "rhea", "feedback_content": "no", "conversation_id": "r-1"},
        "/create/knowledgebase": {"knowledgebase_name": "kb"},
    }
    for path, body in writes.items():
        response = auth_api.http.post(f"{PREFIX}{path}", json=body, headers=headers)
        assert response.status_code == 403, (path, response.text)
    again = reader.search_memory("what is the boat called", user_id="rhea")
    assert any("Tern" in m.memory_value for m in again.data.memory_detail_list)
