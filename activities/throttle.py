"""Coalescing writes: the latest value goes out at most once an interval, never lost."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Awaitable, Callable
from typing import Generic, TypeVar

T = TypeVar("T")


class LatestWriter(Generic[T]):
    """Writes the most recent value offered, at most once per ``interval`` seconds.

    A value offered inside the interval is written when it ends (or replaced by a newer
    one first); ``stop`` drops what is pending, for a caller about to write a final state.
    """

    def __init__(self, interval: float, write: Callable[[T], Awaitable[None]]) -> None:
        self.interval = interval
        self._write_value = write
        self._last = 0.0
        self._pending: tuple[T] | None = None
        self._flush: asyncio.Task[None] | None = None

    async def offer(self, value: T) -> None:
        self._pending = (value,)
        wait = self.interval - (time.monotonic() - self._last)
        if wait <= 0:
            await self._write()
        elif self._flush is None or self._flush.done():
            self._flush = asyncio.create_task(self._write_later(wait))

    async def _write_later(self, delay: float) -> None:
        await asyncio.sleep(delay)
        await self._write()

    async def _write(self) -> None:
        pending, self._pending = self._pending, None
        if pending is None:
            return
        self._last = time.monotonic()
        await self._write_value(pending[0])

    async def stop(self) -> None:
        if self._flush is not None:
            self._flush.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._flush
