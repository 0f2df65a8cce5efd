"""API keys over real HTTP (MEMOS_ADMIN_KEY set): scopes, expiry, listing, revocation and the
master key, with MemOS's admin bodies and memos-ray's."""

from __future__ import annotations

import hashlib
import uuid
from pathlib import Path
from typing import Any

import httpx
import pytest
from pydantic import ValidationError
from sqlalchemy import text

from memos_ray.config import MemosConfig
from memos_ray.errors import ForbiddenError, UnauthorizedError
from memos_ray.services.tenancy import AccessControl
from memos_ray.stores.sql.sqlalchemy import SQLTenancyStore
from tests.fixtures.api import ADMIN_KEY, RunningApi

ADMIN_ROUTES: list[tuple[str, str, dict[str, Any] | None]] = [
    ("POST", "/admin/users", {"user_id": "nobody-new"}),
    ("POST", "/admin/keys", {"user_name": "nobody-new", "scopes": ["read"]}),
    ("GET", "/admin/keys", None),
    ("DELETE", "/admin/keys/0123456789abcdef0123456789abcdef", None),
    ("POST", "/admin/generate-master-key", None),
    ("POST", "/admin/grants", {"cube_id": "c", "user_id": "u", "access": "read"}),
]


def _uid(name: str) -> str:
    return f"{name}-{uuid.uuid4().hex[:6]}"


def _call(
    api: RunningApi, method: str, path: str, body: object = None, key: str | None = None
) -> httpx.Response:
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    return api.http.request(method, path, json=body, headers=headers)


def _new_key(api: RunningApi, key: str = ADMIN_KEY, **body: Any) -> dict[str, Any]:
    response = api.post("/admin/keys", body, key=key)
    assert response.status_code == 200, response.text
    return response.json()


def _store(api: RunningApi) -> SQLTenancyStore:
    return api.stack.services.tenancy


@pytest.fixture(scope="module")
def reader(auth_api: RunningApi) -> dict[str, str]:
    """A user with a read-only key and one memory in its own cube (added by the master key)."""
    user = _uid("reader")
    created = _new_key(auth_api, user_name=user, scopes=["read"], description="dashboards")
    assert created["scopes"] == ["read"] and created["data"]["scopes"] == ["read"]
    added = auth_api.post(
        "/product/add",
        {
            "user_id": user,
            "messages": "The reader's parking spot is number 42.",
            "async_mode": "sync",
        },
        key=ADMIN_KEY,
    )
    assert added.status_code == 200, added.text
    return {
        "user": user,
        "key": created["key"],
        "key_id": created["data"]["key_id"],
        "memory_id": added.json()["data"][0]["memory_id"],
    }


def test_a_read_only_key_reads_its_cube(auth_api: RunningApi, reader: dict[str, str]) -> None:
    user, key = reader["user"], reader["key"]
    found = auth_api.post("/product/search", {"user_id": user, "query": "parking spot"}, key=key)
    assert found.status_code == 200, found.text
    assert "number 42" in found.json()["data"]["text_mem"][0]["memories"][0]["memory"]
    got = auth_api.post("/product/get_memory", {"user_id": user, "mem_cube_id": user}, key=key)
    assert got.status_code == 200, got.text
    memories = got.json()["data"]["text_mem"][0]["memories"]
    assert reader["memory_id"] in {m["id"] for m in memories}


