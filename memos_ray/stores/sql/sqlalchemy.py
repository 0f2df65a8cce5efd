"""TenancyStore on SQLAlchemy: SQLite (embedded default) or PostgreSQL via psycopg 3.

Decisions:
- Uniqueness is left to the database: a duplicate insert raises IntegrityError, which becomes
  ConflictError, so concurrent creators of one id get exactly one winner on both backends.
- Ids (users, cubes) must be 1..128 characters without control characters; writes reject
  others with BadRequestError, while lookups simply find nothing (they cannot exist).
- Granting to the cube's owner is a no-op that returns an OWNER-level Grant: the owner already
  has every right, and callers sharing a cube with a list of users need not filter the owner.
  Granting Access.OWNER is a BadRequestError (ownership is not transferable).
- Only SQLite and PostgreSQL are supported: upserts use their ON CONFLICT dialect support.
- User ids and cube ids share one namespace, because a user's default cube has the user's id.
  A cube whose id is another user's id is refused (it is that user's default cube), and a
  cube whose id is not yet a user reserves that id: creating such a user is then refused.
  Both checks run under one namespace lock (an advisory lock on PostgreSQL, a process lock on
  SQLite, whose writers are serialised anyway), so the two orders cannot race.
- API keys carry a public `key_id` (listings and revocation use it), scopes, an optional
  expiry and `last_used_at`, written at most once a minute per key so that authenticating
  stays one read. Tables from before these columns get them at start (`migrate`); old keys
  keep reading and writing.
"""

from __future__ import annotations

import hashlib
import logging
import secrets
import threading
import uuid
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any, cast

from sqlalchemy import (
    Connection,
    CursorResult,
    Engine,
    MetaData,
    create_engine,
    delete,
    event,
    func,
    or_,
    select,
    text,
    update,
)
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import URL, make_url
from sqlalchemy.exc import ArgumentError, IntegrityError, SQLAlchemyError
from sqlalchemy.orm import Session, sessionmaker
from sqlalchemy.pool import StaticPool

from memos_ray import metrics
from memos_ray.config import MemosConfig
from memos_ray.domain.memory import iso, utc_now
from memos_ray.domain.tenancy import (
    FULL_USER_SCOPES,
    Access,
    ApiKey,
    Cube,
    Grant,
    LLMUsage,
    Scope,
    User,
    parse_scopes,
)
from memos_ray.errors import (
    BadRequestError,
    ConfigError,
    ConflictError,
    MemosError,
    NotFoundError,
    StoreError,
)
from memos_ray.stores.sql.base import TenancyStore
from memos_ray.stores.sql.migrate import add_missing_columns, has_unique_index
from memos_ray.stores.sql.models import (
    DESCRIPTION_MAX_LEN,
    ID_MAX_LEN,
    KEY_ID_LEN,
    NAME_MAX_LEN,
    ApiKeyRow,
    Base,
    CubeRow,
    GrantRow,
    LLMUsageRow,
    UserRow,
)

logger = logging.getLogger("memos_ray.stores.sql")

KEY_PREFIX = "mrk_"
# How stale `last_used_at` may get: one write per key per minute, not one per request.
_LAST_USED_EVERY = timedelta(minutes=1)
# Long enough to tell keys apart in a listing, far too short to matter for guessing.
_DISPLAY_PREFIX_LEN = len(KEY_PREFIX) + 4
# Keys we mint are ~47 characters; anything much longer is not ours, so skip the lookup.
_MAX_KEY_LEN = 256
_SQLITE_BUSY_TIMEOUT_S = 30.0
# Serialises schema creation between processes starting at once against one PostgreSQL.
_PG_SCHEMA_LOCK = 0x6D656D6F73  # "memos"
# Serialises user and cube creation (one namespace) between processes on one PostgreSQL.
_PG_NAMESPACE_LOCK = 0x6D656D6F736E  # "memosn"


def normalize_url(url: str) -> URL:
    """Route bare PostgreSQL URLs (as hosting providers print them) to psycopg 3."""
    for scheme in ("postgresql://", "postgres://"):
        if url.startswith(scheme):
            url = "postgresql+psycopg://" + url[len(scheme) :]
            break
    try:
        return make_url(url)
    except ArgumentError as exc:
        raise ConfigError(f"invalid SQL url: {exc}") from None


