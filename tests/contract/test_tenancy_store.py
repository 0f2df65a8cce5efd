"""One behaviour contract for every TenancyStore backend (SQLite file and PostgreSQL)."""

from __future__ import annotations

import hashlib
import re
import threading
import uuid
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from sqlalchemy import create_engine, make_url, text
from sqlalchemy.exc import IntegrityError

from memos_ray.domain.tenancy import Access, Scope
from memos_ray.errors import BadRequestError, ConflictError, NotFoundError
from memos_ray.stores.sql.sqlalchemy import SQLTenancyStore

ISO = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}Z$")
BAD_IDS = ["", "x" * 129, "a\nb", "a\x00b", "tab\there", "del\x7f", 42]


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def store_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        # A directory that does not exist yet: the store must create it.
        return f"sqlite:///{tmp_path / 'nested' / 'memos.db'}"
    base: str = request.getfixturevalue("postgres_url")
    # A fresh schema per test: tables start empty and tests never see each other's rows.
    schema = f"t_{uuid.uuid4().hex[:16]}"
    engine = create_engine(base)
    with engine.begin() as conn:
        conn.execute(text(f'CREATE SCHEMA "{schema}"'))
    engine.dispose()
    url = make_url(base).update_query_dict({"options": f"-csearch_path={schema}"})
    return url.render_as_string(hide_password=False)


@pytest.fixture
def store(store_url: str) -> Iterator[SQLTenancyStore]:
    s = SQLTenancyStore(store_url)
    yield s
    s.close()


def _rows(store: SQLTenancyStore, sql: str) -> list[tuple]:
    with store.engine.connect() as conn:
        return [tuple(row) for row in conn.execute(text(sql))]


# --- users ------------------------------------------------------------------------------


def test_create_and_get_user(store: SQLTenancyStore) -> None:
    user = store.create_user("alice")
    assert user.user_id == "alice"
    assert ISO.match(user.created_at)
    assert store.get_user("alice") == user
    assert store.get_user("bob") is None


def test_duplicate_user_conflicts(store: SQLTenancyStore) -> None:
    store.create_user("alice")
    with pytest.raises(ConflictError):
        store.create_user("alice")


def test_ensure_user_creates_once(store: SQLTenancyStore) -> None:
    first = store.ensure_user("alice")
    assert store.get_user("alice") == first
    assert store.ensure_user("alice") == first
    store.create_user("bob")
    assert store.ensure_user("bob") == store.get_user("bob")


def test_max_length_id_accepted(store: SQLTenancyStore) -> None:
    long_id = "u" * 128
    store.create_user(long_id)
    cube = store.create_cube("c" * 128, "n" * 256, long_id)
    assert store.get_cube("c" * 128) == cube
    assert store.get_user("unicode-ü-用户") is None
    assert store.create_user("unicode-ü-用户").user_id == "unicode-ü-用户"


# --- keys -------------------------------------------------------------------------------


def test_api_key_identifies_its_user(store: SQLTenancyStore) -> None:
    store.create_user("alice")
    key, _ = store.create_api_key("alice")
    assert key.startswith("mrk_")
    assert len(key) >= 40
    assert store.user_for_key(key) == "alice"


def test_invalid_keys_identify_nobody(store: SQLTenancyStore) -> None:
    store.create_user("alice")
    key, _ = store.create_api_key("alice")
    for wrong in ["", "mrk_", "nope", key + "x", key[:-1], key.upper(), "mrk_" + "a" * 1000]:
        assert store.user_for_key(wrong) is None


def test_two_keys_per_user(store: SQLTenancyStore) -> None:
    store.create_user("alice")
    store.create_user("bob")
    (k1, _), (k2, _) = store.create_api_key("alice"), store.create_api_key("alice")
    kb, _ = store.create_api_key("bob")
    assert len({k1, k2, kb}) == 3
    assert store.user_for_key(k1) == store.user_for_key(k2) == "alice"
    assert store.user_for_key(kb) == "bob"


def test_key_for_unknown_user_not_found(store: SQLTenancyStore) -> None:
    with pytest.raises(NotFoundError):
        store.create_api_key("ghost")