def test_a_read_only_key_cannot_write(auth_api: RunningApi, reader: dict[str, str]) -> None:
    user, key, memory_id = reader["user"], reader["key"], reader["memory_id"]
    writes: list[tuple[str, str, dict[str, Any]]] = [
        ("POST", "/product/add", {"user_id": user, "messages": "overwrite"}),
        ("POST", "/product/delete_memory", {"user_id": user, "memory_ids": [memory_id]}),
        ("POST", "/product/feedback", {"user_id": user, "feedback_content": "that is wrong"}),
        ("POST", "/product/recover_memory", {"user_id": user, "memory_ids": [memory_id]}),
        ("POST", "/product/create_cube", {"owner_id": user, "cube_id": _uid("cube")}),
        (
            "PUT",
            f"/product/cubes/{user}/adapter",
            {"adapter_config": {"r": 8}, "weights_base64": "AAAA"},
        ),
        ("DELETE", f"/product/cubes/{user}/adapter", {}),
        ("PUT", f"/product/cubes/{user}/llm_budget", {"budget_tokens": 10}),
    ]
    for method, path, body in writes:
        response = _call(auth_api, method, path, body or None, key=key)
        assert response.status_code == 403, (path, response.text)
        assert response.json()["code"] == 403
        assert "read-only" in response.json()["message"]
    got = auth_api.post("/product/get_memory", {"user_id": user, "mem_cube_id": user}, key=key)
    memories = got.json()["data"]["text_mem"][0]["memories"]
    assert memory_id in {m["id"] for m in memories}  # nothing was deleted

    # The same user with a write key may: the refusal was the key's scope, not the cube.
    writer = _new_key(auth_api, user_name=user, scopes=["read", "write"])["key"]
    added = auth_api.post("/product/add", {"user_id": user, "messages": "Also: bay 7."}, key=writer)
    assert added.status_code == 200, added.text


def test_an_expired_key_is_refused(auth_api: RunningApi) -> None:
    user = _uid("temp")
    created = _new_key(auth_api, user_name=user, scopes=["read", "write"], expires_in_days=1)
    key, key_id = created["key"], created["data"]["key_id"]
    assert created["data"]["expires_at"] > created["data"]["created_at"]
    body = {"user_id": user, "query": "anything"}
    assert auth_api.post("/product/search", body, key=key).status_code == 200
    with _store(auth_api).engine.begin() as conn:
        conn.execute(
            text(
                "UPDATE api_keys SET expires_at = '2001-01-01T00:00:00.000000Z' WHERE key_id = :k"
            ),
            {"k": key_id},
        )
    refused = auth_api.post("/product/search", body, key=key)
    assert refused.status_code == 401 and refused.json()["code"] == 401
    listed = _call(auth_api, "GET", f"/admin/keys?user_name={user}", key=ADMIN_KEY).json()
    assert [(k["is_active"], k["expired"], k["revoked"]) for k in listed["keys"]] == [
        (False, True, False)
    ]


def test_revoked_keys_are_refused_and_unknown_ids_are_404(auth_api: RunningApi) -> None:
    user = _uid("leaver")
    created = _new_key(auth_api, user_id=user)  # memos-ray's own body: a read+write key
    assert created["data"]["scopes"] == ["read", "write"]
    key, key_id = created["data"]["api_key"], created["data"]["key_id"]
    body = {"user_id": user, "messages": "Leaving soon."}
    assert auth_api.post("/product/add", body, key=key).status_code == 200

    revoked = _call(auth_api, "DELETE", f"/admin/keys/{key_id}", key=ADMIN_KEY)
    assert revoked.status_code == 200, revoked.text
    assert revoked.json()["success"] is True and revoked.json()["code"] == 200
    assert auth_api.post("/product/add", body, key=key).status_code == 401

    for unknown in (key_id, uuid.uuid4().hex, "not-a-key-id"):
        again = _call(auth_api, "DELETE", f"/admin/keys/{unknown}", key=ADMIN_KEY)
        assert again.status_code == 404, again.text
        assert again.json()["code"] == 404 and again.json()["data"] is None


