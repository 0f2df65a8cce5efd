"""Every MemOS 2.0.33 /product route, judged by MemOS's own models.

Each request body is written by MemOS's request model (its defaults and its conversions,
e.g. `memory_content` into raw message items), each answer must validate against the
response model MemOS's router declares for that route, and the content is checked: what is
added is found, what is deleted is gone, feedback corrects, a task's status is reported.

The service runs on embedded stores with a per-cube scheduler on the session's Ray
cluster. The LLM is a scripted TEST DOUBLE (tests/fixtures/scripted_model.py): the routes'
wiring is under test, not a model's answers. Scheduler tasks run the recording handler of
tests/fixtures/task_handlers.py.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
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
from memos_ray.scheduler.actor import SchedulerClient
from memos_ray.stores.sql.tasks import SQLTaskStore
from tests.conformance.conftest import Memos
from tests.conformance.memos_wheel import build
from tests.fixtures.scripted_model import ScriptedChatModel
from tests.fixtures.servers import serve_in_thread
from tests.fixtures.traces import weather_trace

pytestmark = pytest.mark.ray

ADMIN = "conformance-admin-key-0123456789"
CHAT_ANSWER = "You keep the spare key under the blue flowerpot."
RECORDER = "tests.fixtures.task_handlers:record"


def _scripted(request: ChatRequest) -> str:
    """Answers by kind of request, told apart by the system prompt."""
    system = request.messages[0].content
    user = request.messages[-1].content
    if system.startswith("You turn a conversation"):
        facts = [
            {"key": "", "memory_type": "UserMemory", "value": line}
            for line in user.splitlines()
            if "blue flowerpot" in line
        ][:1]
        preferences = [{"preference": "The user prefers window seats", "kind": "explicit"}]
        return json.dumps({"memories": facts, "preferences": preferences})
    if system.startswith("You compare"):
        return json.dumps({"decision": "keep", "operations": []})
    if system.startswith("The user corrects"):
        return json.dumps(
            {
                "operations": [{"op": "add", "text": "The spare key is now in the mailbox."}],
                "answer": "Noted: the key is in the mailbox.",
            }
        )
    if system.startswith("Suggest"):
        return json.dumps({"query": ["Where is the spare key?", "What seats do I like?"]})
    return CHAT_ANSWER


@dataclass
class Service:
    http: httpx.Client
    stack: LocalStack

    def call(self, method: str, path: str, key: str = ADMIN, **kw: Any) -> httpx.Response:
        headers = {"Authorization": f"Token {key}"}
        return self.http.request(method, path, headers=headers, **kw)

    def post(self, path: str, body: Any, key: str = ADMIN) -> httpx.Response:
        return self.call("POST", path, key, json=body)


@pytest.fixture(scope="module")
def service(
    ray_cluster: None,
    tmp_path_factory: pytest.TempPathFactory,
    embedder: SentenceTransformerEmbedder,
) -> Iterator[Service]:
    config = MemosConfig(
        data_dir=tmp_path_factory.mktemp("conformance"),
        admin_key=ADMIN,
        scheduler={
            "handlers": {"mem_read": RECORDER, "mem_feedback": RECORDER},
            "idle_exit_s": 30,
        },
    ).resolved()
    with LocalStack(config, embedder=embedder, chat=ScriptedChatModel(_scripted)) as stack:
        tasks = SQLTaskStore(stack.services.access.tenancy.engine)  # type: ignore[attr-defined]
        context = ApiContext.of(stack.services, __version__, SchedulerClient(config, tasks))
        with (
            serve_in_thread(create_app(lambda: context)) as url,
            httpx.Client(base_url=url, timeout=60) as http,
        ):
            yield Service(http, stack)


def _valid(model: type, response: httpx.Response, status: int = 200) -> Any:
    """The answer, validated by MemOS's response model."""
    assert response.status_code == status, response.text
    return model.model_validate(response.json())


def _sse(response: httpx.Response) -> list[dict[str, Any]]:
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("text/event-stream")
    return [
        json.loads(line[5:].strip())
        for line in response.text.splitlines()
        if line.startswith("data:")
    ]


@pytest.fixture(scope="module")
def user() -> str:
    return f"ann-{uuid.uuid4().hex[:6]}"


