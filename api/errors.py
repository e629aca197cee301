"""Errors in Replicate's format: ``application/problem+json`` with title, detail and status."""

from __future__ import annotations

import logging
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

log = logging.getLogger("replicant.api")

PROBLEM = "application/problem+json"
TITLES = {
    400: "Bad request",
    401: "Unauthenticated",
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

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, err: Exception) -> JSONResponse:
        # The message may hold secrets (URLs with credentials): log the type, not the text.
        log.exception("event=unhandled_error path=%s type=%s", request.url.path, type(err).__name__)
        return problem_response(ProblemError(500, "An unexpected error occurred"))
