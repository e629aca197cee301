"""What the API process holds for its lifetime: settings, database engine, Temporal client."""

from __future__ import annotations

import asyncio
import functools
from dataclasses import dataclass, field

from sqlalchemy.engine import Engine
from temporalio.client import Client

from replicant.settings import Settings
from replicant.temporal import connect


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

    async def temporal(self) -> Client:
        """The Temporal client, connected on first use so the API starts before Temporal."""
        if self._client is None:
            async with self._lock:
                if self._client is None:
                    self._client = await connect(self.settings)
        return self._client
