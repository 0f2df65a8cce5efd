"""The MemOS referee: MemOS 2.0.33's models and SDK, loaded from its wheel.

Skips (saying why) where the wheel is absent; `.ci/run` installs it and sets
MEMOS_REQUIRE_CONFORMANCE=1, which turns that skip into a failure.
"""

from __future__ import annotations

import os
import types
from dataclasses import dataclass

import pytest

from tests.conformance.memos_wheel import MemosWheelMissing, load


@dataclass(frozen=True)
class Memos:
    models: types.ModuleType
    client: types.ModuleType
    admin: types.ModuleType


@pytest.fixture(scope="session")
def memos() -> Memos:
    try:
        return Memos(*load())
    except MemosWheelMissing as exc:
        if os.environ.get("MEMOS_REQUIRE_CONFORMANCE") == "1":
            pytest.fail(str(exc))
        pytest.skip(str(exc))