@pytest.fixture(scope="module")
def added(service: Service, memos: Memos, user: str) -> dict[str, Any]:
    """A sync fine add (facts + a preference), a tool trace, and an async add (a task)."""
    m = memos.models
    fine = build(
        m.APIADDRequest,
        user_id=user,
        async_mode="sync",
        mode="fine",
        session_id="s1",
        messages=[{"role": "user", "content": "I keep the spare key under the blue flowerpot."}],
    )
    answer = _valid(m.MemoryResponse, service.post("/product/add", fine))
    tool = build(
        m.APIADDRequest,
        user_id=user,
        async_mode="sync",
        mode="fast",
        messages=weather_trace("What is the weather in Oslo?", "Oslo", "Snow, -3 C"),
    )
    _valid(m.MemoryResponse, service.post("/product/add", tool))
    later = build(
        m.APIADDRequest,
        user_id=user,
        task_id=f"req-{uuid.uuid4().hex[:6]}",
        messages=[{"role": "user", "content": "My sister Tove lives in Bergen."}],
    )
    queued = _valid(m.MemoryResponse, service.post("/product/add", later))
    task_ids = {e["task_id"] for e in queued.data if e.get("task_id")}
    assert len(task_ids) == 1, queued.data
    facts = [e for e in answer.data if "blue flowerpot" in e["memory"]]
    assert facts, answer.data
    return {
        "memory_id": facts[0]["memory_id"],
        "task_id": task_ids.pop(),
        "request_task_id": later["task_id"],
    }


def _search(service: Service, memos: Memos, user: str, query: str, **kw: Any) -> Any:
    body = build(memos.models.APISearchRequest, user_id=user, query=query, relativity=0, **kw)
    return _valid(memos.models.SearchResponse, service.post("/product/search", body)).data


def _texts(data: dict[str, Any], bucket: str = "text_mem") -> list[str]:
    return [m["memory"] for b in data[bucket] for m in b["memories"]]


def test_add_and_search(service: Service, memos: Memos, user: str, added: dict) -> None:
    data = _search(service, memos, user, "where is the spare key")
    assert any("blue flowerpot" in t for t in _texts(data))
    assert "window seats" in " ".join(_texts(data, "pref_mem"))
    assert "get_weather" in " ".join(_texts(data, "tool_mem"))


@pytest.mark.parametrize(
    ("kind", "bucket", "expected"),
    [
        ("LongTermMemory,UserMemory", "text_mem", "blue flowerpot"),
        ("PreferenceMemory", "pref_mem", "window seats"),
        ("ToolTrajectoryMemory", "tool_mem", "get_weather"),
        ("SkillMemory", "skill_mem", None),
        ("AllSummaryMemory", "text_mem", None),
    ],
)
def test_search_by_memory_type(
    service: Service,
    memos: Memos,
    user: str,
    added: dict,
    kind: str,
    bucket: str,
    expected: str | None,
) -> None:
    data = _search(service, memos, user, "spare key seats weather", search_memory_type=kind)
    found = " ".join(_texts(data, bucket))
    if expected is None:
        assert found == ""
    else:
        assert expected in found
    if kind != "LongTermMemory,UserMemory":
        assert not _texts(data, "text_mem") or bucket == "text_mem"


def test_memory_content_and_doc_path(service: Service, memos: Memos, user: str) -> None:
    m = memos.models
    body = build(
        m.APIADDRequest,
        user_id=user,
        async_mode="sync",
        memory_content="The boat is moored at pier nine.",
    )
    assert body["messages"][0]["type"] == "text"  # MemOS's own conversion
    _valid(m.MemoryResponse, service.post("/product/add", body))
    assert any("pier nine" in t for t in _texts(_search(service, memos, user, "boat pier")))
    body = build(m.APIADDRequest, user_id=user, async_mode="sync", doc_path="/etc/passwd")
    refused = _valid(m.MemoryResponse, service.post("/product/add", body), status=400)
    assert "file_data" in refused.message