def test_keys_are_stored_hashed(store: SQLTenancyStore) -> None:
    store.create_user("alice")
    key, _ = store.create_api_key("alice")
    rows = _rows(store, "SELECT * FROM api_keys")
    assert len(rows) == 1
    assert all(key not in str(value) for value in rows[0])
    (stored_hash, prefix) = _rows(store, "SELECT key_hash, key_prefix FROM api_keys")[0]
    assert stored_hash == hashlib.sha256(key.encode()).hexdigest()
    assert key.startswith(prefix)
    assert len(prefix) < 16


def test_revoked_key_is_ignored(store: SQLTenancyStore) -> None:
    store.create_user("alice")
    (revoked, _), (kept, _) = store.create_api_key("alice"), store.create_api_key("alice")
    digest = hashlib.sha256(revoked.encode()).hexdigest()
    with store.engine.begin() as conn:
        conn.execute(
            text("UPDATE api_keys SET revoked = :t WHERE key_hash = :h"), {"t": True, "h": digest}
        )
    assert store.user_for_key(revoked) is None
    assert store.user_for_key(kept) == "alice"


def test_key_records_scopes_description_expiry_and_creator(store: SQLTenancyStore) -> None:
    store.create_user("alice")
    expires = datetime.now(UTC) + timedelta(days=3)
    key, record = store.create_api_key(
        "alice", ["write", "read", "read"], "ci bot", expires, created_by="root"
    )
    assert record.scopes == (Scope.READ, Scope.WRITE)
    assert (record.user_id, record.description, record.created_by) == ("alice", "ci bot", "root")
    assert record.expires_at is not None and ISO.match(record.expires_at)
    assert re.fullmatch(r"[0-9a-f]{32}", record.key_id)
    assert key.startswith(record.key_prefix)
    found = store.key_for(key)
    assert found is not None
    assert found.model_dump(exclude={"last_used_at"}) == record.model_dump(exclude={"last_used_at"})
    assert store.key_for(key + "x") is None
    # The default: a key that reads and writes, as before scopes existed.
    _, plain = store.create_api_key("alice")
    assert plain.scopes == (Scope.READ, Scope.WRITE) and plain.expires_at is None
    _, everything = store.create_api_key("alice", ["all"])
    assert everything.scopes == (Scope.READ, Scope.WRITE, Scope.ADMIN)


def test_bad_scopes_and_descriptions_rejected(store: SQLTenancyStore) -> None:
    store.create_user("alice")
    for scopes in (["read", "root"], [], "read"):
        with pytest.raises(BadRequestError):
            store.create_api_key("alice", scopes)
    for description in ("d" * 501, "nul\x00"):
        with pytest.raises(BadRequestError):
            store.create_api_key("alice", description=description)
    assert store.list_api_keys("alice") == []


def test_expired_key_identifies_nobody(store: SQLTenancyStore) -> None:
    store.create_user("alice")
    soon, record = store.create_api_key("alice", expires_at=datetime.now(UTC) + timedelta(days=1))
    assert store.key_for(soon) is not None
    past = "2000-01-01T00:00:00.000000Z"
    with store.engine.begin() as conn:
        conn.execute(
            text("UPDATE api_keys SET expires_at = :p WHERE key_id = :k"),
            {"p": past, "k": record.key_id},
        )
    assert store.key_for(soon) is None
    assert store.user_for_key(soon) is None
    (listed,) = store.list_api_keys("alice")
    assert listed.expires_at == past and not listed.revoked


def test_list_and_revoke_keys(store: SQLTenancyStore) -> None:
    store.create_user("alice")
    store.create_user("bob")
    a1, r1 = store.create_api_key("alice")
    _, r2 = store.create_api_key("alice", ["read"])
    _, rb = store.create_api_key("bob")
    assert [k.key_id for k in store.list_api_keys("alice")] == [r2.key_id, r1.key_id]
    assert {k.key_id for k in store.list_api_keys()} == {r1.key_id, r2.key_id, rb.key_id}
    assert store.list_api_keys("ghost") == [] and store.list_api_keys("a\nb") == []
    assert store.revoke_api_key(r1.key_id) is True
    assert store.revoke_api_key(r1.key_id) is False  # already revoked
    assert store.revoke_api_key("no-such-key") is False
    assert store.revoke_api_key("k" * 1000) is False
    assert store.key_for(a1) is None
    revoked = {k.key_id: k.revoked for k in store.list_api_keys()}
    assert revoked == {r1.key_id: True, r2.key_id: False, rb.key_id: False}


