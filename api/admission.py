"""Bounded admission: an API process serves at most so many requests at once and answers the
next one at once with 503 and ``Retry-After``, rather than queueing it without bound.

Two bounds, so that long-held requests cannot starve short ones: *held* requests (a create
that waits for its prediction with ``Prefer: wait``, an event stream, a followed build or
push) and *short* ones (everything else). ``/health`` and ``/metrics`` are never refused,
nor are the dashboard's in-process calls to the API (the page that makes them was admitted).

It also notes when each request arrived (``arrived_at``): a ``Prefer: wait`` counts from then.
"""

from __future__ import annotations

import asyncio
import json
import logging

from starlette.types import ASGIApp, Receive, Scope, Send

from api.errors import PROBLEM, TITLES
from replicant.settings import Settings

log = logging.getLogger("replicant.api")

EXEMPT_PATHS = ("/health", "/metrics")
# Accept values of answers that last as long as what they follow.
HELD_ACCEPTS = (b"text/event-stream", b"application/x-ndjson")
# The dashboard's in-process calls carry this key in their ASGI scope's state
# (api/dashboard/client.py), which no HTTP client can set.
IN_PROCESS_MARK = "prediction_source"
# The ASGI scope's state key of the event loop's time at which the request arrived.
ARRIVED = "replicant_arrived"


def arrived_at(scope: Scope) -> float:
    """The event loop's time at which the request of ``scope`` arrived (now, for one that
    did not pass ``Admission``)."""
    arrived = (scope.get("state") or {}).get(ARRIVED)
    return arrived if isinstance(arrived, float) else asyncio.get_running_loop().time()


def _header(scope: Scope, name: bytes) -> bytes:
    for key, value in scope["headers"]:
        if key == name:
            return bytes(value)
    return b""


def is_held(scope: Scope) -> bool:
    """Whether the request may be held open for long: it waits for a run or follows one."""
    if scope["path"].endswith("/stream"):
        return True
    if any(kind in _header(scope, b"accept") for kind in HELD_ACCEPTS):
        return True
    return scope["method"] == "POST" and b"wait" in _header(scope, b"prefer").lower()


def is_exempt(scope: Scope) -> bool:
    """Requests no bound applies to."""
    if scope["path"] in EXEMPT_PATHS:
        return True
    return IN_PROCESS_MARK in (scope.get("state") or {})


class Admission:
    """ASGI middleware counting the requests in flight of each kind against its bound."""

    def __init__(self, app: ASGIApp, settings: Settings) -> None:
        self.app = app
        self.bounds = {"short": settings.api_max_requests, "held": settings.api_max_held}
        self.in_flight = {"short": 0, "held": 0}
        self.retry_after = settings.api_retry_after
        self.refused = 0

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        scope.setdefault("state", {})[ARRIVED] = asyncio.get_running_loop().time()
        if is_exempt(scope):
            await self.app(scope, receive, send)
            return
        kind = "held" if is_held(scope) else "short"
        if self.in_flight[kind] >= self.bounds[kind]:
            self.refused += 1
            if self.refused % 100 == 1:  # a line now and then, not one per refusal
                log.warning("event=admission_refused kind=%s refused=%d", kind, self.refused)
            await self._refuse(send, kind)
            return
        self.in_flight[kind] += 1
        try:
            await self.app(scope, receive, send)
        finally:
            self.in_flight[kind] -= 1

    async def _refuse(self, send: Send, kind: str) -> None:
        wait = self.retry_after
        unit = "second" if wait == 1 else "seconds"
        what = "long-held requests" if kind == "held" else "requests"
        body = json.dumps(
            {
                "title": TITLES[503],
                "detail": f"The API is serving all the {what} it can; retry in {wait} {unit}.",
                "status": 503,
            }
        ).encode()
        headers = [
            (b"content-type", PROBLEM.encode()),
            (b"content-length", str(len(body)).encode()),
            (b"retry-after", str(wait).encode()),
        ]
        await send({"type": "http.response.start", "status": 503, "headers": headers})
        await send({"type": "http.response.body", "body": body})