def test_add_to_a_new_cube_makes_it(service: Service, memos: Memos, user: str) -> None:
    m = memos.models
    cube = f"notes-{uuid.uuid4().hex[:6]}"
    body = build(
        m.APIADDRequest,
        user_id=user,
        writable_cube_ids=[cube],
        async_mode="sync",
        messages=[{"role": "user", "content": "Cube notes: the gate code is 4711."}],
    )
    answer = _valid(m.MemoryResponse, service.post("/product/add", body))
    assert {e["cube_id"] for e in answer.data} == {cube}
    exists = build(m.ExistMemCubeIdRequest, mem_cube_id=cube)
    found = _valid(m.ExistMemCubeIdResponse, service.post("/product/exist_mem_cube_id", exists))
    assert found.data == {cube: True}
    absent = build(m.ExistMemCubeIdRequest, mem_cube_id=f"none-{uuid.uuid4().hex}")
    missing = _valid(m.ExistMemCubeIdResponse, service.post("/product/exist_mem_cube_id", absent))
    assert list(missing.data.values()) == [False]


def test_get_memory_and_by_id(service: Service, memos: Memos, user: str, added: dict) -> None:
    m = memos.models
    body = build(m.GetMemoryRequest, mem_cube_id=user, page=1, page_size=50)
    data = _valid(m.GetMemoryResponse, service.post("/product/get_memory", body)).data
    assert any(x["id"] == added["memory_id"] for x in data["text_mem"][0]["memories"])
    assert "window seats" in " ".join(_texts(data, "pref_mem"))
    assert "get_weather" in " ".join(_texts(data, "tool_mem"))
    dash = build(m.GetMemoryDashboardRequest, mem_cube_id=user)
    board = _valid(m.GetMemoryResponse, service.post("/product/get_memory_dashboard", dash))
    assert any(x["id"] == added["memory_id"] for x in board.data["text_mem"][0]["memories"])
    one = _valid(
        m.GetMemoryResponse, service.call("GET", f"/product/get_memory/{added['memory_id']}")
    )
    assert "blue flowerpot" in one.data["memory"]
    unknown = _valid(
        m.GetMemoryResponse, service.call("GET", f"/product/get_memory/{uuid.uuid4()}")
    )
    assert unknown.data is None
    many = service.post("/product/get_memory_by_ids", [added["memory_id"]])
    assert _valid(m.GetMemoryResponse, many).data["memories"][0]["id"] == added["memory_id"]
    names = build(m.GetUserNamesByMemoryIdsRequest, memory_ids=[added["memory_id"], "nope"])
    owners = _valid(
        m.GetUserNamesByMemoryIdsResponse,
        service.post("/product/get_user_names_by_memory_ids", names),
    )
    assert owners.data == {added["memory_id"]: user, "nope": None}


@pytest.mark.parametrize("memory_type", ["text_mem", "act_mem", "param_mem", "para_mem"])
def test_get_all(service: Service, memos: Memos, user: str, added: dict, memory_type: str) -> None:
    m = memos.models
    body = build(
        m.GetMemoryPlaygroundRequest, user_id=user, memory_type=memory_type, mem_cube_ids=[user]
    )
    data = _valid(m.MemoryResponse, service.post("/product/get_all", body)).data
    nodes = [n["id"] for n in data[0]["memories"][0]["nodes"]] if data[0]["memories"] else []
    assert (added["memory_id"] in nodes) == (memory_type == "text_mem")
    query = build(
        m.GetMemoryPlaygroundRequest,
        memory_type="text_mem",
        user_id=user,
        search_query="spare key",
        mem_cube_ids=[user],
    )
    graph = _valid(m.MemoryResponse, service.post("/product/get_all", query)).data
    assert graph[0]["memories"][0]["nodes"]


def test_cubes(service: Service, memos: Memos, user: str) -> None:
    m = memos.models
    cube = f"team-{uuid.uuid4().hex[:6]}"
    body = build(m.CreateCubeRequest, cube_name="Team", owner_id=user, cube_id=cube)
    made = _valid(m.CreateCubeResponse, service.post("/product/create_cube", body))
    assert made.data.cube_id == cube and made.data.owner_id == user
    again = build(m.RegisterCubeRequest, mem_cube_name_or_path=cube, user_id=user)
    registered = _valid(m.RegisterCubeResponse, service.post("/product/register_cube", again))
    assert registered.data.cube_id == cube
    path = build(m.RegisterCubeRequest, mem_cube_name_or_path="/var/cubes/x", user_id=user)
    refused = _valid(m.RegisterCubeResponse, service.post("/product/register_cube", path), 400)
    assert "path" in refused.message


