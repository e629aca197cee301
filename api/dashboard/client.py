"""The dashboard's way into the API: the API's own routes, called in-process with the signed-in
user's token, so every page obeys exactly the API's auth, privacy, validation and pagination."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import httpx
from fastapi import Request
from starlette.datastructures import UploadFile
from starlette.types import ASGIApp, Receive, Scope, Send


class ApiProblem(Exception):
    """An API error answer (problem+json): status, detail and the invalid fields, if any."""

    def __init__(self, status: int, body: dict[str, Any], retry_after: str | None = None) -> None:
        super().__init__(body.get("detail") or f"HTTP {status}")
        self.status = status
        self.retry_after = retry_after  # a 429's Retry-After, passed on to the browser
        self.detail = str(body.get("detail") or body.get("title") or f"HTTP {status}")
        self.fields = {
            str(f.get("field")): str(f.get("message")) for f in body.get("invalid_fields") or []
        }


class Api:
    """A thin JSON client over an ``httpx.AsyncClient`` bound to the app itself."""

    def __init__(self, http: httpx.AsyncClient) -> None:
        self.http = http

    async def call(self, method: str, path: str, **kwargs: Any) -> Any:
        """The JSON answer of ``method path``; ``ApiProblem`` on a 4xx/5xx."""
        response = await self.http.request(method, path, **kwargs)
        if response.status_code >= 400:
            try:
                body = response.json()
            except ValueError:
                body = {"detail": response.text}
            raise ApiProblem(
                response.status_code,
                body if isinstance(body, dict) else {},
                response.headers.get("retry-after"),
            )
        if response.status_code == 204 or not response.content:
            return None
        return response.json()

    async def get(self, path: str, **params: Any) -> Any:
        clean = {k: v for k, v in params.items() if v not in (None, "")}
        return await self.call("GET", path, params=clean)

    async def post(self, path: str, body: Any = None) -> Any:
        return await self.call("POST", path, json=body if body is not None else {})

    async def patch(self, path: str, body: Any) -> Any:
        return await self.call("PATCH", path, json=body)

    async def upload(self, upload: UploadFile) -> dict[str, Any]:
        """A file from the browser stored through ``POST /v1/files``; the file object."""
        content = (
            upload.filename or "file",
            await upload.read(),
            upload.content_type or "application/octet-stream",
        )
        stored: dict[str, Any] = await self.call("POST", "/v1/files", files={"content": content})
        return stored


def from_the_web(app: ASGIApp) -> ASGIApp:
    """``app`` with every request marked as the dashboard's, in the ASGI scope (which no HTTP
    client can set): predictions made through it have ``source: web``, as on Replicate."""

    async def marked(scope: Scope, receive: Receive, send: Send) -> None:
        scope = {**scope, "state": {**scope.get("state", {}), "prediction_source": "web"}}
        await app(scope, receive, send)

    return marked


@asynccontextmanager
async def api_for(request: Request, token: str | None) -> AsyncIterator[Api]:
    """An API client for this request: same app, same base URL (so ``urls`` point where the
    browser is), the session's token, the browser's address (so rate limits see the user)."""
    client = (request.client.host, request.client.port) if request.client else ("127.0.0.1", 0)
    transport = httpx.ASGITransport(app=from_the_web(request.app), client=client)
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    base = str(request.base_url).rstrip("/")
    async with httpx.AsyncClient(
        transport=transport, base_url=base, headers=headers, timeout=120
    ) as http:
        yield Api(http)
