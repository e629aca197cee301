"""What every dashboard page shares: templates, the signed-in user, CSRF-checked forms and
rendering with the session cookie and a strict Content-Security-Policy."""

from __future__ import annotations

import inspect
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any
from urllib.parse import quote

from fastapi import Depends, FastAPI, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from fastapi.templating import Jinja2Templates
from starlette.datastructures import FormData
from starlette.exceptions import HTTPException

from api.dashboard.client import Api, ApiProblem, api_for
from api.dashboard.render import install_filters
from api.dashboard.session import (
    DashSession,
    csrf_ok,
    end_session,
    load_session,
    save_session,
    session_of,
)
from api.errors import ProblemError

HERE = Path(__file__).parent
templates = Jinja2Templates(directory=str(HERE / "templates"))
install_filters(templates.env)

# Scripts and styles only from this app; media from wherever the output URLs point.
CSP = (
    "default-src 'self'; img-src * data: blob:; media-src * data: blob:; "
    "connect-src 'self'; frame-ancestors 'none'; form-action 'self'; base-uri 'none'"
)
SECURITY_HEADERS = {
    "Content-Security-Policy": CSP,
    "Cache-Control": "no-store",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "same-origin",
}


class SignInRequired(Exception):
    """The page needs a signed-in user; the handler sends the browser to the sign-in page."""


@dataclass
class Page:
    """A signed-in request: its session, its API client and the account behind the token."""

    request: Request
    session: DashSession
    api: Api
    account: dict[str, Any]


async def signed_in(request: Request) -> AsyncIterator[Page]:
    """The signed-in user of the request (its session and API token checked every time)."""
    session = await load_session(request)
    if session.token_id is None:
        raise SignInRequired
    async with api_for(request, token_id=session.token_id) as api:
        try:
            account = await api.get("/v1/account")
        except ApiProblem as err:
            if err.status == 401:  # the token was revoked: the session is over
                await end_session(request)
                raise SignInRequired from None
            raise
        yield Page(request, session, api, account)


PageDep = Annotated[Page, Depends(signed_in)]

# What a dashboard form may hold: the Run form's inputs and files, the others' few fields.
# Files are spooled to disk as they arrive; the body's size is capped by api/bodylimit.py.
FORM_FIELDS = 256
FORM_FILES = 32
FORM_PART = 1024 * 1024


async def read_form(
    request: Request,
    *,
    max_fields: int = FORM_FIELDS,
    max_files: int = FORM_FILES,
    max_part_size: int = FORM_PART,
) -> FormData:
    """The posted form within its caps (413 past them), 403 unless it carries the session's
    CSRF token.

    Forms are posted as multipart: the API reads form-encoded bodies as JSON (curl's habit).
    """
    try:
        form = await request.form(
            max_files=max_files, max_fields=max_fields, max_part_size=max_part_size
        )
    except HTTPException as err:
        # Starlette says 400 for a form past its caps too: those are 413 here.
        capped = err.detail.startswith(("Too many", "Part exceeded"))
        raise ProblemError(413 if capped else err.status_code, err.detail) from err
    if not csrf_ok(await load_session(request), form.get("csrf")):
        raise ProblemError(403, "The form is stale or forged; reload the page and try again")
    return form


async def checked_form(request: Request) -> FormData:
    """A dashboard form (``read_form`` with the usual caps)."""
    return await read_form(request)


FormDep = Annotated[FormData, Depends(checked_form)]


def render(
    request: Request,
    name: str,
    status_code: int = 200,
    page: Page | None = None,
    **context: Any,
) -> HTMLResponse:
    """A template as an HTML response, with the session cookie re-signed."""
    session = page.session if page else session_of(request)
    values = {"csrf": session.csrf, "account": page.account if page else None, **context}
    response = templates.TemplateResponse(request, name, values, status_code=status_code)
    response.headers.update(SECURITY_HEADERS)
    save_session(request, response, session)
    return response


def redirect(request: Request, url: str) -> RedirectResponse:
    """A 303 after a form post, keeping the session cookie."""
    response = RedirectResponse(url, status_code=303)
    save_session(request, response, session_of(request))
    return response


def install_handlers(app: FastAPI) -> None:
    """Dashboard errors as pages: sign-in redirects, API problems as an error page."""

    @app.exception_handler(SignInRequired)
    async def _sign_in(request: Request, _: SignInRequired) -> Response:
        target = request.url.path + (f"?{request.url.query}" if request.url.query else "")
        return redirect(request, f"/signin?next={quote(target)}")

    @app.exception_handler(ApiProblem)
    async def _problem(request: Request, err: ApiProblem) -> Response:
        response = await error_page(request, err.status, err)
        if err.retry_after:
            response.headers["Retry-After"] = err.retry_after
        return response

    api_handler = app.exception_handlers[ProblemError]

    @app.exception_handler(ProblemError)
    async def _page_problem(request: Request, err: ProblemError) -> Response:
        # The dashboard's own refusals (rate limit, CSRF) as pages; the API's stay problem+json.
        route = request.scope.get("route")
        if not getattr(getattr(route, "endpoint", None), "__module__", "").startswith(__package__):
            return await _answer(api_handler, request, err)
        page = await error_page(request, err.status, err)
        page.headers.update(err.headers or {})
        return page

    http_handler = app.exception_handlers[HTTPException]

    @app.exception_handler(HTTPException)
    async def _unknown_path(request: Request, err: HTTPException) -> Response:
        # A path no route serves: a page for a browser, problem+json for an API client (and
        # for whatever the API's own routes raise).
        unrouted = request.scope.get("route") is None
        if unrouted and err.status_code in (404, 405) and wants_html(request):
            detail = "There is no page at this address"
            if err.status_code == 405:
                detail = f"This page does not answer {request.method}"
            return await error_page(request, err.status_code, ProblemError(err.status_code, detail))
        return await _answer(http_handler, request, err)


async def _answer(handler: Any, request: Request, err: Exception) -> Response:
    answer = handler(request, err)
    response: Response = await answer if inspect.isawaitable(answer) else answer
    return response


def wants_html(request: Request) -> bool:
    """A browser's request (it asks for HTML first); API clients ask for JSON or anything."""
    return "text/html" in request.headers.get("accept", "")


async def error_page(request: Request, status: int, error: ApiProblem | ProblemError) -> Response:
    """An error as a dashboard page, with the header of the signed-in user (if any)."""
    session = await load_session(request)
    account = None
    if session.token_id is not None:
        async with api_for(request, token_id=session.token_id) as api:
            try:
                account = await api.get("/v1/account")
            except ApiProblem:
                account = None  # revoked, or the rate limit: the page shows signed out
    return render(request, "error.html", status, error=error, account=account)