def test_last_used_is_recorded_at_most_once_a_minute(store: SQLTenancyStore) -> None:
    store.create_user("alice")
    key, record = store.create_api_key("alice")
    assert record.last_used_at is None
    store.key_for(key)
    (first,) = _rows(store, "SELECT last_used_at FROM api_keys")
    assert first[0] is not None and ISO.match(first[0])
    store.key_for(key)
    assert _rows(store, "SELECT last_used_at FROM api_keys") == [first]
    with store.engine.begin() as conn:
        conn.execute(text("UPDATE api_keys SET last_used_at = '2000-01-01T00:00:00.000000Z'"))
    store.key_for(key)
    (later,) = _rows(store, "SELECT last_used_at FROM api_keys")
    assert later[0] > "2000-01-01T00:00:00.000000Z"


# The api_keys table as the first release created it (PostgreSQL and SQLite spellings agree).
_OLD_SCHEMA = [
    "CREATE TABLE users (user_id VARCHAR(128) NOT NULL, created_at VARCHAR(32) NOT NULL, "
    "CONSTRAINT pk_users PRIMARY KEY (user_id))",
    "CREATE TABLE api_keys (id {serial} NOT NULL, user_id VARCHAR(128) NOT NULL, "
    "key_hash VARCHAR(64) NOT NULL, key_prefix VARCHAR(16) NOT NULL, "
    "created_at VARCHAR(32) NOT NULL, revoked BOOLEAN DEFAULT {false} NOT NULL, "
    "CONSTRAINT pk_api_keys PRIMARY KEY (id), "
    "CONSTRAINT fk_api_keys_user_id_users FOREIGN KEY(user_id) REFERENCES users (user_id) "
    "ON DELETE CASCADE, CONSTRAINT uq_api_keys_key_hash UNIQUE (key_hash))",
    "CREATE INDEX ix_api_keys_user_id ON api_keys (user_id)",
]


def test_an_old_api_keys_table_is_migrated(store_url: str) -> None:
    """A database from before scopes: its columns are added at start, its keys get ids and
    keep reading and writing."""
    url = make_url(store_url)
    postgres = url.get_backend_name() == "postgresql"
    if not postgres:
        Path(url.database or "").parent.mkdir(parents=True, exist_ok=True)
    engine = create_engine(store_url)
    old_key = "mrk_" + "o" * 43
    with engine.begin() as conn:
        for ddl in _OLD_SCHEMA:
            spelled = ddl.format(
                serial="SERIAL" if postgres else "INTEGER", false="false" if postgres else "0"
            )
            conn.execute(text(spelled))
        conn.execute(text("INSERT INTO users VALUES ('old', '2024-01-01T00:00:00.000000Z')"))
        for key in (old_key, "mrk_" + "p" * 43):
            conn.execute(
                text(
                    "INSERT INTO api_keys (user_id, key_hash, key_prefix, created_at) "
                    "VALUES ('old', :h, :p, '2024-01-01T00:00:00.000000Z')"
                ),
                {"h": hashlib.sha256(key.encode()).hexdigest(), "p": key[:8]},
            )
    engine.dispose()

    store = SQLTenancyStore(store_url)
    try:
        record = store.key_for(old_key)
        assert record is not None
        assert record.user_id == "old" and record.scopes == (Scope.READ, Scope.WRITE)
        assert record.can_write and not record.is_admin
        ids = {k.key_id for k in store.list_api_keys("old")}
        assert len(ids) == 2 and all(re.fullmatch(r"[0-9a-f]{32}", i) for i in ids)
        new_key, _ = store.create_api_key("old", ["read"], "after the migration")
    finally:
        store.close()

    again = SQLTenancyStore(store_url)  # nothing left to migrate: ids and keys are kept
    try:
        assert ids < {k.key_id for k in again.list_api_keys("old")}
        assert again.key_for(new_key).scopes == (Scope.READ,)  # type: ignore[union-attr]
        assert again.revoke_api_key(record.key_id)
        assert again.key_for(old_key) is None
        # The backfilled ids are unique, like new ones.
        with pytest.raises(IntegrityError), again.engine.begin() as conn:
            conn.execute(text("UPDATE api_keys SET key_id = 'same'"))
    finally:
        again.close()


