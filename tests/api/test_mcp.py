"""MCP against a running service, with the `mcp` package's own client as the referee: over
streamable HTTP (mounted at /mcp) and over stdio (`memos-ray mcp` as a subprocess talking to
the service by URL). Every tool is called on both; tenancy holds through MCP.

The chat model is a scripted TEST DOUBLE (tests/fixtures/scripted_model.py): the tools'
wiring is under test, not a model's answers. Scheduler tasks run the recording handler of
tests/fixtures/task_handlers.py on a local Ray cluster.
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

import anyio
import httpx
import httpx2
import pytest
from mcp import Client, StdioServerParameters
from mcp.client.streamable_http import streamable_http_client

from memos_ray import __version__
from memos_ray.api.app import create_app
from memos_ray.api.context import ApiContext
from memos_ray.config import MemosConfig
from memos_ray.models.chat import ChatRequest
from memos_ray.models.embedder import SentenceTransformerEmbedder
from memos_ray.runtime.compose import LocalStack
from memos_ray.scheduler.actor import SchedulerClient
from memos_ray.stores.sql.tasks import SQLTaskStore
from tests.fixtures.api import RunningApi
from tests.fixtures.scripted_model import ScriptedChatModel
from tests.fixtures.servers import serve_in_thread

pytestmark = pytest.mark.ray

ADMIN = "mcp-admin-key-0123456789abcdef"
ANSWER = "Your cat is called Miso."
RECORDER = "tests.fixtures.task_handlers:record"

MEMOS_TOOLS = {
    "chat",
    "create_user",
    "create_cube",
    "register_cube",
    "unregister_cube",
    "search_memories",
    "add_memory",
    "get_memory",
    "update_memory",
    "delete_memory",
    "delete_all_memories",
    "clear_chat_history",
    "dump_cube",
    "share_cube",
    "get_user_info",
    "control_memory_scheduler",
}
OWN_TOOLS = {
    "add_feedback",
    "recover_memory",
    "scheduler_status",
    "load_cube",
    "list_dumps",
}


def _scripted(request: ChatRequest) -> str:
    system = request.messages[0].content
    if system.startswith("The user corrects"):
        operations = [{"op": "add", "text": "The user's cat Miso is grey."}]
        return json.dumps({"operations": operations, "answer": "Noted: Miso is grey."})
    if system.startswith("You turn a conversation") or system.startswith("You compare"):
        return json.dumps({"memories": [], "preferences": [], "decision": "keep"})
    return ANSWER


@dataclass
class Service:
    url: str
    http: httpx.Client
    model: ScriptedChatModel
    keys: dict[str, str]

    def post(self, path: str, body: Any, key: str = ADMIN) -> httpx.Response:
        return self.http.post(path, json=body, headers={"Authorization": f"Bearer {key}"})


@pytest.fixture(scope="module")
def service(
    ray_cluster: None,
    tmp_path_factory: pytest.TempPathFactory,
    embedder: SentenceTransformerEmbedder,
) -> Iterator[Service]:
    config = MemosConfig(
        data_dir=tmp_path_factory.mktemp("mcp"),
        admin_key=ADMIN,
        scheduler={"handlers": {"mem_read": RECORDER, "mem_feedback": RECORDER}},
    ).resolved()
    model = ScriptedChatModel(_scripted)
    with LocalStack(config, embedder=embedder, chat=model) as stack:
        tasks = SQLTaskStore(stack.services.access.tenancy.engine)  # type: ignore[attr-defined]
        context = ApiContext.of(stack.services, __version__, SchedulerClient(config, tasks))
        with (
            serve_in_thread(create_app(lambda: context)) as url,
            httpx.Client(base_url=url, timeout=60) as http,
        ):
            service = Service(url, http, model, {})
            for transport in ("http", "stdio"):
                for who in ("alice", "bob"):
                    user = f"{transport}-{who}"
                    made = service.post("/admin/users", {"user_id": user})
                    assert made.status_code == 200, made.text
                    service.keys[user] = made.json()["data"]["api_key"]
                body = {"user_id": f"{transport}-alice", "scopes": ["read"]}
                reader = service.post("/admin/keys", body)
                assert reader.status_code == 200, reader.text
                service.keys[f"{transport}-alice-read"] = reader.json()["data"]["api_key"]
            yield service


@asynccontextmanager
async def connect(url: str, transport: str, key: str | None) -> AsyncIterator[Client]:
    if transport == "http":
        headers = {"Authorization": f"Bearer {key}"} if key else {}
        async with (
            httpx2.AsyncClient(headers=headers, timeout=60) as http,
            Client(streamable_http_client(f"{url}/mcp", http_client=http)) as client,
        ):
            yield client
        return
    env = {k: v for k, v in os.environ.items() if k in ("PATH", "HOME", "PYTHONPATH", "LANG")}
    env.update({"MEMOS_URL": url, "MEMOS_API_KEY": key or ""})
    params = StdioServerParameters(
        command=sys.executable, args=["-m", "memos_ray.cli", "mcp"], env=env
    )
    async with Client(params) as client:
        yield client


class Tools:
    """One MCP client; `ok` expects a result, `refused` a tool error and returns its text."""

    def __init__(self, client: Client) -> None:
        self.client = client
        self.called: set[str] = set()

    async def ok(self, name: str, **arguments: Any) -> Any:
        result = await self.client.call_tool(name, arguments)
        self.called.add(name)
        text = result.content[0].text if result.content else ""
        assert not result.is_error, f"{name}: {text}"
        assert result.structured_content is not None, name
        return result.structured_content["data"]

    async def refused(self, name: str, **arguments: Any) -> str:
        result = await self.client.call_tool(name, arguments)
        self.called.add(name)
        assert result.is_error, f"{name} should have failed: {result.structured_content}"
        text = result.content[0].text
        assert "Traceback" not in text
        return text


def _texts(search: dict[str, Any]) -> list[str]:
    return [m["memory"] for bucket in search["text_mem"] for m in bucket["memories"]]


@pytest.mark.parametrize("transport", ["http", "stdio"])
def test_every_tool_over_each_transport(service: Service, transport: str) -> None:
    anyio.run(_every_tool, service, transport)


async def _every_tool(service: Service, transport: str) -> None:
    alice, bob = f"{transport}-alice", f"{transport}-bob"
    notes, copy = f"{alice}-notes", f"{alice}-notes-copy"
    async with (
        connect(service.url, transport, service.keys[alice]) as alice_client,
        connect(service.url, transport, service.keys[bob]) as bob_client,
        connect(service.url, transport, ADMIN) as admin_client,
    ):
        a, b, admin = Tools(alice_client), Tools(bob_client), Tools(admin_client)
        listed = {tool.name for tool in (await alice_client.list_tools()).tools}
        assert listed >= MEMOS_TOOLS | OWN_TOOLS

        # Users and cubes.
        made = await admin.ok("create_user", user_id=f"{transport}-carol")
        assert made["user_id"] == f"{transport}-carol" and made["api_key"]
        assert "403" in await a.refused("create_user", user_id=f"{transport}-dave")
        assert "admin' scope" in await admin.refused(
            "create_user", user_id=f"{transport}-erin", role="ADMIN"
        )
        await a.ok("create_cube", cube_name="notes", owner_id=alice, cube_id=notes)
        assert "server path" in await a.refused(
            "create_cube", cube_name="x", owner_id=alice, cube_path="/etc/cubes/x"
        )
        registered = await a.ok("register_cube", cube_name_or_path=notes, cube_id=notes)
        assert registered["cube_id"] == notes

        # Add, search, get, update: the key's own user and default cube when none is named.
        added = await a.ok("add_memory", memory_content="My grey cat is called Miso.")
        memory_id = added[0]["memory_id"]
        await a.ok(
            "add_memory",
            messages=[{"role": "user", "content": "I water the ferns every Sunday."}],
            cube_id=notes,
        )
        found = await a.ok("search_memories", query="What is my cat called?", top_k=3)
        assert any("Miso" in t for t in _texts(found))
        got = await a.ok("get_memory", cube_id=alice, memory_id=memory_id)
        assert got["memory"] == "My grey cat is called Miso."
        updated = await a.ok(
            "update_memory",
            cube_id=alice,
            memory_id=memory_id,
            memory_content="My grey cat is called Mochi.",
        )
        assert updated["metadata"]["history"][-1]["memory"] == "My grey cat is called Miso."
        found = await a.ok("search_memories", query="What is my cat called?", top_k=3)
        assert "My grey cat is called Mochi." in _texts(found)
        assert "My grey cat is called Miso." not in _texts(found)

        # Chat keeps this chat's history until it is cleared.
        first = await a.ok("chat", query="What is my cat called?")
        assert first["response"] == ANSWER
        await a.ok("chat", query="And what colour is it?")
        sent = [m.content for m in service.model.requests[-1].messages]
        assert "What is my cat called?" in sent and ANSWER in sent
        cleared = await a.ok("clear_chat_history")
        assert cleared["conversations"] == 1
        await a.ok("chat", query="What is my cat called?")
        assert ANSWER not in [m.content for m in service.model.requests[-1].messages]

        feedback = await a.ok("add_feedback", feedback_content="Miso is grey, remember that.")
        assert feedback[0]["record"]

        # Sharing: bob reads alice's notes, cannot write them, and can drop them again.
        await a.ok("share_cube", cube_id=notes, target_user_id=bob)
        info = await b.ok("get_user_info")
        assert {"cube_id": notes, "access": "read"}.items() <= next(
            c for c in info["accessible_cubes"] if c["cube_id"] == notes
        ).items()
        shared = await b.ok("search_memories", query="ferns", cube_ids=[notes])
        assert any("ferns" in t for t in _texts(shared))
        assert "403" in await b.refused("add_memory", memory_content="x", cube_id=notes)
        await b.ok("unregister_cube", cube_id=notes)
        assert "403" in await b.refused("search_memories", query="ferns", cube_ids=[notes])

        # Tenancy: another user's cube and memories stay out of reach.
        assert "403" in await b.refused("search_memories", query="cat", cube_ids=[alice])
        assert "not found" in await b.refused("get_memory", cube_id=alice, memory_id=memory_id)
        assert "403" in await b.refused("delete_all_memories", cube_id=alice)
        assert "403" in await b.refused("dump_cube", dump_dir="stolen", cube_id=alice)

        # Dump, list, load: the copy answers like the original.
        dumped = await a.ok("dump_cube", dump_dir=f"{notes}-dump", cube_id=notes)
        assert dumped["counts"]["memories"] >= 1
        assert "not a path" in await a.refused("dump_cube", dump_dir="../elsewhere")
        dumps = await a.ok("list_dumps")
        assert f"{notes}-dump" in [d["name"] for d in dumps["dumps"]]
        assert "404" in await b.refused("load_cube", dump_name=f"{notes}-dump")
        loaded = await a.ok("load_cube", dump_name=f"{notes}-dump", cube_id=copy)
        assert loaded["memories"] == dumped["counts"]["memories"] and not loaded["reembedded"]
        original = await a.ok("search_memories", query="ferns", cube_ids=[notes])
        copied = await a.ok("search_memories", query="ferns", cube_ids=[copy])
        assert _texts(copied) == _texts(original)

        # Delete one, delete all, recover a soft-deleted one.
        await a.ok("delete_memory", cube_id=alice, memory_id=memory_id)
        assert "not found" in await a.refused("get_memory", cube_id=alice, memory_id=memory_id)
        cleared_cube = await a.ok("delete_all_memories", cube_id=copy)
        assert cleared_cube["deleted_count"] >= 1
        assert _texts(await a.ok("search_memories", query="ferns", cube_ids=[copy])) == []
        kept = (await a.ok("add_memory", memory_content="Pay rent on the 1st.", cube_id=copy))[0]
        body = {"mem_cube_id": copy, "record_id": f"{transport}-rec"}
        soft = service.post("/product/delete_memory_by_record_id", body, service.keys[alice])
        assert soft.status_code == 200 and soft.json()["data"]["count"] == 1, soft.text
        await a.ok("recover_memory", cube_id=copy, memory_ids=[kept["memory_id"]])
        back = await a.ok("get_memory", cube_id=copy, memory_id=kept["memory_id"])
        assert back["metadata"]["status"] == "activated"

        # The scheduler: status, wait; it cannot be started or stopped.
        status = await a.ok("control_memory_scheduler", action="status")
        assert "summary" in status or "counts" in status or status is not None
        waited = await a.ok("control_memory_scheduler", action="wait", timeout_seconds=10)
        assert waited["timed_out"] is False
        assert "always on" in await a.refused("control_memory_scheduler", action="stop")
        await a.ok("scheduler_status")

        # A read key reads but cannot write; bad arguments are tool errors too.
        async with connect(service.url, transport, service.keys[f"{alice}-read"]) as reader:
            r = Tools(reader)
            assert await r.ok("search_memories", query="cat", top_k=2) is not None
            assert "read-only" in await r.refused("add_memory", memory_content="nope")
            assert "read-only" in await r.refused("delete_all_memories", cube_id=alice)
        await a.refused("search_memories", query="cat", top_k="many")

        called = a.called | b.called | admin.called
        assert called >= MEMOS_TOOLS | OWN_TOOLS, (MEMOS_TOOLS | OWN_TOOLS) - called


def test_http_needs_a_key_and_stdio_says_so(service: Service) -> None:
    hello = {"jsonrpc": "2.0", "id": 1, "method": "tools/list", "params": {}}
    for headers in ({}, {"Authorization": "Bearer not-a-key"}):
        refused = service.http.post("/mcp", json=hello, headers=headers)
        assert refused.status_code == 401, refused.text
        assert refused.headers["www-authenticate"] == "Bearer"

    async def stdio_without_key() -> str:
        async with connect(service.url, "stdio", None) as client:
            return await Tools(client).refused("get_user_info")

    assert "401" in anyio.run(stdio_without_key)


def test_open_mode_answers_loopback_hosts_only(open_api: RunningApi) -> None:
    async def listed() -> set[str]:
        async with connect(open_api.url, "http", None) as client:
            return {t.name for t in (await client.list_tools()).tools}

    assert "search_memories" in anyio.run(listed)
    hello = {"jsonrpc": "2.0", "id": 1, "method": "tools/list", "params": {}}
    for headers in ({"Host": "attacker.example"}, {"Origin": "http://attacker.example"}):
        refused = open_api.http.post("/mcp", json=hello, headers=headers)
        assert refused.status_code == 403, refused.text
