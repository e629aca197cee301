"""What the API process holds for its lifetime: settings, database engine (and the
``Database`` that routes reach it through), object store and Temporal client."""

from __future__ import annotations

import asyncio
import functools
import itertools
import logging
import os
from collections.abc import Callable, Coroutine, Hashable
from dataclasses import dataclass, field
from typing import Any, Concatenate, ParamSpec, TypeVar

import anyio
import anyio.to_thread
from cachetools import TTLCache
from sqlalchemy import event
from sqlalchemy.engine import Connection, Engine
from sqlalchemy.exc import OperationalError
from sqlalchemy.orm import Session as OrmSession
from sqlmodel import Session
from temporalio.client import Client

from api.healthwatch import HealthWatch
from api.queueboard import QUEUE_THREADS, QueueBoard
from api.runtimes import RunTimes
from api.streamboard import StreamBoard
from replicant.db import CACHE_KEY, is_busy, make_loop_engine
from replicant.settings import Settings
from replicant.storage import ObjectStore, open_store
from replicant.tables import Account, ApiToken, Membership, Model, Version
from replicant.temporal import connect

T = TypeVar("T")
P = ParamSpec("P")

log = logging.getLogger("replicant.api")


# Threads (and connections) of /health's own, so that it answers while the API is saturated.
HEALTH_THREADS = 2


def executor_threads() -> int:
    """Threads of the event loop's default executor (``asyncio.to_thread``), as Python
    sizes it."""
    return min(32, (os.cpu_count() or 1) + 4)


def pool_size(settings: Settings) -> int:
    """Database connections an API process keeps: one for every session of a synchronous
    route (``AppState.sessions``) and every thread that may hold one at once (anyio's
    limiter, which ``Database`` uses, the default executor, ``/health``'s and the queue
    board's), so no thread waits for a connection while the one holding it waits for the
    event loop."""
    return 2 * settings.api_threads + executor_threads() + HEALTH_THREADS + QUEUE_THREADS


# Tables whose rows the lookup cache holds answers from: a change to one of them made by this
# process forgets every answer at once (other processes' changes are seen within the TTL).
CACHED_TABLES = (Account, ApiToken, Membership, Model, Version)
_changes = itertools.count()
_last_change = next(_changes)


def forget_lookups() -> None:
    """Make every ``LookupCache`` of this process forget its answers: for a change it learns
    of otherwise than by its own flush (a build's new version, written by a worker)."""
    global _last_change
    # Flushes run in threads: a fresh number (next() is atomic) that no cache has seen.
    _last_change = next(_changes)


@event.listens_for(OrmSession, "after_flush")
def _note_changes(session: OrmSession, _context: object) -> None:
    touched = itertools.chain(session.new, session.dirty, session.deleted)
    if any(isinstance(row, CACHED_TABLES) for row in touched):
        forget_lookups()


_MISSING = object()


class LookupCache:
    """Answers of ``cacheable`` lookups (a token's account, a version...), each reused for
    ``ttl`` seconds; used on the event loop only. Forgotten at once when this process
    changes one of ``CACHED_TABLES``."""

    def __init__(self, ttl: float, size: int = 4096) -> None:
        self.entries: TTLCache[Hashable, Any] = TTLCache(maxsize=size, ttl=ttl)
        self.seen = _last_change

    def get(self, key: Hashable) -> Any:
        """The answer kept under ``key``, or ``_MISSING``."""
        if self.seen != _last_change:
            self.seen = _last_change
            self.entries.clear()
        return self.entries.get(key, _MISSING)

    def put(self, key: Hashable, value: Any) -> None:
        self.entries[key] = value


@dataclass(frozen=True)
class Database:
    """How request handlers reach the database: they hand it a function of a session (or of
    a connection, for one transaction of plain statements) and never open one themselves.

    Short reads run on the event loop on SQLite, through ``loop_engine`` (the loop's own
    connection, which waits neither for the pool nor for a lock: a busy database sends the
    read to a thread), and in a thread elsewhere; writes and long reads always run in a
    thread, from the same thread limiter as synchronous routes, so the pool (sized from it)
    always has a connection for each.
    """

    engine: Engine
    loop_engine: Engine | None = None
    lookups: LookupCache | None = None

    def call(self, fn: Callable[Concatenate[Session, P], T], *args: P.args, **kw: P.kwargs) -> T:
        """``fn(session, *args)`` in a session of its own; objects stay readable after it."""
        with Session(self.engine, expire_on_commit=False) as session:
            return fn(session, *args, **kw)

    async def read(
        self, fn: Callable[Concatenate[Session, P], T], *args: P.args, **kw: P.kwargs
    ) -> T:
        """``call`` for a read-only ``fn``, on the loop where that is cheaper than a thread;
        the answer of a ``cacheable`` ``fn`` is reused for a while (None never is)."""
        key_of = getattr(fn, CACHE_KEY, None)
        key = None if key_of is None or self.lookups is None else key_of(*args, **kw)
        if key is not None and self.lookups is not None:
            found = self.lookups.get((fn, key))
            if found is not _MISSING:
                answer: T = found
                return answer
        value = await self._read(fn, *args, **kw)
        if key is not None and value is not None and self.lookups is not None:
            self.lookups.put((fn, key), value)
        return value

    async def _read(
        self, fn: Callable[Concatenate[Session, P], T], *args: P.args, **kw: P.kwargs
    ) -> T:
        if self.loop_engine is not None:
            try:
                with Session(self.loop_engine, expire_on_commit=False) as session:
                    return fn(session, *args, **kw)
            except OperationalError as err:
                if not is_busy(err):
                    raise
        return await self.run(fn, *args, **kw)

    async def run(
        self, fn: Callable[Concatenate[Session, P], T], *args: P.args, **kw: P.kwargs
    ) -> T:
        """``call`` in a thread: for an ``fn`` that writes (and commits), or reads much."""

        def called() -> T:
            return self.call(fn, *args, **kw)

        return await anyio.to_thread.run_sync(called)

    async def transaction(
        self, fn: Callable[Concatenate[Connection, P], T], *args: P.args, **kw: P.kwargs
    ) -> T:
        """``fn(connection, *args)`` in one transaction, in a thread: for plain statements on
        a hot path, where the ORM's unit of work costs more than the statements."""

        def run() -> T:
            with self.engine.begin() as conn:
                return fn(conn, *args, **kw)

        return await anyio.to_thread.run_sync(run)