def test_listing_shows_prefixes_never_keys(auth_api: RunningApi) -> None:
    user = _uid("listed")
    first = _new_key(auth_api, user_name=user, scopes=["read"], description="first")
    second = _new_key(auth_api, user_name=user, scopes=["write"], expires_in_days=30)
    other = _new_key(auth_api, user_name=_uid("other"))
    response = _call(auth_api, "GET", f"/admin/keys?user_name={user}", key=ADMIN_KEY)
    assert response.status_code == 200, response.text
    listed = response.json()
    assert listed["code"] == 200 and listed["data"] == listed["keys"]
    assert [k["id"] for k in listed["keys"]] == [
        second["data"]["key_id"],
        first["data"]["key_id"],
    ]
    by_id = {k["key_id"]: k for k in listed["keys"]}
    entry = by_id[first["data"]["key_id"]]
    assert entry["key_prefix"] == first["key_prefix"] and first["key"].startswith(
        entry["key_prefix"]
    )
    assert (entry["user_name"], entry["scopes"], entry["description"]) == (
        user,
        ["read"],
        "first",
    )
    assert entry["created_by"] == "master-key" and entry["is_active"] is True
    assert by_id[second["data"]["key_id"]]["expires_at"] == second["data"]["expires_at"]
    for created in (first, second):
        assert created["key"] not in response.text
        assert hashlib.sha256(created["key"].encode()).hexdigest() not in response.text
    assert all("key_hash" not in k and "api_key" not in k for k in listed["keys"])
    everyone = _call(auth_api, "GET", "/admin/keys", key=ADMIN_KEY).json()["keys"]
    assert other["data"]["key_id"] in {k["id"] for k in everyone}


def test_bad_create_requests(auth_api: RunningApi) -> None:
    user = _uid("bad")
    for body, status in (
        ({"user_name": user, "scopes": ["read", "superuser"]}, 400),
        ({"user_name": user, "expires_in_days": 0}, 422),
        ({"user_name": user, "expires_in_days": 366}, 422),
        ({"user_name": user, "description": "d" * 501}, 422),
        ({"scopes": ["read"]}, 422),
        ({"user_id": user, "user_name": user + "x"}, 422),
    ):
        response = auth_api.post("/admin/keys", body, key=ADMIN_KEY)
        assert response.status_code == status, (body, response.text)
    assert _store(auth_api).get_user(user) is None  # a refused request creates nobody


def test_an_admin_scoped_key(auth_api: RunningApi) -> None:
    ops = _new_key(auth_api, user_name=_uid("ops"), scopes=["admin"])
    admin_key = ops["key"]
    other = _uid("managed")
    made = _new_key(auth_api, key=admin_key, user_name=other, scopes=["read", "write"])
    assert made["data"]["scopes"] == ["read", "write"]
    # It acts as any user, and the key it made works for that user.
    body = {"user_id": other, "messages": "Written by operations for the managed user."}
    assert auth_api.post("/product/add", body, key=admin_key).status_code == 200
    search = {"user_id": other, "query": "operations"}
    assert auth_api.post("/product/search", search, key=made["key"]).status_code == 200
    listed = _call(auth_api, "GET", f"/admin/keys?user_name={other}", key=admin_key)
    assert listed.json()["keys"][0]["created_by"] == ops["user_name"]
    # Only the master key mints master keys.
    refused = auth_api.post("/admin/generate-master-key", key=admin_key)
    assert refused.status_code == 403 and refused.json()["code"] == 403


def test_the_master_key_mints_a_usable_master_key(auth_api: RunningApi, tmp_path: Path) -> None:
    response = auth_api.post("/admin/generate-master-key", key=ADMIN_KEY)
    assert response.status_code == 200, response.text
    minted = response.json()
    key, key_hash = minted["key"], minted["key_hash"]
    assert key_hash == hashlib.sha256(key.encode()).hexdigest()
    assert minted["env_line"] == f"MEMOS_ADMIN_KEY_SHA256={key_hash}"
    assert minted["data"] == {k: minted[k] for k in ("key", "key_hash", "env_line")}
    # Nothing changed yet: the service still knows only the configured key.
    assert auth_api.post("/admin/keys", {"user_name": _uid("x")}, key=key).status_code == 401

    # Configured by its hash, the minted key is the master key.
    config = MemosConfig(data_dir=tmp_path, admin_key_sha256=key_hash.upper())
    assert config.auth_enabled and config.admin_key_sha256 == key_hash
    store = SQLTenancyStore(config.sql_url())
    try:
        access = AccessControl(store, config.admin_key_plain, config.admin_key_sha256)
        assert not access.open_mode
        for scheme in ("Bearer", "Token"):
            caller = access.authenticate(f"{scheme} {key}")
            assert caller.is_master and caller.is_admin and caller.can_write
        access.require_master(access.authenticate(f"Bearer {key}"))
        for wrong in (ADMIN_KEY, key + "x", key_hash):
            with pytest.raises(UnauthorizedError):
                access.authenticate(f"Bearer {wrong}")
        store.create_user("u")
        user_key, _ = store.create_api_key("u", ["admin"])
        with pytest.raises(ForbiddenError):
            access.require_master(access.authenticate(f"Bearer {user_key}"))
    finally:
        store.close()