def hash_key(api_key: str) -> str:
    return hashlib.sha256(api_key.encode("utf-8", "surrogatepass")).hexdigest()


def _check_text(kind: str, value: object, max_len: int) -> str:
    if not isinstance(value, str) or not value:
        raise BadRequestError(f"{kind} must be a non-empty string")
    if len(value) > max_len:
        raise BadRequestError(f"{kind} is longer than {max_len} characters")
    if any(ord(ch) < 32 or 127 <= ord(ch) < 160 for ch in value):
        raise BadRequestError(f"{kind} must not contain control characters")
    return value


def _check_id(kind: str, value: object) -> str:
    return _check_text(kind, value, ID_MAX_LEN)


def _valid_id(value: object) -> bool:
    try:
        _check_id("id", value)
    except BadRequestError:
        return False
    return True


def _user(row: UserRow) -> User:
    return User(user_id=row.user_id, created_at=row.created_at)


def _usage(row: LLMUsageRow) -> LLMUsage:
    return LLMUsage(
        cube_id=row.cube_id,
        calls=row.calls,
        prompt_tokens=row.prompt_tokens,
        completion_tokens=row.completion_tokens,
        budget_tokens=row.budget_tokens,
    )


def _api_key(row: ApiKeyRow) -> ApiKey:
    return ApiKey(
        key_id=row.key_id,
        user_id=row.user_id,
        key_prefix=row.key_prefix,
        scopes=parse_scopes(s for s in (row.scopes or "").split(",") if s),
        description=row.description,
        created_at=row.created_at,
        expires_at=row.expires_at,
        created_by=row.created_by,
        last_used_at=row.last_used_at,
        revoked=bool(row.revoked),
    )


def _check_scopes(scopes: Iterable[Scope | str]) -> tuple[Scope, ...]:
    if isinstance(scopes, str):
        raise BadRequestError("scopes must be a list of scope names")
    try:
        parsed = parse_scopes(scopes)
    except ValueError as exc:
        raise BadRequestError(str(exc)) from None
    if not parsed:
        raise BadRequestError("an API key needs at least one scope")
    return parsed


def _check_description(description: str | None) -> str | None:
    if description is None or description == "":
        return None
    if not isinstance(description, str) or len(description) > DESCRIPTION_MAX_LEN:
        raise BadRequestError(f"description must be text of at most {DESCRIPTION_MAX_LEN} chars")
    if "\x00" in description:
        raise BadRequestError("description must not contain NUL characters")
    return description


def _cube(row: CubeRow) -> Cube:
    return Cube(
        cube_id=row.cube_id,
        cube_name=row.cube_name,
        owner_id=row.owner_id,
        created_at=row.created_at,
    )


