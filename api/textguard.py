"""Refuse JSON bodies holding lone surrogates (``"\\ud800"``) or NUL characters
(``"\\u0000"``) with a 422 naming the field.

JSON lets a string escape half a surrogate pair; Python decodes it into a ``str`` that no
UTF-8 encoder accepts, so the database, Temporal's payloads and webhook bodies would all fail
on it later (as a 500, or as a retriable 503). PostgreSQL stores no NUL in text. Both are
refused here, once, for every route.
"""

from __future__ import annotations

import json
import re
from typing import Any
from urllib.parse import parse_qsl

from starlette.responses import Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from api.errors import ProblemError, invalid, problem_response

# A \uD800-\uDFFF or \u0000 escape: only bodies holding one are parsed here (pairs are fine).
SUSPECT_ESCAPE = re.compile(rb"\\u(?:[dD][89a-fA-F][0-9a-fA-F]{2}|0000)")
LONE = re.compile("[\ud800-\udfff]")
MESSAGE = "must be valid Unicode text (it holds an unpaired surrogate)"
NUL_MESSAGE = "must not contain NUL characters"


def _problem(text: str) -> str | None:
    if LONE.search(text):
        return MESSAGE
    if "\x00" in text:
        return NUL_MESSAGE
    return None


def _printable(name: str) -> str:
    """A field name that can be sent back (its bad characters escaped)."""
    return name.encode("utf-8", "backslashreplace").decode("utf-8").replace("\x00", "\\x00")


def bad_text_field(value: Any, path: str = "") -> tuple[str, str] | None:
    """(dotted path, message) of the first string or key in ``value`` holding a lone
    surrogate or a NUL; None when there is none."""
    if isinstance(value, str):
        message = _problem(value)
        return ((path or "body"), message) if message else None
    if isinstance(value, dict):
        for key, item in value.items():
            inner = f"{path}.{_printable(str(key))}" if path else _printable(str(key))
            message = _problem(str(key))
            if message:
                return inner, message
            found = bad_text_field(item, inner)
            if found:
                return found
    if isinstance(value, list):
        for index, item in enumerate(value):
            found = bad_text_field(item, f"{path}.{index}" if path else str(index))
            if found:
                return found
    return None


def _refuse_url(scope: Scope) -> Response | None:
    """A NUL in the path names nothing (404); in a query parameter it is invalid (422)."""
    if "\x00" in scope["path"]:
        return problem_response(ProblemError(404, "Nothing is found at a path holding NUL"))
    query = scope.get("query_string", b"")
    if b"%00" in query or b"\x00" in query:
        for key, value in parse_qsl(query.decode("latin-1"), keep_blank_values=True):
            if "\x00" in key + value:
                field = _printable(key)
                return problem_response(invalid([{"field": field, "message": NUL_MESSAGE}]))
    return None


def _is_json(scope: Scope) -> bool:
    for key, value in scope["headers"]:
        if key == b"content-type":
            return b"json" in value.split(b";")[0]
    return False


class RefuseLoneSurrogates:
    """ASGI middleware: a JSON body with a lone surrogate or a NUL gets a 422, a NUL in the
    path a 404 and in the query a 422; others pass unchanged."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        refused = _refuse_url(scope)
        if refused is not None:
            await refused(scope, receive, send)
            return
        if not _is_json(scope):
            await self.app(scope, receive, send)
            return
        chunks: list[bytes] = []
        while True:
            message = await receive()
            if message["type"] != "http.request":
                break  # the client left; the app sees an empty body and the disconnect
            chunks.append(message.get("body", b""))
            if not message.get("more_body", False):
                break
        body = b"".join(chunks)
        if SUSPECT_ESCAPE.search(body):
            found = _find(body)
            if found is not None:
                field, reason = found
                response = problem_response(invalid([{"field": field, "message": reason}]))
                await response(scope, receive, send)
                return
        replayed = False

        async def replay() -> Message:
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()

        await self.app(scope, replay, send)


def _find(body: bytes) -> tuple[str, str] | None:
    try:
        return bad_text_field(json.loads(body))
    except ValueError:
        return None  # not JSON: the route's own parsing answers 400
