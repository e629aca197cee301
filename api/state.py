"""What the API process holds for its lifetime: settings, database engine, object store and
Temporal client."""

from __future__ import annotations

import asyncio
import functools
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, TypeVar

from sqlalchemy.engine import Engine
from temporalio.client import Client

from replicant.settings import Settings
from replicant.storage import ObjectStore, open_store
from replicant.temporal import connect

T = TypeVar("T")


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

    async def read(self, fn: Callable[..., T], /, *args: Any) -> T:
        """Run a read-only database call ``fn(*args)`` (see ``reads_inline``)."""
        if self.reads_inline:
            return fn(*args)
        return await asyncio.to_thread(fn, *args)

    @functools.cached_property
    def object_store(self) -> ObjectStore:
        """The object store (files, staged inputs, outputs, weights), opened on first use."""
        return open_store(self.settings)

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