# --- cubes ------------------------------------------------------------------------------


def test_create_and_get_cube(store: SQLTenancyStore) -> None:
    store.create_user("alice")
    cube = store.create_cube("c1", "Alice's notes", "alice")
    assert (cube.cube_id, cube.cube_name, cube.owner_id) == ("c1", "Alice's notes", "alice")
    assert ISO.match(cube.created_at)
    assert store.get_cube("c1") == cube
    assert store.get_cube("c2") is None


def test_duplicate_cube_conflicts(store: SQLTenancyStore) -> None:
    store.create_user("alice")
    store.create_user("bob")
    store.create_cube("c1", "one", "alice")
    with pytest.raises(ConflictError):
        store.create_cube("c1", "other", "bob")
    assert store.get_cube("c1").owner_id == "alice"  # type: ignore[union-attr]


def test_cube_of_unknown_owner_not_found(store: SQLTenancyStore) -> None:
    with pytest.raises(NotFoundError):
        store.create_cube("c1", "one", "ghost")
    assert store.get_cube("c1") is None


def test_cubes_of_lists_owned_cubes_only(store: SQLTenancyStore) -> None:
    store.create_user("alice")
    store.create_user("bob")
    store.create_cube("c2", "two", "alice")
    store.create_cube("c1", "one", "alice")
    store.create_cube("b1", "bob's", "bob")
    store.grant("b1", "alice", Access.WRITE)
    assert [c.cube_id for c in store.cubes_of("alice")] == ["c1", "c2"]
    assert [c.cube_id for c in store.cubes_of("bob")] == ["b1"]
    assert store.cubes_of("ghost") == []


def test_grants_of_lists_grants_not_owned_cubes(store: SQLTenancyStore) -> None:
    for user in ("alice", "bob", "carol"):
        store.create_user(user)
    store.create_cube("b2", "two", "bob")
    store.create_cube("b1", "one", "bob")
    store.create_cube("a1", "alice's", "alice")
    store.grant("b2", "alice", Access.READ)
    store.grant("b1", "alice", Access.WRITE)
    store.grant("b1", "carol", Access.READ)
    grants = store.grants_of("alice")
    assert [(g.cube_id, g.access) for g in grants] == [("b1", "write"), ("b2", "read")]
    store.revoke("b1", "alice")
    assert [g.cube_id for g in store.grants_of("alice")] == ["b2"]
    assert store.grants_of("bob") == []


# --- grants and access ------------------------------------------------------------------


@pytest.fixture
def shared(store: SQLTenancyStore) -> SQLTenancyStore:
    for user in ("owner", "reader", "writer", "stranger"):
        store.create_user(user)
    store.create_cube("cube", "shared cube", "owner")
    return store


def test_access_levels(shared: SQLTenancyStore) -> None:
    read = shared.grant("cube", "reader", Access.READ)
    write = shared.grant("cube", "writer", Access.WRITE)
    assert (read.cube_id, read.user_id, read.access) == ("cube", "reader", Access.READ)
    assert write.access == Access.WRITE
    assert shared.access_of("owner", "cube") is Access.OWNER
    assert shared.access_of("reader", "cube") is Access.READ
    assert shared.access_of("writer", "cube") is Access.WRITE
    assert shared.access_of("stranger", "cube") is None
    assert shared.access_of("ghost", "cube") is None
    assert shared.access_of("owner", "no-such-cube") is None


def test_grant_upgrades_and_downgrades_in_place(shared: SQLTenancyStore) -> None:
    shared.grant("cube", "reader", Access.READ)
    assert shared.grant("cube", "reader", Access.WRITE).access == Access.WRITE
    assert shared.access_of("reader", "cube") is Access.WRITE
    assert shared.grant("cube", "reader", Access.READ).access == Access.READ
    assert shared.access_of("reader", "cube") is Access.READ
    assert shared.grant("cube", "reader", "write").access == Access.WRITE  # type: ignore[arg-type]
    assert _rows(shared, "SELECT access FROM grants") == [("write",)]