class SQLTenancyStore(TenancyStore):
    """One engine shared by all threads; every call runs in its own short transaction."""

    @classmethod
    def for_config(cls, config: MemosConfig) -> SQLTenancyStore:
        """The configured store (SQLite in the data dir by default): users, cubes, grants,
        keys, the task log and the embedding spaces registry."""
        config.data_dir.mkdir(parents=True, exist_ok=True)
        return cls(config.sql_url())

    def __init__(self, url: str, *, echo: bool = False) -> None:
        parsed = normalize_url(url)
        self._backend = parsed.get_backend_name()
        if self._backend not in ("sqlite", "postgresql"):
            raise ConfigError(f"unsupported SQL backend {self._backend!r}")
        self._url = parsed
        try:
            self._engine = self._make_engine(parsed, echo)
        except (SQLAlchemyError, ImportError) as exc:
            raise ConfigError(f"cannot create SQL engine for {self._safe_url()}: {exc}") from exc
        self._sessions = sessionmaker(self._engine, expire_on_commit=False)
        self._namespace = threading.Lock()
        self._create_schema()

    @property
    def engine(self) -> Engine:
        """For tests and admin tooling that need to look at the tables directly."""
        return self._engine

    def _safe_url(self) -> str:
        return self._url.render_as_string(hide_password=True)

    def _make_engine(self, url: URL, echo: bool) -> Engine:
        if self._backend == "postgresql":
            return create_engine(url, echo=echo, pool_pre_ping=True)
        database = url.database or ""
        in_memory = database in ("", ":memory:") or "mode=memory" in str(url.query)
        if not in_memory and not database.startswith("file:"):
            Path(database).expanduser().parent.mkdir(parents=True, exist_ok=True)
        kwargs: dict[str, Any] = {
            "connect_args": {"check_same_thread": False, "timeout": _SQLITE_BUSY_TIMEOUT_S}
        }
        if in_memory:
            # One shared connection, or each pooled connection would see its own empty database.
            kwargs["poolclass"] = StaticPool
        engine = create_engine(url, echo=echo, **kwargs)

        @event.listens_for(engine, "connect")
        def _on_connect(dbapi_conn: Any, _record: Any) -> None:
            cursor = dbapi_conn.cursor()
            try:
                if not in_memory:
                    cursor.execute("PRAGMA journal_mode=WAL")
                cursor.execute("PRAGMA foreign_keys=ON")
                cursor.execute(f"PRAGMA busy_timeout={int(_SQLITE_BUSY_TIMEOUT_S * 1000)}")
            finally:
                cursor.close()

        return engine

    def _create_schema(self) -> None:
        create_tables(Base.metadata, self._engine, self._safe_url(), after=_backfill_key_ids)

    @contextmanager
    def _txn(self, conflict: str | None = None) -> Iterator[Session]:
        """A committed-or-rolled-back session; database errors leave as MemosErrors."""
        try:
            with self._sessions() as session, session.begin():
                yield session
        except MemosError:
            raise
        except IntegrityError as exc:
            if conflict is not None:
                raise ConflictError(conflict) from None
            metrics.store_error("sql", self._backend, "integrity")
            raise StoreError(f"integrity error: {exc.orig}") from exc
        except SQLAlchemyError as exc:
            metrics.store_error("sql", self._backend, "transaction")
            raise StoreError(f"SQL store failed: {exc}") from exc

    @contextmanager
    def _namespace_txn(self, conflict: str | None = None) -> Iterator[Session]:
        """A transaction that holds the user/cube namespace lock, so a check for the other
        kind of id and the insert are one step (see the module's decisions)."""
        with self._namespace, self._txn(conflict) as s:
            if self._backend == "postgresql":
                s.execute(select(func.pg_advisory_xact_lock(_PG_NAMESPACE_LOCK)))
            yield s

    @staticmethod
    def _reserved_by_cube(s: Session, user_id: str) -> None:
        """Refuse a new user whose id is a cube someone else owns (it would be its default)."""
        cube = s.get(CubeRow, user_id)
        if cube is not None and cube.owner_id != user_id:
            raise ConflictError(
                f"id {user_id!r} is taken by a cube of user {cube.owner_id!r}; user ids and "
                "cube ids share one namespace, so pick another user id"
            )

    def _insert(self, table: Any) -> Any:
        dialect = postgresql if self._backend == "postgresql" else sqlite
        return dialect.insert(table)

    # --- users --------------------------------------------------------------------------

    def create_user(self, user_id: str) -> User:
        _check_id("user_id", user_id)
        row = UserRow(user_id=user_id, created_at=iso(utc_now()))
        with self._namespace_txn(conflict=f"user {user_id!r} already exists") as s:
            if s.get(UserRow, user_id) is not None:
                raise ConflictError(f"user {user_id!r} already exists")
            self._reserved_by_cube(s, user_id)
            s.add(row)
            s.flush()
        return _user(row)

    def ensure_user(self, user_id: str) -> User:
        _check_id("user_id", user_id)
        with self._txn() as s:
            row = s.get(UserRow, user_id)
            if row is not None:  # the hot path: no namespace lock for known users
                return _user(row)
        stmt = (
            self._insert(UserRow)
            .values(user_id=user_id, created_at=iso(utc_now()))
            .on_conflict_do_nothing(index_elements=["user_id"])
        )
        with self._namespace_txn() as s:
            if s.get(UserRow, user_id) is None:
                self._reserved_by_cube(s, user_id)
            s.execute(stmt)
            row = s.get(UserRow, user_id)
            if row is None:  # only if another process deleted it in between
                raise StoreError(f"user {user_id!r} vanished while being ensured")
            return _user(row)

    def get_user(self, user_id: str) -> User | None:
        if not _valid_id(user_id):
            return None
        with self._txn() as s:
            row = s.get(UserRow, user_id)
            return _user(row) if row is not None else None

    # --- keys ---------------------------------------------------------------------------

    def create_api_key(
        self,
        user_id: str,
        scopes: Iterable[Scope | str] = FULL_USER_SCOPES,
        description: str | None = None,
        expires_at: datetime | None = None,
        created_by: str | None = None,
    ) -> tuple[str, ApiKey]:
        _check_id("user_id", user_id)
        parsed = _check_scopes(scopes)
        description = _check_description(description)
        if created_by is not None:
            _check_id("created_by", created_by)
        api_key = KEY_PREFIX + secrets.token_urlsafe(32)
        row = ApiKeyRow(
            key_id=uuid.uuid4().hex,
            user_id=user_id,
            key_hash=hash_key(api_key),
            key_prefix=api_key[:_DISPLAY_PREFIX_LEN],
            created_at=iso(utc_now()),
            revoked=False,
            scopes=",".join(parsed),
            description=description,
            expires_at=iso(expires_at) if expires_at is not None else None,
            created_by=created_by,
        )
        with self._txn() as s:
            if s.get(UserRow, user_id) is None:
                raise NotFoundError(f"user {user_id!r} not found")
            s.add(row)
            s.flush()
            record = _api_key(row)
        return api_key, record

    def key_for(self, api_key: str) -> ApiKey | None:
        if not isinstance(api_key, str) or not api_key.startswith(KEY_PREFIX):
            return None
        if len(api_key) > _MAX_KEY_LEN:
            return None
        stmt = select(ApiKeyRow).where(ApiKeyRow.key_hash == hash_key(api_key))
        with self._txn() as s:
            row = s.execute(stmt).scalar_one_or_none()
            key = _api_key(row) if row is not None else None
        now = utc_now()
        if key is None or not key.active(iso(now)):
            return None
        self._touch(key, now)
        return key

    def _touch(self, key: ApiKey, now: datetime) -> None:
        """Record the use, unless recorded within the last minute (by any process)."""
        stale = iso(now - _LAST_USED_EVERY)
        if key.last_used_at is not None and key.last_used_at > stale:
            return
        stmt = (
            update(ApiKeyRow)
            .where(
                ApiKeyRow.key_id == key.key_id,
                or_(ApiKeyRow.last_used_at.is_(None), ApiKeyRow.last_used_at <= stale),
            )
            .values(last_used_at=iso(now))
        )
        try:
            with self._txn() as s:
                s.execute(stmt)
        except StoreError as exc:  # bookkeeping only: the key was valid, let the request in
            logger.warning("could not record the use of API key %s: %s", key.key_id, exc)

    def list_api_keys(self, user_id: str | None = None) -> list[ApiKey]:
        stmt = select(ApiKeyRow).order_by(ApiKeyRow.created_at.desc(), ApiKeyRow.id.desc())
        if user_id is not None:
            if not _valid_id(user_id):
                return []
            stmt = stmt.where(ApiKeyRow.user_id == user_id)
        with self._txn() as s:
            return [_api_key(row) for row in s.scalars(stmt)]

    def revoke_api_key(self, key_id: str) -> bool:
        if not isinstance(key_id, str) or not key_id or len(key_id) > KEY_ID_LEN:
            return False
        stmt = (
            update(ApiKeyRow)
            .where(ApiKeyRow.key_id == key_id, ApiKeyRow.revoked.is_(False))
            .values(revoked=True)
        )
        with self._txn() as s:
            result = cast(CursorResult[Any], s.execute(stmt))
            return result.rowcount > 0

    # --- cubes and grants ---------------------------------------------------------------

    def create_cube(self, cube_id: str, cube_name: str, owner_id: str) -> Cube:
        _check_id("cube_id", cube_id)
        _check_text("cube_name", cube_name, NAME_MAX_LEN)
        _check_id("owner_id", owner_id)
        row = CubeRow(
            cube_id=cube_id, cube_name=cube_name, owner_id=owner_id, created_at=iso(utc_now())
        )
        with self._namespace_txn(conflict=f"cube {cube_id!r} already exists") as s:
            if s.get(UserRow, owner_id) is None:
                raise NotFoundError(f"user {owner_id!r} not found")
            if s.get(CubeRow, cube_id) is not None:
                raise ConflictError(f"cube {cube_id!r} already exists")
            if cube_id != owner_id and s.get(UserRow, cube_id) is not None:
                raise ConflictError(
                    f"cube id {cube_id!r} is user {cube_id!r}'s default cube; only that user "
                    "may create it"
                )
            s.add(row)
            s.flush()
        return _cube(row)

    def get_cube(self, cube_id: str) -> Cube | None:
        if not _valid_id(cube_id):
            return None
        with self._txn() as s:
            row = s.get(CubeRow, cube_id)
            return _cube(row) if row is not None else None

    def grant(self, cube_id: str, user_id: str, access: Access) -> Grant:
        _check_id("cube_id", cube_id)
        _check_id("user_id", user_id)
        try:
            level = Access(access)
        except ValueError:
            raise BadRequestError(f"unknown access level {access!r}") from None
        if level is Access.OWNER:
            raise BadRequestError("ownership cannot be granted; grant 'read' or 'write'")
        # Upsert: re-granting changes the level in place (read <-> write), race-free.
        stmt = self._insert(GrantRow).values(cube_id=cube_id, user_id=user_id, access=level.value)
        stmt = stmt.on_conflict_do_update(
            index_elements=["cube_id", "user_id"], set_={"access": stmt.excluded.access}
        )
        with self._txn() as s:
            cube = s.get(CubeRow, cube_id)
            if cube is None:
                raise NotFoundError(f"cube {cube_id!r} not found")
            if s.get(UserRow, user_id) is None:
                raise NotFoundError(f"user {user_id!r} not found")
            if cube.owner_id == user_id:
                return Grant(cube_id=cube_id, user_id=user_id, access=Access.OWNER)
            s.execute(stmt)
        return Grant(cube_id=cube_id, user_id=user_id, access=level)

    def revoke(self, cube_id: str, user_id: str) -> bool:
        if not (_valid_id(user_id) and _valid_id(cube_id)):
            return False
        with self._txn() as s:
            stmt = delete(GrantRow).where(GrantRow.cube_id == cube_id, GrantRow.user_id == user_id)
            return bool(cast(CursorResult[Any], s.execute(stmt)).rowcount)

    def access_of(self, user_id: str, cube_id: str) -> Access | None:
        if not (_valid_id(user_id) and _valid_id(cube_id)):
            return None
        with self._txn() as s:
            owner = s.execute(
                select(CubeRow.owner_id).where(CubeRow.cube_id == cube_id)
            ).scalar_one_or_none()
            if owner is None:
                return None
            if owner == user_id:
                return Access.OWNER
            level = s.execute(
                select(GrantRow.access).where(
                    GrantRow.cube_id == cube_id, GrantRow.user_id == user_id
                )
            ).scalar_one_or_none()
        return Access(level) if level is not None else None

    def cubes_of(self, user_id: str) -> list[Cube]:
        if not _valid_id(user_id):
            return []
        stmt = select(CubeRow).where(CubeRow.owner_id == user_id).order_by(CubeRow.cube_id)
        with self._txn() as s:
            return [_cube(row) for row in s.scalars(stmt)]

    def grants_of(self, user_id: str) -> list[Grant]:
        if not _valid_id(user_id):
            return []
        stmt = select(GrantRow).where(GrantRow.user_id == user_id).order_by(GrantRow.cube_id)
        with self._txn() as s:
            return [
                Grant(cube_id=row.cube_id, user_id=row.user_id, access=Access(row.access))
                for row in s.scalars(stmt)
            ]

    # --- LLM token accounting ------------------------------------------------------------

    def record_llm_usage(
        self, cube_id: str, prompt_tokens: int, completion_tokens: int, calls: int = 1
    ) -> LLMUsage:
        _check_id("cube_id", cube_id)
        if min(prompt_tokens, completion_tokens, calls) < 0:
            raise BadRequestError("token counts cannot be negative")
        stmt = self._insert(LLMUsageRow).values(
            cube_id=cube_id,
            calls=calls,
            prompt_tokens=prompt_tokens,
            completion_tokens=completion_tokens,
            updated_at=iso(utc_now()),
        )
        table = LLMUsageRow.__table__
        stmt = stmt.on_conflict_do_update(
            index_elements=["cube_id"],
            set_={
                "calls": table.c.calls + calls,
                "prompt_tokens": table.c.prompt_tokens + prompt_tokens,
                "completion_tokens": table.c.completion_tokens + completion_tokens,
                "updated_at": iso(utc_now()),
            },
        )
        with self._txn() as s:
            s.execute(stmt)
            row = s.get(LLMUsageRow, cube_id, populate_existing=True)
            assert row is not None
            return _usage(row)

    def llm_usage(self, cube_id: str) -> LLMUsage:
        if not _valid_id(cube_id):
            return LLMUsage(cube_id=str(cube_id))
        with self._txn() as s:
            row = s.get(LLMUsageRow, cube_id)
            return _usage(row) if row is not None else LLMUsage(cube_id=cube_id)

    def set_llm_budget(self, cube_id: str, budget_tokens: int | None) -> LLMUsage:
        _check_id("cube_id", cube_id)
        if budget_tokens is not None and budget_tokens < 0:
            raise BadRequestError("budget_tokens cannot be negative")
        stmt = (
            self._insert(LLMUsageRow)
            .values(
                cube_id=cube_id,
                calls=0,
                prompt_tokens=0,
                completion_tokens=0,
                budget_tokens=budget_tokens,
                updated_at=iso(utc_now()),
            )
            .on_conflict_do_update(
                index_elements=["cube_id"], set_={"budget_tokens": budget_tokens}
            )
        )
        with self._txn() as s:
            s.execute(stmt)
            row = s.get(LLMUsageRow, cube_id, populate_existing=True)
            assert row is not None
            return _usage(row)

    def close(self) -> None:
        self._engine.dispose()


