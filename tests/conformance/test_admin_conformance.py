"""MemOS's admin API as MemOS 2.0.33 defines it: bodies built by its request model, every
answer validated by its response models (memos-ray's envelope fields ride along)."""

from __future__ import annotations

import hashlib
import uuid

from tests.conformance.conftest import Memos
from tests.fixtures.api import ADMIN_KEY, RunningApi


def _auth(key: str) -> dict[str, str]:
    return {"Authorization": f"Token {key}"}  # the scheme MemOS's clients send


def test_the_key_lifecycle_validates_with_memos_models(auth_api: RunningApi, memos: Memos) -> None:
    admin = memos.admin
    user = f"conf-{uuid.uuid4().hex[:6]}"
    http = auth_api.http

    # MemOS's defaults: a read-only key, no description, no expiry.
    body = admin.CreateKeyRequest(user_name=user).model_dump()
    created = http.post("/admin/keys", json=body, headers=_auth(ADMIN_KEY))
    assert created.status_code == 200, created.text
    answer = admin.CreateKeyResponse.model_validate(created.json())
    assert (answer.user_name, answer.scopes) == (user, ["read"])
    assert answer.key.startswith(answer.key_prefix)

    body = admin.CreateKeyRequest(
        user_name=user, scopes=["read", "write"], description="agent", expires_in_days=90
    ).model_dump()
    second = admin.CreateKeyResponse.model_validate(
        http.post("/admin/keys", json=body, headers=_auth(ADMIN_KEY)).json()
    )
    assert second.scopes == ["read", "write"]

    listed = http.get("/admin/keys", params={"user_name": user}, headers=_auth(ADMIN_KEY))
    assert listed.status_code == 200, listed.text
    keys = admin.KeyListResponse.model_validate(listed.json()).keys
    assert {k["key_prefix"] for k in keys} == {answer.key_prefix, second.key_prefix}
    memos_fields = {
        "id",
        "key_prefix",
        "user_name",
        "scopes",
        "description",
        "created_at",
        "last_used_at",
        "expires_at",
        "is_active",
    }
    assert all(memos_fields <= set(k) for k in keys)
    assert answer.key not in listed.text and second.key not in listed.text

    key_id = next(k["id"] for k in keys if k["key_prefix"] == answer.key_prefix)
    revoked = http.delete(f"/admin/keys/{key_id}", headers=_auth(ADMIN_KEY))
    assert revoked.status_code == 200, revoked.text
    assert admin.SimpleResponse.model_validate(revoked.json()).success is True
    again = http.delete(f"/admin/keys/{key_id}", headers=_auth(ADMIN_KEY))
    assert again.status_code == 404

    search = {"user_id": user, "query": "anything"}
    assert http.post("/product/search", json=search, headers=_auth(answer.key)).status_code == 401
    assert http.post("/product/search", json=search, headers=_auth(second.key)).status_code == 200


def test_master_key_and_health_answer_memos_fields(auth_api: RunningApi, memos: Memos) -> None:
    http = auth_api.http
    minted = http.post("/admin/generate-master-key", headers=_auth(ADMIN_KEY))
    assert minted.status_code == 200, minted.text
    fields = minted.json()
    assert {"message", "key", "key_hash", "env_line"} <= set(fields)
    assert fields["key_hash"] == hashlib.sha256(fields["key"].encode()).hexdigest()
    assert fields["env_line"].endswith(f"={fields['key_hash']}")

    health = http.get("/admin/health")
    assert health.status_code == 200
    assert set(health.json()) == {"status", "auth_enabled", "master_key_configured"}
    assert health.json()["status"] == "ok" and health.json()["auth_enabled"] is True
