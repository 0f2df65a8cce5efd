"""API test fixtures: the real app on embedded stores, served over loopback HTTP."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from memos_ray import __version__
from memos_ray.api.app import create_app
from memos_ray.api.context import ApiContext
from memos_ray.config import MemosConfig
from memos_ray.models.embedder import SentenceTransformerEmbedder
from memos_ray.runtime.compose import LocalStack
from tests.fixtures.servers import serve_in_thread

ADMIN_KEY = "test-admin-key-0123456789"


@dataclass
class RunningApi:
    url: str
    stack: LocalStack
    http: httpx.Client

    def post(self, path: str, json: object = None, key: str | None = None, **kw) -> httpx.Response:
        headers = {"Authorization": f"Bearer {key}"} if key else {}
        return self.http.post(path, json=json, headers=headers, **kw)


@pytest.fixture(scope="session")
def embedder() -> SentenceTransformerEmbedder:
    model = SentenceTransformerEmbedder()
    model.embed(["warm up"])
    return model


def _run(config: MemosConfig, embedder: SentenceTransformerEmbedder) -> Iterator[RunningApi]:
    with LocalStack(config, embedder=embedder) as stack:
        context = ApiContext.of(stack.services, __version__)  # the composition root's
        with (
            serve_in_thread(create_app(lambda: context)) as url,
            httpx.Client(base_url=url, timeout=60) as http,
        ):
            yield RunningApi(url, stack, http)


@pytest.fixture(scope="module")
def open_api(
    tmp_path_factory: pytest.TempPathFactory, embedder: SentenceTransformerEmbedder
) -> Iterator[RunningApi]:
    data_dir: Path = tmp_path_factory.mktemp("open-api")
    yield from _run(MemosConfig(data_dir=data_dir).resolved(), embedder)


@pytest.fixture(scope="module")
def auth_api(
    tmp_path_factory: pytest.TempPathFactory, embedder: SentenceTransformerEmbedder
) -> Iterator[RunningApi]:
    data_dir: Path = tmp_path_factory.mktemp("auth-api")
    yield from _run(MemosConfig(data_dir=data_dir, admin_key=ADMIN_KEY).resolved(), embedder)
