"""The web console (/ui) in a real browser: Debian's Chromium, driven by Playwright.

The service is the real app over HTTP with API keys (two users), embedded stores and per-cube
scheduler actors on the session's Ray cluster. `mem_read` fails on purpose (the always-failing
handler of tests/fixtures/task_handlers.py), so every async add leaves a failed task whose
error the console must show. Screenshots go to $MEMOS_SCREENSHOT_DIR when it is set.
"""

from __future__ import annotations

import base64
import dataclasses
import os
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from memos_ray.config import MemosConfig
from tests.fixtures.traces import weather_trace

pytestmark = pytest.mark.ray

ADMIN_KEY = "console-admin-key-0123456789"
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


def _browser_missing() -> str | None:
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        return "playwright is not installed (it is in the dev extra)"
    if CHROMIUM is None:
        return "no chromium executable (apt-get install chromium)"
    return None


@pytest.fixture(scope="module")
def browser_path() -> str:
    missing = _browser_missing()
    if missing:
        if os.environ.get("MEMOS_REQUIRE_BROWSER"):
            pytest.fail(missing)
        pytest.skip(missing)
    assert CHROMIUM is not None
    return CHROMIUM


@dataclasses.dataclass
class Console:
    url: str
    keys: dict[str, str]
    ids: dict[str, str]


def _post(url: str, path: str, body: dict[str, Any], key: str) -> dict[str, Any]:
    response = httpx.post(
        url + path, json=body, headers={"Authorization": f"Bearer {key}"}, timeout=60
    )
    assert response.status_code == 200, response.text
    return response.json()


@pytest.fixture(scope="module")
def console(
    ray_cluster: None, tmp_path_factory: pytest.TempPathFactory, embedder: Any, browser_path: str
) -> Iterator[Console]:
    from memos_ray import __version__
    from memos_ray.api.app import create_app
    from memos_ray.api.context import ApiContext
    from memos_ray.runtime.compose import LocalStack
    from memos_ray.scheduler.actor import SchedulerClient
    from memos_ray.services.fine import FineService
    from memos_ray.stores.sql.tasks import SQLTaskStore
    from tests.fixtures.scripted_model import ScriptedChatModel
    from tests.fixtures.servers import serve_in_thread

    config = MemosConfig(
        data_dir=tmp_path_factory.mktemp("console"),
        admin_key=ADMIN_KEY,
        scheduler={
            "handlers": {"mem_read": "tests.fixtures.task_handlers:always_fail"},
            "max_attempts": 1,
            "idle_exit_s": 30,
        },
    ).resolved()
    with LocalStack(config, embedder=embedder) as stack:
        scheduler = SchedulerClient(config, SQLTaskStore(stack.tenancy.engine))
        fine = FineService(stack.service, ScriptedChatModel([]))
        services = dataclasses.replace(stack.services, fine=fine)
        context = ApiContext.of(services, __version__, scheduler)
        with serve_in_thread(create_app(lambda: context)) as url:
            keys = {
                user: _post(url, "/admin/users", {"user_id": user}, ADMIN_KEY)["data"]["api_key"]
                for user in ("alice", "bob")
            }
            yield Console(url, keys, _seed(url, keys))


def _seed(url: str, keys: dict[str, str]) -> dict[str, str]:
    """Alice: a conversation, a tool trace and a three-chunk document (chunks linked in reading
    order: the graph view's neighbours). Bob: one private memory. Then one async add of
    Alice's, whose `mem_read` task fails."""
    sync = {"user_id": "alice", "async_mode": "sync", "mode": "fast"}
    turns = [
        {"role": "user", "content": "I adopted a grey cat named Miso last spring."},
        {"role": "assistant", "content": "Miso is a lovely name for a grey cat."},
    ]
    _post(url, "/product/add", {**sync, "messages": turns}, keys["alice"])
    trace = weather_trace("Weather in Oslo?", "Oslo", "Snow")
    _post(url, "/product/add", {**sync, "messages": trace}, keys["alice"])
    text = "\n\n".join(
        f"Chapter {n}. The lighthouse keeper logs storm number {n} in the harbour book. "
        + "Waves and wind are noted by the hour. " * 30
        for n in range(1, 4)
    )
    doc = {
        "type": "file",
        "file": {"file_data": base64.b64encode(text.encode()).decode(), "filename": "log.txt"},
    }
    _post(
        url,
        "/product/add",
        {**sync, "messages": [{"role": "user", "content": [doc]}]},
        keys["alice"],
    )
    bob = {"user_id": "bob", "async_mode": "sync", "mode": "fast"}
    secret = [{"role": "user", "content": "My grey cat is called Pepper, not Miso."}]
    _post(url, "/product/add", {**bob, "messages": secret}, keys["bob"])
    found = _post(url, "/product/search", {"user_id": "bob", "query": "Pepper"}, keys["bob"])[
        "data"
    ]["text_mem"][0]["memories"]
    queued = _post(
        url,
        "/product/add",
        {
            "user_id": "alice",
            "async_mode": "async",
            "mode": "fine",
            "messages": [{"role": "user", "content": "I also keep bees on the roof."}],
        },
        keys["alice"],
    )
    assert queued["data"][0].get("task_id"), queued
    return {"bob_memory": found[0]["id"]}