def test_scheduler_routes(service: Service, memos: Memos, user: str, added: dict) -> None:
    m = memos.models
    waited = service.call(
        "POST", "/product/scheduler/wait", params={"user_name": user, "timeout_seconds": 60}
    )
    assert waited.status_code == 200, waited.text
    assert waited.json()["data"]["running_tasks"] == 0
    for task_id in (added["task_id"], added["request_task_id"]):
        status = _valid(
            m.StatusResponse,
            service.call(
                "GET", "/product/scheduler/status", params={"user_id": user, "task_id": task_id}
            ),
        )
        assert [t.status for t in status.data] == ["completed"]
    every = _valid(
        m.StatusResponse, service.call("GET", "/product/scheduler/status", params={"user_id": user})
    )
    assert added["task_id"] in {t.task_id for t in every.data}
    _valid(
        m.StatusResponse,
        service.call(
            "GET", "/product/scheduler/status", params={"user_id": user, "task_id": "no-such-task"}
        ),
        status=404,
    )
    summary = _valid(m.AllStatusResponse, service.call("GET", "/product/scheduler/allstatus"))
    assert summary.data.all_tasks_summary.completed >= 1
    theirs = service.call("GET", "/product/scheduler/allstatus", params={"user_id": user})
    counted = _valid(m.AllStatusResponse, theirs).data.all_tasks_summary
    assert counted.total == len(every.data) == counted.completed  # every one of them ran
    assert summary.data.all_tasks_summary.total >= counted.total
    queue = _valid(
        m.TaskQueueResponse,
        service.call("GET", "/product/scheduler/task_queue_status", params={"user_id": user}),
    )
    assert queue.data.user_id == user and queue.data.remaining_tasks_count == 0
    frames = _sse(
        service.call(
            "GET",
            "/product/scheduler/wait/stream",
            params={"user_name": user, "timeout_seconds": 10},
        )
    )
    assert frames[-1]["status"] == "idle" and frames[-1]["active_tasks"] == 0


def test_chat_routes(service: Service, memos: Memos, user: str, added: dict) -> None:
    m = memos.models
    common = {"user_id": user, "query": "Where is my spare key?", "add_message_on_answer": False}
    complete = service.post("/product/chat/complete", build(m.APIChatCompleteRequest, **common))
    assert complete.status_code == 200, complete.text
    assert complete.json()["data"]["response"] == CHAT_ANSWER
    for path, model, extra in (
        ("/product/chat/stream", m.ChatRequest, {}),
        (
            "/product/chat/stream/playground",
            m.ChatPlaygroundRequest,
            {"beginner_guide_step": "first"},
        ),
        ("/product/chat/stream/business_user", m.ChatBusinessRequest, {"business_key": "shop-1"}),
    ):
        response = service.post(path, build(model, **common, **extra))
        # What proxies need to pass a stream through at once, and keep it open.
        assert response.headers["cache-control"] == "no-cache", path
        assert response.headers["x-accel-buffering"] == "no", path
        frames = _sse(response)
        text = "".join(f["data"] for f in frames if f["type"] == "text")
        assert text == CHAT_ANSWER, (path, frames)
        assert frames[-1]["type"] == "end"


def test_suggestions(service: Service, memos: Memos, user: str, added: dict) -> None:
    m = memos.models
    body = build(m.SuggestionRequest, user_id=user, mem_cube_id=user, language="en")
    answer = _valid(m.SuggestionResponse, service.post("/product/suggestions", body))
    assert answer.data == {"query": ["Where is the spare key?", "What seats do I like?"]}


