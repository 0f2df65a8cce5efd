"""Shared test setup: one local Ray cluster per session, embedded servers, temp data dirs."""

from __future__ import annotations

import os

import pytest

os.environ.setdefault("RAY_AUTH_MODE", "disabled")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

pytest_plugins = [
    "tests.fixtures.api",
    "tests.fixtures.falkordb",
    "tests.fixtures.llm",
    "tests.fixtures.postgres",
    "tests.fixtures.ray_cluster",
]

# Folders whose tests start Ray, Serve or a model: all of them are `slow`.
_SLOW_FOLDERS = {"api", "cluster", "conformance", "jobs", "models", "vllm"}


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """`-m "not slow"` keeps the unit tests (no Ray, no model) and the store contracts."""
    for item in items:
        folder = item.path.parent.name
        if folder in _SLOW_FOLDERS or item.get_closest_marker("ray") is not None:
            item.add_marker(pytest.mark.slow)