def test_grant_to_owner_is_a_no_op(shared: SQLTenancyStore) -> None:
    grant = shared.grant("cube", "owner", Access.READ)
    assert grant.access == Access.OWNER
    assert shared.access_of("owner", "cube") is Access.OWNER
    assert _rows(shared, "SELECT * FROM grants") == []


def test_grant_errors(shared: SQLTenancyStore) -> None:
    with pytest.raises(NotFoundError):
        shared.grant("no-such-cube", "reader", Access.READ)
    with pytest.raises(NotFoundError):
        shared.grant("cube", "ghost", Access.READ)
    with pytest.raises(BadRequestError):
        shared.grant("cube", "reader", Access.OWNER)
    with pytest.raises(BadRequestError):
        shared.grant("cube", "reader", "admin")  # type: ignore[arg-type]
    assert shared.access_of("reader", "cube") is None


# --- validation -------------------------------------------------------------------------


@pytest.mark.parametrize("bad", BAD_IDS, ids=repr)
def test_bad_ids_rejected(store: SQLTenancyStore, bad: str) -> None:
    store.create_user("alice")
    store.create_cube("cube", "name", "alice")
    calls: list[Callable[[], object]] = [
        lambda: store.create_user(bad),
        lambda: store.ensure_user(bad),
        lambda: store.create_api_key(bad),
        lambda: store.create_cube(bad, "name", "alice"),
        lambda: store.create_cube("c2", "name", bad),
        lambda: store.grant(bad, "alice", Access.READ),
        lambda: store.grant("cube", bad, Access.READ),
    ]
    for call in calls:
        with pytest.raises(BadRequestError):
            call()
    assert store.get_user(bad) is None
    assert store.get_cube(bad) is None
    assert store.access_of(bad, "cube") is None
    assert store.cubes_of(bad) == []
    assert store.grants_of(bad) == []


def test_bad_cube_names_rejected(store: SQLTenancyStore) -> None:
    store.create_user("alice")
    for bad in ["", "n" * 257, "line\nbreak"]:
        with pytest.raises(BadRequestError):
            store.create_cube("c1", bad, "alice")


# --- concurrency and persistence --------------------------------------------------------


def _race(n: int, fn: Callable[[], object]) -> list[object]:
    """Run fn in n threads released at once; returns results or raised exceptions."""
    barrier = threading.Barrier(n)

    def one() -> object:
        barrier.wait()
        try:
            return fn()
        except Exception as exc:
            return exc

    with ThreadPoolExecutor(n) as pool:
        return list(pool.map(lambda _: one(), range(n)))


def test_concurrent_create_user_has_one_winner(store: SQLTenancyStore) -> None:
    outcomes = _race(12, lambda: store.create_user("racer"))
    errors = [o for o in outcomes if isinstance(o, Exception)]
    assert len(outcomes) - len(errors) == 1
    assert all(isinstance(e, ConflictError) for e in errors), errors


def test_concurrent_create_cube_has_one_winner(store: SQLTenancyStore) -> None:
    store.create_user("alice")
    outcomes = _race(12, lambda: store.create_cube("racer", "name", "alice"))
    errors = [o for o in outcomes if isinstance(o, Exception)]
    assert len(outcomes) - len(errors) == 1
    assert all(isinstance(e, ConflictError) for e in errors), errors


def test_concurrent_ensure_user_agrees(store: SQLTenancyStore) -> None:
    outcomes = _race(12, lambda: store.ensure_user("racer"))
    assert not [o for o in outcomes if isinstance(o, Exception)], outcomes
    assert len({o.created_at for o in outcomes}) == 1  # type: ignore[attr-defined]


def test_sqlite_persists_across_reopen(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'memos.db'}"
    first = SQLTenancyStore(url)
    first.create_user("alice")
    key, _ = first.create_api_key("alice")
    first.create_cube("c1", "one", "alice")
    first.create_user("bob")
    first.grant("c1", "bob", Access.READ)
    first.close()

    second = SQLTenancyStore(url)
    try:
        assert second.get_user("alice") is not None
        assert second.user_for_key(key) == "alice"
        assert [c.cube_id for c in second.cubes_of("alice")] == ["c1"]
        assert second.access_of("bob", "c1") is Access.READ
    finally:
        second.close()