def test_feedback_corrects(service: Service, memos: Memos, user: str, added: dict) -> None:
    m = memos.models
    body = build(
        m.APIFeedbackRequest,
        user_id=user,
        async_mode="sync",
        corrected_answer=True,
        history=[
            {"role": "user", "content": "Where is the spare key?"},
            {"role": "assistant", "content": "Under the blue flowerpot."},
        ],
        feedback_content="No, I moved the key to the mailbox.",
    )
    answer = _valid(m.MemoryResponse, service.post("/product/feedback", body))
    [record] = answer.data
    assert record["answer"] == "Noted: the key is in the mailbox."
    assert record["record"]["add"][0]["text"] == "The spare key is now in the mailbox."
    assert any("mailbox" in t for t in _texts(_search(service, memos, user, "spare key")))
    as_add = build(
        m.APIADDRequest,
        user_id=user,
        async_mode="sync",
        is_feedback=True,
        messages=[{"role": "user", "content": "Actually the key is in the mailbox."}],
    )
    via_add = _valid(m.MemoryResponse, service.post("/product/add", as_add))
    assert via_add.data[0]["record"]["add"], via_add.data


def test_delete_and_records(service: Service, memos: Memos, added: dict) -> None:
    m = memos.models
    owner = f"dee-{uuid.uuid4().hex[:6]}"
    for text, session in (("Dee's bike is red.", "a"), ("Dee's car is blue.", "b")):
        body = build(
            m.APIADDRequest,
            user_id=owner,
            async_mode="sync",
            session_id=session,
            messages=[{"role": "user", "content": text}],
        )
        _valid(m.MemoryResponse, service.post("/product/add", body))
    by_ids = [
        x["id"]
        for x in _search(service, memos, owner, "bike")["text_mem"][0]["memories"]
        if "bike" in x["memory"]
    ]
    body = build(m.DeleteMemoryRequest, writable_cube_ids=[owner], memory_ids=by_ids)
    assert body.get("user_id") is None  # MemOS's form names no user
    _valid(m.DeleteMemoryResponse, service.post("/product/delete_memory", body))
    assert not any("bike" in t for t in _texts(_search(service, memos, owner, "bike")))
    quick = build(m.DeleteMemoryRequest, writable_cube_ids=[owner], conversation_id="b")
    _valid(m.DeleteMemoryResponse, service.post("/product/delete_memory", quick))
    assert not any("car" in t for t in _texts(_search(service, memos, owner, "car")))

    for text in ("Dee plays the cello.", "Dee reads Ibsen."):
        body = build(
            m.APIADDRequest,
            user_id=owner,
            async_mode="sync",
            messages=[{"role": "user", "content": text}],
        )
        _valid(m.MemoryResponse, service.post("/product/add", body))
    soft = build(m.DeleteMemoryByRecordIdRequest, mem_cube_id=owner, record_id="r1")
    _valid(
        m.DeleteMemoryByRecordIdResponse, service.post("/product/delete_memory_by_record_id", soft)
    )
    assert not _texts(_search(service, memos, owner, "cello Ibsen"))
    back = build(m.RecoverMemoryByRecordIdRequest, mem_cube_id=owner, delete_record_id="r1")
    _valid(
        m.RecoverMemoryByRecordIdResponse,
        service.post("/product/recover_memory_by_record_id", back),
    )
    assert any("cello" in t for t in _texts(_search(service, memos, owner, "cello")))
    _valid(
        m.DeleteMemoryByRecordIdResponse, service.post("/product/delete_memory_by_record_id", soft)
    )
    hard = build(
        m.DeleteMemoryByRecordIdRequest, mem_cube_id=owner, record_id="r1", hard_delete=True
    )
    purged = _valid(
        m.DeleteMemoryByRecordIdResponse, service.post("/product/delete_memory_by_record_id", hard)
    )
    assert purged.data["count"] == 2
    _valid(
        m.RecoverMemoryByRecordIdResponse,
        service.post("/product/recover_memory_by_record_id", back),
    )
    assert not _texts(_search(service, memos, owner, "cello Ibsen"))


def test_every_memos_product_route_is_served(service: Service, memos: Memos) -> None:
    """The route table of MemOS's router file, against this app's."""
    import ast
    from pathlib import Path

    source = Path(memos.models.__file__).parent / "routers" / "server_router.py"
    theirs = set()
    for node in ast.walk(ast.parse(source.read_text())):
        if not (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)):
            continue
        func = node.func
        routed = isinstance(func.value, ast.Name) and func.value.id == "router"
        if routed and func.attr in ("get", "post") and isinstance(node.args[0], ast.Constant):
            theirs.add((func.attr.upper(), f"/product{node.args[0].value}"))
    assert len(theirs) == 25
    app = service.http.get("/openapi.json").json()["paths"]
    ours = {(method.upper(), path) for path, item in app.items() for method in item}
    assert theirs - ours == set()