@dataclass
class AppState:
    settings: Settings
    engine: Engine
    _client: Client | None = None
    _lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    # Tasks that outlive the request that started them (``keep``).
    _kept: set[asyncio.Task[Any]] = field(default_factory=set)

    @functools.cached_property
    def secret_key(self) -> str:
        """Signs URLs that carry no token (prediction streams)."""
        return self.settings.ensure_secret_key()

    @functools.cached_property
    def loop_engine(self) -> Engine | None:
        """SQLite in WAL mode: a read never waits for a writer and takes a fraction of a
        millisecond, less than handing it to a thread, so the loop reads through a
        connection of its own; other databases read in threads."""
        if self.engine.dialect.name != "sqlite":
            return None
        return make_loop_engine(self.settings.resolved_database_url)

    @functools.cached_property
    def sessions(self) -> anyio.Semaphore:
        """Places for the open sessions of synchronous routes (``api.deps.get_session``)."""
        return anyio.Semaphore(self.settings.api_threads)

    @functools.cached_property
    def session_closers(self) -> anyio.CapacityLimiter:
        """The threads that close those sessions, apart from the routes' own."""
        return anyio.CapacityLimiter(self.settings.api_threads)

    @functools.cached_property
    def health_limiter(self) -> anyio.CapacityLimiter:
        """The threads of ``/health``'s database checks (made on first use, in the loop)."""
        return anyio.CapacityLimiter(HEALTH_THREADS)

    @functools.cached_property
    def health_watch(self) -> HealthWatch:
        """``/health``'s background checks (api/healthwatch.py), made by the first one."""
        return HealthWatch(self)

    @functools.cached_property
    def queue(self) -> QueueBoard:
        """Each hardware's queue as this process shows it (api/queueboard.py)."""
        return QueueBoard(self.engine, self.settings)

    @functools.cached_property
    def run_times(self) -> RunTimes:
        """Each version's recent run times as this process answered them (api/runtimes.py)."""
        return RunTimes(self.settings.local_run_seconds)

    @functools.cached_property
    def streams(self) -> StreamBoard:
        """The runs this process's open streams follow (api/streamboard.py)."""
        return StreamBoard(self.db)

    @functools.cached_property
    def db(self) -> Database:
        """The database as request handlers use it (``api.deps.DatabaseDep``)."""
        ttl = self.settings.lookup_cache_ttl
        return Database(self.engine, self.loop_engine, LookupCache(ttl) if ttl > 0 else None)

    def dispose(self) -> None:
        """Close the database connections (at shutdown)."""
        self.engine.dispose()
        if self.__dict__.get("loop_engine") is not None:
            self.__dict__["loop_engine"].dispose()

    @functools.cached_property
    def object_store(self) -> ObjectStore:
        """The object store (files, staged inputs, outputs, weights), opened on first use."""
        return open_store(self.settings)

    def signed_output_url(self, key: str) -> str:
        """A URL of a stored object that works without a token for ``output_url_expiry``."""
        return self.object_store.signed_url(key, self.settings.output_url_expiry)

    async def store(self) -> ObjectStore:
        """``object_store``, opened in a thread on first use (S3 clients may reach out)."""
        if "object_store" not in self.__dict__:
            await asyncio.to_thread(lambda: self.object_store)
        return self.object_store

    def keep(self, work: Coroutine[Any, Any, T], what: str) -> asyncio.Task[T]:
        """Run ``work`` as a task that may outlive the request that started it (a start that
        goes on after its create has answered); held until it ends, its failure logged as
        ``what``."""
        task = asyncio.get_running_loop().create_task(work)
        self._kept.add(task)
        task.add_done_callback(functools.partial(self._forget, what))
        return task

    def _forget(self, what: str, task: asyncio.Task[Any]) -> None:
        self._kept.discard(task)
        if not task.cancelled() and (err := task.exception()) is not None:
            log.warning("event=background_failed what=%s type=%s", what, type(err).__name__)

    async def temporal(self) -> Client:
        """The Temporal client, connected on first use so the API starts before Temporal."""
        if self._client is None:
            async with self._lock:
                if self._client is None:
                    self._client = await connect(self.settings)
        return self._client
