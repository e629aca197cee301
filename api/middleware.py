"""ASGI middleware that keeps curl users' habits working."""

from __future__ import annotations

from starlette.types import ASGIApp, Receive, Scope, Send

FORM = b"application/x-www-form-urlencoded"


class JSONBodyByDefault:
    """Treat a form-encoded body as JSON: the API takes no forms, and ``curl -d '{...}'``
    (as Replicate's own docs show it) sends JSON with curl's default form content type."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            headers = scope["headers"]
            if any(k == b"content-type" and v.split(b";")[0].strip() == FORM for k, v in headers):
                scope = dict(scope)
                scope["headers"] = [
                    (k, b"application/json" if k == b"content-type" else v) for k, v in headers
                ]
        await self.app(scope, receive, send)
