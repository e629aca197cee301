"""What the API process holds for its lifetime: settings, database engine (and the
``Database`` that routes reach it through), object store and Temporal client."""

from __future__ import annotations

import asyncio
import functools
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Concatenate, ParamSpec, TypeVar

import anyio.to_thread
from sqlalchemy.engine import Connection, Engine
from sqlalchemy.exc import OperationalError
from sqlmodel import Session
from temporalio.client import Client

from replicant.db import is_busy, make_loop_engine
from replicant.settings import Settings
from replicant.storage import ObjectStore, open_store
from replicant.temporal import connect

T = TypeVar("T")
P = ParamSpec("P")


def executor_threads() -> int:
    """Threads of the event loop's default executor (``asyncio.to_thread``), as Python
    sizes it."""
    return min(32, (os.cpu_count() or 1) + 4)


def pool_size(settings: Settings) -> int:
    """Database connections an API process keeps: one for every thread that may hold one at
    once (anyio's limiter, shared by synchronous routes and ``Database``, and the default
    executor), so no thread waits for a connection while the thread holding it waits for
    the event loop."""
    return settings.api_threads + executor_threads()


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

    def call(self, fn: Callable[Concatenate[Session, P], T], *args: P.args, **kw: P.kwargs) -> T:
        """``fn(session, *args)`` in a session of its own; objects stay readable after it."""
        with Session(self.engine, expire_on_commit=False) as session:
            return fn(session, *args, **kw)

    async def read(
        self, fn: Callable[Concatenate[Session, P], T], *args: P.args, **kw: P.kwargs
    ) -> T:
        """``call`` for a read-only ``fn``, on the loop where that is cheaper than a thread."""
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
    def db(self) -> Database:
        """The database as request handlers use it (``api.deps.DatabaseDep``)."""
        return Database(self.engine, self.loop_engine)

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

    async def temporal(self) -> Client:
        """The Temporal client, connected on first use so the API starts before Temporal."""
        if self._client is None:
            async with self._lock:
                if self._client is None:
                    self._client = await connect(self.settings)
        return self._client
