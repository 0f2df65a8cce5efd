"""Closed-by-default checks that need no running service: loopback hosts, and Ray refused on
a reachable address without token auth (before anything starts)."""

from __future__ import annotations

import pytest

from memos_ray.errors import ConfigError
from memos_ray.runtime.netguard import is_loopback, start_local_ray


@pytest.mark.parametrize(
    ("host", "loopback"),
    [
        ("127.0.0.1", True),
        ("localhost", True),
        ("::1", True),
        ("[::1]", True),
        ("127.0.0.2", True),
        ("0.0.0.0", False),
        ("::", False),
        ("192.0.2.2", False),
        ("memos.example", False),
    ],
)
def test_loopback_hosts(host: str, loopback: bool) -> None:
    assert is_loopback(host) is loopback


def test_exposed_ray_without_token_auth_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    import ray

    monkeypatch.setenv("RAY_AUTH_MODE", "disabled")
    before = ray.is_initialized()  # the session's cluster may be up already
    with pytest.raises(ConfigError, match="needs token authentication"):
        start_local_ray("0.0.0.0", include_dashboard=False)
    assert ray.is_initialized() == before  # refused before anything started
