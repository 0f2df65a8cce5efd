"""One behaviour contract for every TenancyStore backend (SQLite file and PostgreSQL)."""

from __future__ import annotations

import hashlib
import re
import threading
import uuid
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from sqlalchemy import create_engine, make_url, text

from memos_ray.domain.tenancy import Access
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
    key = store.create_api_key("alice")
    assert key.startswith("mrk_")
    assert len(key) >= 40
    assert store.user_for_key(key) == "alice"


def test_invalid_keys_identify_nobody(store: SQLTenancyStore) -> None:
    store.create_user("alice")
    key = store.create_api_key("alice")
    for wrong in ["", "mrk_", "nope", key + "x", key[:-1], key.upper(), "mrk_" + "a" * 1000]:
        assert store.user_for_key(wrong) is None


def test_two_keys_per_user(store: SQLTenancyStore) -> None:
    store.create_user("alice")
    store.create_user("bob")
    k1, k2 = store.create_api_key("alice"), store.create_api_key("alice")
    kb = store.create_api_key("bob")
    assert len({k1, k2, kb}) == 3
    assert store.user_for_key(k1) == store.user_for_key(k2) == "alice"
    assert store.user_for_key(kb) == "bob"


def test_key_for_unknown_user_not_found(store: SQLTenancyStore) -> None:
    with pytest.raises(NotFoundError):
        store.create_api_key("ghost")


def test_keys_are_stored_hashed(store: SQLTenancyStore) -> None:
    store.create_user("alice")
    key = store.create_api_key("alice")
    rows = _rows(store, "SELECT * FROM api_keys")
    assert len(rows) == 1
    assert all(key not in str(value) for value in rows[0])
    (stored_hash, prefix) = _rows(store, "SELECT key_hash, key_prefix FROM api_keys")[0]
    assert stored_hash == hashlib.sha256(key.encode()).hexdigest()
    assert key.startswith(prefix)
    assert len(prefix) < 16


def test_revoked_key_is_ignored(store: SQLTenancyStore) -> None:
    store.create_user("alice")
    revoked, kept = store.create_api_key("alice"), store.create_api_key("alice")
    digest = hashlib.sha256(revoked.encode()).hexdigest()
    with store.engine.begin() as conn:
        conn.execute(
            text("UPDATE api_keys SET revoked = :t WHERE key_hash = :h"), {"t": True, "h": digest}
        )
    assert store.user_for_key(revoked) is None
    assert store.user_for_key(kept) == "alice"


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
    key = first.create_api_key("alice")
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
