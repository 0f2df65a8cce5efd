"""The whole app on Ray Serve over HTTP: add, search, and memories surviving a restart."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import anyio
import httpx
import pytest
from mcp import Client

from memos_ray.config import MemosConfig
from memos_ray.runtime.launcher import wait_ready
from tests.fixtures.metrics import dashboard_metrics, scrape_until
from tests.fixtures.servers import free_port

pytestmark = pytest.mark.ray

TURNS = [
    {
        "role": "user",
        "content": "My daughter Ines starts violin lessons on Thursday afternoons.",
        "chat_time": "2026-03-14T17:20:00",
        "message_id": "D1:3",
    },
    {
        "role": "assistant",
        "content": "Lovely! Thursday violin lessons for Ines, noted.",
        "chat_time": "2026-03-14T17:20:09",
        "message_id": "D1:4",
    },
]


@pytest.fixture(scope="module")
def serve_config(tmp_path_factory: pytest.TempPathFactory) -> MemosConfig:
    data_dir: Path = tmp_path_factory.mktemp("serve-data")
    return MemosConfig(
        data_dir=data_dir, embedder={"num_cpus": 0.5}, llm={"backend": "none"}
    ).resolved()


@pytest.fixture(scope="module")
def serve_url(ray_cluster: None, serve_config: MemosConfig) -> Iterator[str]:
    from ray import serve

    port = free_port()
    serve.start(http_options={"host": "127.0.0.1", "port": port})
    yield f"http://127.0.0.1:{port}"
    serve.shutdown()
    from memos_ray.runtime.compose import stop_embedded

    stop_embedded(serve_config)


def _deploy(config: MemosConfig, url: str) -> None:
    from ray import serve

    from deployments.app import build_from_config

    serve.run(build_from_config(config), name="memos", route_prefix="/")
    wait_ready(url)


def test_add_search_and_restart_through_serve(serve_url: str, serve_config: MemosConfig) -> None:
    from ray import serve

    from memos_ray.runtime.compose import stop_embedded

    _deploy(serve_config, serve_url)
    added = httpx.post(
        f"{serve_url}/product/add",
        json={"user_id": "ines-parent", "messages": TURNS, "async_mode": "sync"},
        timeout=60,
    )
    assert added.status_code == 200, added.text
    # A bulk add: one embedder call whose token vectors run to several MB.
    bulk = [
        {"role": "user", "content": f"Bulk line {i}: " + "words of a longer message " * 8}
        for i in range(300)
    ]
    big = httpx.post(
        f"{serve_url}/product/add",
        json={"user_id": "bulk-user", "messages": bulk, "async_mode": "sync"},
        timeout=120,
    )
    assert big.status_code == 200, big.text
    assert len(big.json()["data"]) == 300
    # One memory per turn: remember which message each came from.
    turn_of = {
        m["memory_id"]: t["message_id"] for m, t in zip(added.json()["data"], TURNS, strict=True)
    }

    def search() -> dict:
        response = httpx.post(
            f"{serve_url}/product/search",
            json={"user_id": "ines-parent", "query": "When are the violin lessons?"},
            timeout=60,
        )
        assert response.status_code == 200, response.text
        return response.json()["data"]["text_mem"][0]["memories"][0]

    hit = search()
    assert [s["message_id"] for s in hit["metadata"]["sources"]] == [turn_of[hit["id"]]]

    # Stop everything that holds data (app and embedded stores), then start again.
    serve.delete("memos")
    stop_embedded(serve_config)
    _deploy(serve_config, serve_url)
    again = search()
    assert again["id"] == hit["id"]
    assert again["metadata"]["sources"] == hit["metadata"]["sources"]

    # MCP through Serve's proxy: the ingress replica's lifespan runs the MCP session manager.
    async def mcp_search() -> dict:
        async with Client(f"{serve_url}/mcp") as client:
            arguments = {"query": "When are the violin lessons?", "user_id": "ines-parent"}
            result = await client.call_tool("search_memories", arguments)
            assert not result.is_error, result.content
            assert result.structured_content is not None
            return result.structured_content["data"]["text_mem"][0]["memories"][0]

    assert anyio.run(mcp_search)["id"] == hit["id"]

    # What the dashboard queries of Ray Serve, and ours that only the replicas record, are
    # on the node's Prometheus endpoint (the embedder's batch sizes: its own replica).
    serve_names = {n for n in dashboard_metrics() if n.startswith("ray_serve_")}
    ours = {f"ray_memos_{n}_bucket" for n in ("embedder_batch_size", "http_request_seconds")}
    series = scrape_until(serve_names | ours)
    routes = {labels.get("route") for name, labels in series if name.startswith("ray_memos_")}
    assert "/product/search" in routes
