"""Errors in Replicate's format: ``application/problem+json`` with title, detail and status."""

from __future__ import annotations

import logging
import secrets
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

log = logging.getLogger("replicant.api")

PROBLEM = "application/problem+json"
TITLES = {
    400: "Bad request",
    401: "Unauthenticated",
    402: "Payment required",
    403: "Forbidden",
    404: "Not found",
    405: "Method not allowed",
    409: "Conflict",
    413: "Payload too large",
    415: "Unsupported media type",
    422: "Input validation failed",
    429: "Too many requests",
    500: "Internal server error",
    503: "Service unavailable",
}


class ProblemError(Exception):
    """A domain error that becomes a problem+json response; routes raise, never build bodies."""

    def __init__(
        self,
        status: int,
        detail: str,
        *,
        title: str | None = None,
        invalid_fields: list[dict[str, str]] | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(detail)
        self.status = status
        self.detail = detail
        self.title = title or TITLES.get(status, "Error")
        self.invalid_fields = invalid_fields
        self.headers = headers


def not_found(what: str) -> ProblemError:
    return ProblemError(404, f"{what} not found", title="Not found")


def conflict(detail: str, *, title: str | None = None) -> ProblemError:
    """409 for a state that retrying the same request cannot change: ``x-should-retry: false``
    keeps the official clients (which retry a 409 by default) from sending it again."""
    return ProblemError(409, detail, title=title, headers={"x-should-retry": "false"})


def invalid(fields: list[dict[str, str]], detail: str | None = None) -> ProblemError:
    """422 naming each invalid field."""
    summary = detail or "; ".join(f"{f['field']}: {f['message']}" for f in fields)
    return ProblemError(422, summary, invalid_fields=fields)


def problem_response(err: ProblemError) -> JSONResponse:
    body: dict[str, Any] = {"title": err.title, "detail": err.detail, "status": err.status}
    if err.invalid_fields is not None:
        body["invalid_fields"] = err.invalid_fields
    return JSONResponse(body, status_code=err.status, media_type=PROBLEM, headers=err.headers)


def _field_name(loc: tuple[Any, ...] | list[Any]) -> str:
    parts = [str(p) for p in loc if p not in ("body", "query", "header", "path")]
    return ".".join(parts) or "body"


def install_error_handlers(app: FastAPI) -> None:
    """Every error the app can raise leaves as problem+json."""

    @app.exception_handler(ProblemError)
    async def _problem(_: Request, err: ProblemError) -> JSONResponse:
        return problem_response(err)

    @app.exception_handler(StarletteHTTPException)
    async def _http(_: Request, err: StarletteHTTPException) -> JSONResponse:
        detail = err.detail if isinstance(err.detail, str) else str(err.detail)
        headers = dict(err.headers) if err.headers else None
        return problem_response(ProblemError(err.status_code, detail, headers=headers))

    @app.exception_handler(RequestValidationError)
    async def _validation(_: Request, err: RequestValidationError) -> JSONResponse:
        errors = err.errors()
        if any(e.get("type") == "json_invalid" for e in errors):
            return problem_response(ProblemError(400, "The request body is not valid JSON"))
        fields = [{"field": _field_name(e["loc"]), "message": str(e["msg"])} for e in errors]
        return problem_response(invalid(fields))


class UnexpectedErrors:
    """Outermost middleware: an exception no handler took becomes a 500 problem+json whose
    detail carries a reference, and one log line with the exception's type and that reference.

    Never the message or the traceback: either may hold secrets (a URL with credentials, a
    token in a driver's error). The exception is not raised on either, so the server does not
    log the traceback itself (Starlette's own 500 handler always re-raises for that).
    """

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = False

        async def tracked(message: Message) -> None:
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, receive, tracked)
        except Exception as err:
            reference = secrets.token_hex(8)
            # The route's template, not the path: a path may carry a signature (file URLs).
            route = getattr(scope.get("route"), "path", None) or "unmatched"
            log.error(
                "event=unhandled_error route=%s type=%s error_id=%s",
                route,
                type(err).__name__,
                reference,
            )
            if not started:
                detail = f"An unexpected error occurred (error id {reference})"
                await problem_response(ProblemError(500, detail))(scope, receive, send)
