"""Waiting on events: poll a probe until a condition holds, or fail saying what never happened.

Tests wait on the event they need (a status, a log line, a webhook, a process state) instead
of sleeping a fixed time; a wait that runs out raises ``WaitTimeout`` with what it waited for
and the last value it saw, so a helper can never return quietly on timeout.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

T = TypeVar("T")


class WaitTimeout(AssertionError):
    """A waited-for event did not happen in time (an AssertionError: the test fails)."""


def _truthy(value: Any) -> bool:
    return bool(value)


def _failure(what: str, timeout: float, last: Any) -> WaitTimeout:
    shown = repr(last)
    if len(shown) > 2000:
        shown = shown[:2000] + "..."
    return WaitTimeout(f"timed out after {timeout:g}s waiting for {what}; last seen: {shown}")


def wait_until(
    probe: Callable[[], T],
    until: Callable[[T], bool] = _truthy,
    *,
    what: str,
    timeout: float = 60,
    interval: float = 0.1,
) -> T:
    """Call ``probe`` until ``until`` holds for its value and return that value; raise
    ``WaitTimeout`` naming ``what`` (and the last value) when ``timeout`` seconds pass first."""
    deadline = time.monotonic() + timeout
    while True:
        value = probe()
        if until(value):
            return value
        if time.monotonic() > deadline:
            raise _failure(what, timeout, value)
        time.sleep(interval)


async def async_wait_until(
    probe: Callable[[], Awaitable[T]],
    until: Callable[[T], bool] = _truthy,
    *,
    what: str,
    timeout: float = 60,
    interval: float = 0.1,
) -> T:
    """``wait_until`` for an async probe, polling without blocking the event loop."""
    deadline = time.monotonic() + timeout
    while True:
        value = await probe()
        if until(value):
            return value
        if time.monotonic() > deadline:
            raise _failure(what, timeout, value)
        await asyncio.sleep(interval)
