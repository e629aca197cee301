"""Database engine and sessions (SQLite by default, PostgreSQL at scale)."""

from __future__ import annotations

import fcntl
from collections.abc import Callable, Hashable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TypeVar

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import event, inspect, text
from sqlalchemy.engine import Connection, Engine
from sqlalchemy.exc import OperationalError
from sqlalchemy.pool import SingletonThreadPool
from sqlmodel import Session, SQLModel, create_engine

from replicant import tables  # noqa: F401  (registers the tables on SQLModel.metadata)


def make_engine(url: str, connections: int | None = None) -> Engine:
    """An engine for ``url``; SQLite gets WAL and a busy timeout so API and workers share it.

    ``connections`` is how many threads of the process may hold a connection at once: the
    pool keeps that many and no more, so a thread never waits for another's connection
    (the API sizes it from its thread pools, ``api.state.pool_size``). Without it, the pool
    keeps SQLAlchemy's defaults (5 and 10 more on demand; 10 and 20 on PostgreSQL).
    """
    pool: dict[str, Any] = {}
    if connections is not None:
        pool = {"pool_size": connections, "max_overflow": 0}
    if url.startswith("sqlite"):
        return _sqlite_engine(url, busy_ms=30000, **pool)
    return create_engine(url, pool_pre_ping=True, **(pool or {"pool_size": 10, "max_overflow": 20}))


def make_loop_engine(url: str) -> Engine:
    """A SQLite engine for the event loop's own reads: a connection per thread (so the loop
    never waits for a pooled one) that never waits for a lock either (busy timeout 0:
    the caller retries in a thread when SQLite reports the database busy)."""
    return _sqlite_engine(url, busy_ms=0, poolclass=SingletonThreadPool, pool_size=2)


def is_busy(err: OperationalError) -> bool:
    """Whether SQLite refused a statement because another connection holds a lock."""
    return "database is locked" in str(err.orig) or "database is busy" in str(err.orig)


def _sqlite_engine(url: str, busy_ms: int, **pool: Any) -> Engine:
    path = url.split("///", 1)[-1]
    if path and path != ":memory:":
        Path(path).parent.mkdir(parents=True, exist_ok=True)
    engine = create_engine(
        url, connect_args={"check_same_thread": False, "timeout": busy_ms / 1000}, **pool
    )

    @event.listens_for(engine, "connect")
    def _pragmas(conn: Any, _record: Any) -> None:
        cur = conn.cursor()
        cur.execute(f"PRAGMA busy_timeout={busy_ms}")
        cur.execute("PRAGMA journal_mode=WAL")
        cur.execute("PRAGMA synchronous=NORMAL")
        cur.close()

    return engine


# The attribute ``cacheable`` puts on a lookup: the function naming its answers.
CACHE_KEY = "__lookup_cache_key__"
F = TypeVar("F", bound=Callable[..., Any])


def cacheable(key: Callable[..., Hashable | None]) -> Callable[[F], F]:
    """Mark ``fn(session, *args)``, a read-only lookup, as one whose answer may be reused for
    a short while (the API's ``Database.read`` does, ``lookup_cache_ttl``): ``key(*args)``
    names the answer, None when this one must not be reused. Callers share a reused answer's
    objects: they read them and never change them."""

    def mark(fn: F) -> F:
        setattr(fn, CACHE_KEY, key)
        return fn

    return mark


MIGRATIONS = Path(__file__).parent / "migrations"
# Serializes migrations of API and worker processes that start together on one PostgreSQL.
_MIGRATION_LOCK_KEY = 0x5EB1_1CA7


def alembic_config(connection: Connection | None = None, secret_key: str | None = None) -> Config:
    """Alembic's configuration for Replicant's migrations, bound to ``connection``;
    ``secret_key`` lets data migrations seal what they move (webhook signing secrets)."""
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    config.attributes["connection"] = connection
    config.attributes["secret_key"] = secret_key
    return config


def head_revision() -> str | None:
    """The newest migration."""
    return ScriptDirectory.from_config(alembic_config()).get_current_head()


def current_revision(engine: Engine) -> str | None:
    """The migration the database is at (None: never migrated)."""
    with engine.connect() as connection:
        return MigrationContext.configure(connection).get_current_revision()


@contextmanager
def _migration_lock(engine: Engine) -> Iterator[None]:
    # SQLite: a lock file next to the database; PostgreSQL: an advisory lock (see upgrade).
    path = engine.url.database if engine.dialect.name == "sqlite" else None
    if not path or path == ":memory:":
        yield
        return
    with open(f"{path}.migrate-lock", "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def upgrade(engine: Engine, revision: str = "head", secret_key: str | None = None) -> None:
    """Bring the database to ``revision`` (one process at a time). With ``secret_key``, data
    migrations seal what they move; without it, it is sealed on first use instead."""
    with _migration_lock(engine), engine.begin() as connection:
        if connection.dialect.name == "postgresql":
            connection.execute(
                text("SELECT pg_advisory_xact_lock(:key)"), {"key": _MIGRATION_LOCK_KEY}
            )
        current = MigrationContext.configure(connection).get_current_revision()
        if revision == "head" and current == head_revision():
            return
        if current is None and inspect(connection).has_table("account"):
            # A database made before migrations existed: complete it, then mark it current.
            SQLModel.metadata.create_all(connection)
            command.stamp(alembic_config(connection), "head")
            return
        command.upgrade(alembic_config(connection, secret_key), revision)


def init_db(engine: Engine, secret_key: str | None = None) -> None:
    """Bring the tables up to date with the migrations (the same for SQLite and PostgreSQL)."""
    upgrade(engine, secret_key=secret_key)


@contextmanager
def session_scope(engine: Engine) -> Iterator[Session]:
    """A session that commits on success and rolls back on error."""
    with Session(engine, expire_on_commit=False) as session:
        try:
            yield session
            session.commit()
        except BaseException:
            session.rollback()
            raise
