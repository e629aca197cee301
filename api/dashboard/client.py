"""The dashboard's way into the API: the API's own routes, called in-process with the signed-in
user's token, so every page obeys exactly the API's auth, privacy, validation and pagination."""

from __future__ import annotations

import secrets
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import httpx
from fastapi import Request
from starlette.datastructures import UploadFile
from starlette.types import ASGIApp, Receive, Scope, Send

from api.deps import SESSION_TOKEN

# Bytes of an uploaded file read at a time on its way to the Files API.
UPLOAD_CHUNK = 256 * 1024


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
        """A file from the browser stored through ``POST /v1/files``; the file object. The
        file is streamed from where the form parser spooled it, never read whole."""
        boundary = secrets.token_hex(16)
        name = upload.filename or "file"
        ctype = upload.content_type or "application/octet-stream"
        stored: dict[str, Any] = await self.call(
            "POST",
            "/v1/files",
            content=_multipart(boundary, upload, name, ctype),
            headers={"Content-Type": f"multipart/form-data; boundary={boundary}"},
        )
        return stored


def _header_safe(text: str) -> str:
    # The name also travels as the "filename" field (UTF-8): the part header gets a plain copy.
    return "".join(c if c.isascii() and c.isprintable() and c not in '"\\' else "_" for c in text)


async def _multipart(
    boundary: str, upload: UploadFile, name: str, content_type: str
) -> AsyncIterator[bytes]:
    """A ``multipart/form-data`` body of the upload and its name, a chunk at a time."""
    dash = f"--{boundary}\r\n".encode()
    yield dash + b'Content-Disposition: form-data; name="filename"\r\n\r\n'
    yield name.encode() + b"\r\n" + dash
    yield (
        f'Content-Disposition: form-data; name="content"; filename="{_header_safe(name)}"\r\n'
        f"Content-Type: {_header_safe(content_type)}\r\n\r\n"
    ).encode()
    await upload.seek(0)
    while chunk := await upload.read(UPLOAD_CHUNK):
        yield chunk
    yield f"\r\n--{boundary}--\r\n".encode()


def from_the_web(app: ASGIApp, token_id: int | None = None) -> ASGIApp:
    """``app`` with every request marked as the dashboard's, in the ASGI scope (which no HTTP
    client can set): predictions made through it have ``source: web``, as on Replicate, and
    a signed-in session's requests carry its API token's id (``api.deps.SESSION_TOKEN``)."""
    marks: dict[str, Any] = {"prediction_source": "web"}
    if token_id is not None:
        marks[SESSION_TOKEN] = token_id

    async def marked(scope: Scope, receive: Receive, send: Send) -> None:
        scope = {**scope, "state": {**scope.get("state", {}), **marks}}
        await app(scope, receive, send)

    return marked


@asynccontextmanager
async def api_for(
    request: Request, token: str | None = None, token_id: int | None = None
) -> AsyncIterator[Api]:
    """An API client for this request: same app, same base URL (so ``urls`` point where the
    browser is), the caller's credential (a token typed in to sign in, or a signed-in
    session's token by its id), the browser's address (so rate limits see the user)."""
    client = (request.client.host, request.client.port) if request.client else ("127.0.0.1", 0)
    transport = httpx.ASGITransport(app=from_the_web(request.app, token_id), client=client)
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    base = str(request.base_url).rstrip("/")
    async with httpx.AsyncClient(
        transport=transport, base_url=base, headers=headers, timeout=120
    ) as http:
        yield Api(http)