@pytest.fixture(scope="module")
def tenants(service: Service) -> dict[str, str]:
    """Two users with their own keys; alice owns a memory and a finished task."""
    names: dict[str, str] = {}
    for who in ("alice", "bob"):
        user_id = f"{who}-{uuid.uuid4().hex[:6]}"
        made = service.post("/admin/users", {"user_id": user_id})
        assert made.status_code == 200, made.text
        names[who], names[f"{who}_key"] = user_id, made.json()["data"]["api_key"]
    alice, key = names["alice"], names["alice_key"]
    body = {"user_id": alice, "async_mode": "sync", "messages": "Alice's safe code is 2718."}
    added = service.post("/product/add", body, key=key)
    assert added.status_code == 200, added.text
    names["memory_id"] = added.json()["data"][0]["memory_id"]
    queued = service.post("/product/add", {"user_id": alice, "messages": "Alice likes tea."}, key)
    assert queued.status_code == 200, queued.text
    names["task_id"] = queued.json()["data"][0]["task_id"]
    waited = service.call(
        "POST", "/product/scheduler/wait", key, params={"user_name": alice, "timeout_seconds": 60}
    )
    assert waited.json()["data"]["running_tasks"] == 0
    return names


def test_no_new_route_crosses_tenants(service: Service, tenants: dict[str, str]) -> None:
    """Bob's key against Alice's cube, ids and tasks, through every route added for MemOS:
    each is refused, or answers as if Alice's things did not exist."""
    alice, bob, key = tenants["alice"], tenants["bob"], tenants["bob_key"]
    memory_id = tenants["memory_id"]

    def post(path: str, body: Any) -> httpx.Response:
        return service.post(path, body, key=key)

    def get(path: str, **params: Any) -> httpx.Response:
        return service.call("GET", path, key, params=params)

    refused = {
        "register": post("/product/register_cube", {"mem_cube_name_or_path": alice}),
        "dashboard": post("/product/get_memory_dashboard", {"mem_cube_id": alice}),
        "get_memory": post("/product/get_memory", {"mem_cube_id": alice}),
        "record delete": post(
            "/product/delete_memory_by_record_id", {"mem_cube_id": alice, "record_id": "x"}
        ),
        "record hard delete": post(
            "/product/delete_memory_by_record_id",
            {"mem_cube_id": alice, "record_id": "x", "hard_delete": True},
        ),
        "record recover": post(
            "/product/recover_memory_by_record_id", {"mem_cube_id": alice, "delete_record_id": "x"}
        ),
        "suggestions": post("/product/suggestions", {"mem_cube_id": alice, "language": "en"}),
        "add to alice": post("/product/add", {"writable_cube_ids": [alice], "messages": "hi"}),
        "feedback add": post(
            "/product/add",
            {
                "writable_cube_ids": [alice],
                "is_feedback": True,
                "messages": [{"role": "user", "content": "no"}],
            },
        ),
        "quick delete": post("/product/delete_memory", {"user_id": alice}),
        "delete ids": post(
            "/product/delete_memory", {"writable_cube_ids": [alice], "memory_ids": [memory_id]}
        ),
        "search prefs": post(
            "/product/search",
            {
                "user_id": bob,
                "query": "code",
                "readable_cube_ids": [alice],
                "search_memory_type": "PreferenceMemory",
            },
        ),
        "playground": post(
            "/product/chat/stream/playground",
            {"user_id": bob, "query": "code?", "readable_cube_ids": [alice]},
        ),
        "business": post(
            "/product/chat/stream/business_user",
            {"user_id": bob, "query": "code?", "readable_cube_ids": [alice], "business_key": "b"},
        ),
        "status": get("/product/scheduler/status", user_id=alice),
        "queue": get("/product/scheduler/task_queue_status", user_id=alice),
        "wait": service.call(
            "POST",
            "/product/scheduler/wait",
            key,
            params={"user_name": alice, "timeout_seconds": 1},
        ),
        "wait stream": get("/product/scheduler/wait/stream", user_name=alice),
    }
    for what, response in refused.items():
        assert response.status_code == 403, (what, response.status_code, response.text)

    assert post("/product/exist_mem_cube_id", {"mem_cube_id": alice}).json()["data"] == {
        alice: False
    }
    owners = post("/product/get_user_names_by_memory_ids", {"memory_ids": [memory_id]})
    assert owners.json()["data"] == {memory_id: None}
    assert get(f"/product/get_memory/{memory_id}").json()["data"] is None
    own_task = get("/product/scheduler/status", user_id=bob, task_id=tenants["task_id"])
    assert own_task.status_code == 404
    summary = get("/product/scheduler/allstatus").json()["data"]["all_tasks_summary"]
    assert summary["total"] == 0  # bob has no tasks; alice's are not counted for him

    # Bob's own new cube is his: alice cannot read it.
    mine = f"bobs-{uuid.uuid4().hex[:6]}"
    made = post(
        "/product/add",
        {"writable_cube_ids": [mine], "async_mode": "sync", "messages": "Bob's bike lock is 1234."},
    )
    assert made.status_code == 200, made.text
    peek = service.post(
        "/product/search",
        {"user_id": alice, "query": "bike lock", "readable_cube_ids": [mine]},
        key=tenants["alice_key"],
    )
    assert peek.status_code == 403

    # Alice's memory is untouched, and still hers.
    body = {"user_id": alice, "query": "safe code", "relativity": 0}
    found = service.post("/product/search", body, key=tenants["alice_key"]).json()["data"]
    assert memory_id in [m["id"] for m in found["text_mem"][0]["memories"]]