def create_tables(
    metadata: MetaData,
    engine: Engine,
    where: str = "the SQL store",
    after: Callable[[Connection], None] | None = None,
) -> None:
    """Create what is missing, add columns missing from existing tables, then run `after`
    (a backfill) in the same transaction. create_all checks before creating, yet two
    processes starting at once can still race on SQLite (PostgreSQL takes a lock here), so a
    lost race is retried once the winner is done."""
    last: SQLAlchemyError | None = None
    for _ in range(3):
        try:
            with engine.begin() as conn:
                if engine.dialect.name == "postgresql":
                    conn.execute(text("SELECT pg_advisory_xact_lock(:k)"), {"k": _PG_SCHEMA_LOCK})
                metadata.create_all(conn)
                added = add_missing_columns(conn, metadata)
                if added:
                    logger.info("added columns to existing tables in %s: %s", where, added)
                if after is not None:
                    after(conn)
            return
        except SQLAlchemyError as exc:
            last = exc
    raise StoreError(f"cannot create tables in {where}: {last}")


def _backfill_key_ids(conn: Connection) -> None:
    """Give keys from before `key_id` existed an id, then make the ids unique."""
    missing = conn.execute(select(ApiKeyRow.id).where(ApiKeyRow.key_id.is_(None))).scalars()
    for row_id in list(missing):
        conn.execute(
            update(ApiKeyRow)
            .where(ApiKeyRow.id == row_id, ApiKeyRow.key_id.is_(None))
            .values(key_id=uuid.uuid4().hex)
        )
    if not has_unique_index(conn, ApiKeyRow.__tablename__, ["key_id"]):
        conn.execute(text("CREATE UNIQUE INDEX uq_api_keys_key_id ON api_keys (key_id)"))
