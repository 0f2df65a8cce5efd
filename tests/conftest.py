"""Shared test setup: one local Ray cluster per session, embedded servers, temp data dirs."""

from __future__ import annotations

import os

os.environ.setdefault("RAY_AUTH_MODE", "disabled")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

pytest_plugins = [
    "tests.fixtures.falkordb",
    "tests.fixtures.llm",
    "tests.fixtures.postgres",
    "tests.fixtures.ray_cluster",
]