def test_a_read_key_changes_nothing_through_new_routes(
    service: Service, memos: Memos, tenants: dict[str, str]
) -> None:
    alice = tenants["alice"]
    made = service.post("/admin/keys", build(memos.admin.CreateKeyRequest, user_name=alice))
    key = memos.admin.CreateKeyResponse.model_validate(made.json()).key  # MemOS's default: read
    writes = {
        "record delete": (
            "/product/delete_memory_by_record_id",
            {"mem_cube_id": alice, "record_id": "r"},
        ),
        "record recover": (
            "/product/recover_memory_by_record_id",
            {"mem_cube_id": alice, "delete_record_id": "r"},
        ),
        "register new": (
            "/product/register_cube",
            {"mem_cube_name_or_path": f"new-{uuid.uuid4().hex[:6]}"},
        ),
        "add to new": (
            "/product/add",
            {"writable_cube_ids": [f"new-{uuid.uuid4().hex[:6]}"], "messages": "x"},
        ),
        "feedback add": ("/product/add", {"is_feedback": True, "messages": "no"}),
        "quick delete": ("/product/delete_memory", {"user_id": alice}),
    }
    for what, (path, body) in writes.items():
        response = service.post(path, body, key=key)
        assert response.status_code == 403, (what, response.text)
    read = service.post("/product/search", {"user_id": alice, "query": "safe code"}, key=key)
    assert read.status_code == 200, read.text
    body = {"user_id": alice, "query": "safe code", "relativity": 0}
    found = service.post("/product/search", body, key=key).json()["data"]
    assert tenants["memory_id"] in [m["id"] for m in found["text_mem"][0]["memories"]]


def test_a_self_declared_user_name_is_not_trusted(
    service: Service, tenants: dict[str, str]
) -> None:
    """MemOS without auth takes `X-User-Name` at its word; with keys on, only the key counts."""
    alice = tenants["alice"]
    body = {"user_id": alice, "query": "safe code", "relativity": 0}
    bare = service.http.post("/product/search", json=body, headers={"X-User-Name": alice})
    assert bare.status_code == 401
    headers = {"X-User-Name": alice, "Authorization": f"Token {tenants['bob_key']}"}
    as_bob = service.http.post("/product/search", json=body, headers=headers)
    assert as_bob.status_code == 403  # bob's key may not act as alice, whatever the header
    mine = {"user_id": tenants["bob"], "query": "safe code", "relativity": 0}
    found = service.http.post("/product/search", json=mine, headers=headers).json()["data"]
    assert all(b["cube_id"] == tenants["bob"] for b in found["text_mem"])
    assert tenants["memory_id"] not in [m["id"] for b in found["text_mem"] for m in b["memories"]]
