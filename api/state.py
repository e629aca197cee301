"""What the API process holds for its lifetime: settings, database engine (and the
``Database`` that routes reach it through), object store and Temporal client."""

from __future__ import annotations

import asyncio
import functools
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Concatenate, ParamSpec, TypeVar

from sqlalchemy.engine import Connection, Engine
from sqlmodel import Session
from temporalio.client import Client

from replicant.settings import Settings
from replicant.storage import ObjectStore, open_store
from replicant.temporal import connect

T = TypeVar("T")
P = ParamSpec("P")


@dataclass(frozen=True)
class Database:
    """How request handlers reach the database: they hand it a function of a session (or of
    a connection, for one transaction of plain statements) and never open one themselves.

    Short reads run inline on SQLite (see ``AppState.reads_inline``) and in a thread
    elsewhere; writes and long reads always run in a thread (a writer may wait for a lock).
    """

    engine: Engine
    reads_inline: bool

    def call(self, fn: Callable[Concatenate[Session, P], T], *args: P.args, **kw: P.kwargs) -> T:
        """``fn(session, *args)`` in a session of its own; objects stay readable after it."""
        with Session(self.engine, expire_on_commit=False) as session:
            return fn(session, *args, **kw)

    async def read(
        self, fn: Callable[Concatenate[Session, P], T], *args: P.args, **kw: P.kwargs
    ) -> T:
        """``call`` for a read-only ``fn``, inline where that is cheaper than a thread."""
        if self.reads_inline:
            return self.call(fn, *args, **kw)
        return await self.run(fn, *args, **kw)

    async def run(
        self, fn: Callable[Concatenate[Session, P], T], *args: P.args, **kw: P.kwargs
    ) -> T:
        """``call`` in a thread: for an ``fn`` that writes (and commits), or reads much."""

        def called() -> T:
            return self.call(fn, *args, **kw)

        return await asyncio.to_thread(called)

    async def transaction(
        self, fn: Callable[Concatenate[Connection, P], T], *args: P.args, **kw: P.kwargs
    ) -> T:
        """``fn(connection, *args)`` in one transaction, in a thread: for plain statements on
        a hot path, where the ORM's unit of work costs more than the statements."""

        def run() -> T:
            with self.engine.begin() as conn:
                return fn(conn, *args, **kw)

        return await asyncio.to_thread(run)


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
    def reads_inline(self) -> bool:
        """SQLite in WAL mode: a read never waits for a writer and takes a fraction of a
        millisecond, less than handing it to a thread; other databases read in threads."""
        return self.engine.dialect.name == "sqlite"

    @functools.cached_property
    def db(self) -> Database:
        """The database as request handlers use it (``api.deps.DatabaseDep``)."""
        return Database(self.engine, self.reads_inline)

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
