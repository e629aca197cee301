"""Deadlines (``Cancel-After``) and who is shown the status ``aborted``.

A prediction still waiting when its deadline passes ends ``aborted``; the official Python
client 1.0.7 cannot parse that status (its model allows five), so only clients named in
``settings.aborted_clients`` see it; every other client sees ``canceled`` with the same error.
"""

from __future__ import annotations

import re
from contextvars import ContextVar
from datetime import timedelta
from typing import Annotated

from fastapi import Depends, Header
from starlette.types import ASGIApp, Receive, Scope, Send

from api.errors import invalid

MIN_CANCEL_AFTER = timedelta(seconds=5)
# Longer than any prediction may run; keeps the arithmetic far from overflow.
MAX_CANCEL_AFTER = timedelta(days=365)
UNITS = {"h": 3600.0, "m": 60.0, "s": 1.0, "ms": 0.001}
DURATION = re.compile(r"^(?:\d+(?:\.\d+)?(?:ms|h|m|s))+$")
PART = re.compile(r"(\d+(?:\.\d+)?)(ms|h|m|s)")
PLAIN_SECONDS = re.compile(r"^\d+(?:\.\d+)?$")


def parse_cancel_after(value: str | None) -> timedelta | None:
    """The duration of a ``Cancel-After`` header (``30s``, ``5m``, ``1h30m``, ``90``: seconds);
    None when absent; 422 naming the header when malformed or under 5 seconds."""
    if value is None or not value.strip():
        return None
    text = value.strip().lower()
    if PLAIN_SECONDS.match(text):
        seconds = float(text)
    elif DURATION.match(text):
        seconds = sum(float(n) * UNITS[unit] for n, unit in PART.findall(text))
    else:
        raise invalid(
            [
                {
                    "field": "Cancel-After",
                    "message": "must be a duration such as 30s, 5m or 1h30m",
                }
            ]
        )
    if not MIN_CANCEL_AFTER.total_seconds() <= seconds <= MAX_CANCEL_AFTER.total_seconds():
        raise invalid(
            [{"field": "Cancel-After", "message": "must be between 5 seconds and 365 days"}]
        )
    return timedelta(seconds=seconds)


async def cancel_after_header(
    value: Annotated[str | None, Header(alias="Cancel-After")] = None,
) -> timedelta | None:
    """The request's ``Cancel-After`` (async: no thread-pool hop on the create path)."""
    return parse_cancel_after(value)


CancelAfter = Annotated[timedelta | None, Depends(cancel_after_header)]

_shows_aborted: ContextVar[bool] = ContextVar("shows_aborted", default=True)


def shows_aborted() -> bool:
    """Whether the client of the current request is shown the status ``aborted``."""
    return _shows_aborted.get()


def client_shown_aborted(user_agent: str, clients: list[str]) -> bool:
    """Whether a User-Agent starts with one of ``clients`` (``*`` names every client)."""
    return any(c == "*" or user_agent.startswith(c) for c in clients)


class AbortedForOptedInClients:
    """Notes per request whether its client opted in to ``aborted`` (see the module doc)."""

    def __init__(self, app: ASGIApp, clients: list[str]) -> None:
        self.app = app
        self.clients = clients

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            agent = next((v for k, v in scope["headers"] if k == b"user-agent"), b"")
            _shows_aborted.set(client_shown_aborted(agent.decode("latin-1"), self.clients))
        await self.app(scope, receive, send)