@pytest.mark.postgres
def test_plain_postgres_url_schemes_use_psycopg(postgres_url: str) -> None:
    rest = postgres_url.removeprefix("postgresql+psycopg://")
    for scheme in ("postgresql://", "postgres://"):
        s = SQLTenancyStore(scheme + rest)
        try:
            assert s.engine.url.drivername == "postgresql+psycopg"
            s.ensure_user(f"plain-{uuid.uuid4().hex}")
        finally:
            s.close()


def test_llm_usage_accumulates_atomically(store: SQLTenancyStore) -> None:
    assert store.llm_usage("fresh-cube").total_tokens == 0
    with ThreadPoolExecutor(8) as pool:
        list(pool.map(lambda _: store.record_llm_usage("busy", 10, 3), range(40)))
    usage = store.llm_usage("busy")
    assert (usage.calls, usage.prompt_tokens, usage.completion_tokens) == (40, 400, 120)
    assert usage.budget_tokens is None and not usage.over_budget


def test_llm_budget_set_lifted_and_kept_by_counting(store: SQLTenancyStore) -> None:
    assert store.set_llm_budget("budgeted", 100).budget_tokens == 100
    store.record_llm_usage("budgeted", 80, 30)
    usage = store.llm_usage("budgeted")
    assert usage.budget_tokens == 100 and usage.over_budget
    assert store.set_llm_budget("budgeted", None).budget_tokens is None
    assert not store.llm_usage("budgeted").over_budget
    assert store.llm_usage("budgeted").total_tokens == 110
    with pytest.raises(BadRequestError):
        store.set_llm_budget("budgeted", -1)


# --- one namespace for user ids and cube ids ---------------------------------------------


def test_another_users_default_cube_cannot_be_created(store: SQLTenancyStore) -> None:
    store.create_user("bob")
    store.create_user("carol")
    with pytest.raises(ConflictError, match="default cube"):
        store.create_cube("carol", "squat", "bob")
    # The user itself may, and a cube id that is nobody's user id is free.
    assert store.create_cube("carol", "carol", "carol").owner_id == "carol"
    assert store.create_cube("bob-project", "p", "bob").owner_id == "bob"


def test_a_cube_id_reserves_the_user_id(store: SQLTenancyStore) -> None:
    store.create_user("bob")
    store.create_cube("dave", "bob's cube named dave", "bob")
    with pytest.raises(ConflictError, match="share one namespace"):
        store.create_user("dave")
    with pytest.raises(ConflictError, match="share one namespace"):
        store.ensure_user("dave")
    assert store.get_user("dave") is None
    # Existing users are unaffected: ensure_user of one is a read.
    assert store.ensure_user("bob").user_id == "bob"


def test_namespace_race_has_one_winner(store: SQLTenancyStore) -> None:
    store.create_user("owner")
    barrier = threading.Barrier(2)

    def make_user() -> str:
        barrier.wait()
        try:
            store.create_user("contested")
            return "user"
        except ConflictError:
            return "lost"

    def make_cube() -> str:
        barrier.wait()
        try:
            store.create_cube("contested", "c", "owner")
            return "cube"
        except ConflictError:
            return "lost"

    with ThreadPoolExecutor(2) as pool:
        results = sorted(f.result() for f in [pool.submit(make_user), pool.submit(make_cube)])
    assert results.count("lost") == 1, results


def test_revoke_removes_a_grant_and_never_ownership(shared: SQLTenancyStore) -> None:
    shared.grant("cube", "reader", Access.WRITE)
    assert shared.revoke("cube", "reader") is True
    assert shared.access_of("reader", "cube") is None
    assert shared.revoke("cube", "reader") is False  # nothing left to remove
    assert shared.revoke("cube", "owner") is False
    assert shared.access_of("owner", "cube") is Access.OWNER
    assert shared.revoke("no-such-cube", "reader") is False
    assert shared.revoke("cube", "x" * 500) is False  # an invalid id names nothing
