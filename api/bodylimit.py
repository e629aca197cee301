"""Request body caps, enforced before a body is read and before authentication.

FastAPI reads a JSON body whole before a route's dependencies (authentication among them)
run, so without a cap anyone could make an API process hold any body in memory. This ASGI
middleware, the outermost of the app's, gives every request a cap by its route:

- ``POST /v1/files`` and the dashboard's Run form: ``max_file_size`` plus ``UPLOAD_OVERHEAD``
  (the form's other fields); a model push: ``max_push_bytes`` plus ``UPLOAD_OVERHEAD``;
- ``POST /signin``: ``SIGNIN_BODY``;
- everything else (JSON): ``max_request_body``.

A declared ``Content-Length`` beyond the cap is refused at once with 413 problem+json, the app
never called. A body without one (chunked) is counted as it arrives: past the cap the app sees
the client gone, and the answer is the same 413. Either way, the bytes still coming (up to
``DRAIN_ALLOWANCE``) are read and dropped before the answer, so that a client that writes its
whole body before reading sees the 413 rather than a reset connection; beyond that the
connection is closed.
"""

from __future__ import annotations

import re

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from api.errors import ProblemError, problem_response
from replicant.settings import Settings

UPLOAD_OVERHEAD = 1024 * 1024
SIGNIN_BODY = 64 * 1024
# Bytes read and dropped after the cap so the client reads the 413 (see the module docstring).
DRAIN_ALLOWANCE = 32 * 1024 * 1024

_PUSH = re.compile(r"/v1/models/[^/]+/[^/]+/versions/?")
_RUN_FORM = re.compile(r"/models/[^/]+/[^/]+/run/?")


def body_cap(settings: Settings, method: str, path: str) -> int:
    """The most bytes a request's body may have, by its route."""
    if method == "POST":
        if path.rstrip("/") == "/v1/files" or _RUN_FORM.fullmatch(path):
            return settings.max_file_size + UPLOAD_OVERHEAD
        if _PUSH.fullmatch(path):
            return settings.max_push_bytes + UPLOAD_OVERHEAD
        if path.rstrip("/") == "/signin":
            return SIGNIN_BODY
    return settings.max_request_body


def _too_large(cap: int) -> ProblemError:
    return ProblemError(
        413,
        f"The request body is larger than {cap} bytes",
        headers={"Connection": "close"},
    )


def _declared_length(scope: Scope) -> int | None:
    for key, value in scope["headers"]:
        if key == b"content-length":
            return int(value) if value.isdigit() else None
    return None


def _expects_continue(scope: Scope) -> bool:
    return any(k == b"expect" and v.lower() == b"100-continue" for k, v in scope["headers"])


class BodyLimit:
    """Refuses bodies past their route's cap (``body_cap``) with 413 problem+json."""

    def __init__(self, app: ASGIApp, settings: Settings) -> None:
        self.app = app
        self.settings = settings

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        cap = body_cap(self.settings, scope["method"], scope["path"])
        declared = _declared_length(scope)
        if declared is not None and declared > cap:
            # A client waiting for "100 Continue" sends nothing more: answer it at once.
            if not _expects_continue(scope):
                await _drain(receive, 0, declared)
            await problem_response(_too_large(cap))(scope, receive, send)
            return
        received = 0
        refused = False
        started = False

        async def counted() -> Message:
            nonlocal received, refused
            if refused:
                return {"type": "http.disconnect"}
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > cap:
                    refused = True
                    if message.get("more_body", False):
                        await _drain(receive, received, None)
                    return {"type": "http.disconnect"}
            return message

        async def guarded(message: Message) -> None:
            nonlocal started
            if refused and not started:
                return  # the app's answer to a "disconnect": the 413 goes instead
            started = True
            await send(message)

        try:
            await self.app(scope, counted, guarded)
        except Exception:
            if not refused:
                raise
        if refused and not started:
            await problem_response(_too_large(cap))(scope, receive, send)


async def _drain(receive: Receive, received: int, declared: int | None) -> None:
    """Read and drop the rest of a refused body, up to ``DRAIN_ALLOWANCE`` bytes."""
    if declared is not None and declared > DRAIN_ALLOWANCE:
        return  # too much to wait for: the connection closes after the answer
    while received <= DRAIN_ALLOWANCE:
        message = await receive()
        if message["type"] != "http.request":
            return
        received += len(message.get("body", b""))
        if not message.get("more_body", False):
            return