@pytest.fixture()
def page(browser_path: str, console: Console) -> Iterator[Any]:
    from playwright.sync_api import sync_playwright

    with sync_playwright() as play:
        browser = play.chromium.launch(
            executable_path=browser_path, headless=True, args=["--no-sandbox"]
        )
        try:
            view = browser.new_page(viewport={"width": 1400, "height": 1000})
            errors: list[str] = []
            view.on("pageerror", lambda exc: errors.append(str(exc)))
            view.goto(console.url + "/ui")
            yield view
            assert not errors, errors  # no script error on the page
        finally:
            browser.close()


def _sign_in(page: Any, key: str) -> None:
    page.fill("#key", key)
    page.click("#connect")
    page.wait_for_selector("#cubes li.selected")


def _shoot(page: Any, name: str) -> None:
    folder = os.environ.get("MEMOS_SCREENSHOT_DIR")
    if folder:
        Path(folder).mkdir(parents=True, exist_ok=True)
        page.screenshot(path=str(Path(folder) / f"{name}.png"), full_page=True)


def test_search_shows_the_right_memory_and_the_graph_its_neighbours(
    page: Any, console: Console
) -> None:
    from playwright.sync_api import expect

    _sign_in(page, console.keys["alice"])
    page.fill("#query", "What is my cat called?")
    page.click("#search")
    first = page.locator("#results li.result").first
    expect(first.locator(".text")).to_contain_text("Miso")
    assert float(first.locator(".score").inner_text()) > 0
    _shoot(page, "console-search")

    page.fill("#query", "lighthouse keeper storm number 2 harbour book")
    page.click("#search")
    chunk = page.locator("#results li.result", has_text="storm number 2").first
    chunk.click()
    expect(page.locator("#detail")).to_be_visible()
    expect(page.locator("#detail-text")).to_contain_text("storm number 2")
    # The middle chunk: one neighbour before and one after, linked in reading order.
    neighbours = page.locator("#graph g.node:not(.center)")
    expect(neighbours).to_have_count(2)
    assert page.locator("#graph line").count() >= 2
    expect(page.locator("#legend")).to_contain_text("FOLLOWING")
    _shoot(page, "console-graph")

    # Click through: the neighbour becomes the centre, and links back.
    before = page.locator("#detail-id").inner_text()
    neighbours.first.click()
    expect(page.locator("#detail-id")).not_to_have_text(before)
    expect(page.locator(f'#graph g.node[data-id="{before}"]')).to_have_count(1)
    expect(page.locator("#tools li").first).to_contain_text("get_weather")


def test_another_users_cube_and_memories_are_not_visible(page: Any, console: Console) -> None:
    from playwright.sync_api import expect

    _sign_in(page, console.keys["alice"])
    cubes = page.locator("#cubes li")
    expect(cubes).to_have_count(1)
    assert page.locator("#cubes li").get_attribute("data-cube") == "alice"
    page.fill("#query", "Pepper grey cat")
    page.click("#search")
    expect(page.locator("#notice")).to_contain_text("memories for")
    texts = page.locator("#results li .text").all_inner_texts()
    assert not any("Pepper" in t for t in texts), texts
    # Bob's memory opened by id from Alice's console: not there for her.
    page.evaluate("id => openMemory(id)", console.ids["bob_memory"])
    expect(page.locator("#notice")).to_contain_text("not there")
    expect(page.locator("#detail")).to_be_hidden()


def test_a_failed_task_shows_its_error_and_a_bad_key_is_refused(
    page: Any, console: Console
) -> None:
    from playwright.sync_api import expect

    _sign_in(page, console.keys["alice"])
    failed = page.locator('#tasks li.task[data-state="failed"]').first
    expect(failed).to_be_visible(timeout=60_000)
    expect(failed.locator(".task-error")).to_contain_text("handler refuses task")
    expect(page.locator("#stream-state")).to_have_text("(live)")
    _shoot(page, "console-tasks")

    page.click("#signout")
    page.fill("#key", "not-a-real-key")
    page.click("#connect")
    expect(page.locator("#notice")).to_contain_text("Sign-in failed")
    expect(page.locator("#console")).to_be_hidden()


def test_console_is_served_from_the_package_with_a_strict_policy(console: Console) -> None:
    page = httpx.get(console.url + "/ui")
    assert page.status_code == 200 and "memos-ray console" in page.text
    policy = page.headers["content-security-policy"]
    assert "script-src 'self'" in policy and "frame-ancestors 'none'" in policy
    script = httpx.get(console.url + "/ui/static/console.js")
    assert script.status_code == 200 and script.headers["x-content-type-options"] == "nosniff"
    assert httpx.get(console.url + "/ui/static/../../config.py").status_code == 404