def test_admin_key_sha256_is_validated(tmp_path: Path) -> None:
    for bad in ("abc", "g" * 64, "a" * 65):
        with pytest.raises(ValidationError):
            MemosConfig(data_dir=tmp_path, admin_key_sha256=bad)
    assert not MemosConfig(data_dir=tmp_path, admin_key_sha256="").auth_enabled


def test_non_admin_keys_are_refused_on_admin_routes(
    auth_api: RunningApi, reader: dict[str, str]
) -> None:
    writer = _new_key(auth_api, user_name=_uid("plain"), scopes=["read", "write"])["key"]
    for key in (reader["key"], writer):
        for method, path, body in ADMIN_ROUTES:
            response = _call(auth_api, method, path, body, key=key)
            assert response.status_code == 403, (method, path, response.text)
            assert response.json()["code"] == 403
        for method, path, body in ADMIN_ROUTES:
            assert _call(auth_api, method, path, body).status_code == 401, (method, path)
    health = auth_api.http.get("/admin/health")
    assert health.status_code == 200
    assert health.json() == {"status": "ok", "auth_enabled": True, "master_key_configured": True}


def test_bearer_and_token_schemes(auth_api: RunningApi, reader: dict[str, str]) -> None:
    body = {"user_id": reader["user"], "query": "parking"}
    for scheme in ("Bearer", "Token", "token"):
        headers = {"Authorization": f"{scheme} {reader['key']}"}
        assert auth_api.http.post("/product/search", json=body, headers=headers).status_code == 200
        listed = auth_api.http.get(
            "/admin/keys", headers={"Authorization": f"{scheme} {ADMIN_KEY}"}
        )
        assert listed.status_code == 200


def test_keys_are_stored_hashed(auth_api: RunningApi, reader: dict[str, str]) -> None:
    body = {"user_id": reader["user"], "query": "parking"}
    assert auth_api.post("/product/search", body, key=reader["key"]).status_code == 200
    with _store(auth_api).engine.connect() as conn:
        rows = conn.execute(text("SELECT * FROM api_keys")).mappings().all()
    assert rows
    assert all(reader["key"] not in str(value) for row in rows for value in row.values())
    (row,) = [r for r in rows if r["key_id"] == reader["key_id"]]
    assert row["key_hash"] == hashlib.sha256(reader["key"].encode()).hexdigest()
    assert row["scopes"] == "read" and row["description"] == "dashboards"
    assert row["last_used_at"] is not None  # just used


def test_open_mode_stays_open(open_api: RunningApi) -> None:
    """No master key configured: no key is needed, any caller may manage keys and write."""
    health = open_api.http.get("/admin/health").json()
    assert health == {"status": "ok", "auth_enabled": False, "master_key_configured": False}
    user = _uid("local")
    created = open_api.post("/admin/keys", {"user_name": user, "scopes": ["read"]})
    assert created.status_code == 200, created.text
    listed = _call(open_api, "GET", f"/admin/keys?user_name={user}").json()["keys"]
    assert listed[0]["created_by"] is None
    assert open_api.post("/product/add", {"user_id": user, "messages": "hi"}).status_code == 200
