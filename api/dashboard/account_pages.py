"""The account page: username, organizations, API tokens (created once shown, revoked) and the
webhook signing secret, revealed on demand."""

from __future__ import annotations

import asyncio
from typing import Any
from urllib.parse import urlencode

from fastapi import APIRouter
from fastapi.responses import Response
from sqlmodel import Session

from api.dashboard.client import ApiProblem
from api.dashboard.web import FormDep, Page, PageDep, redirect, render
from api.deps import get_state
from api.usage import csv_attachment
from replicant import responses
from replicant.accounts import create_token, find_account, list_tokens, revoke_token
from replicant.catalog import account_names
from replicant.tables import ApiToken

router = APIRouter(include_in_schema=False)


def _account_view(page: Page) -> dict[str, Any]:
    state = get_state(page.request)
    username = page.account["username"]
    account = find_account(state.engine, username)
    organizations = sorted(state.db.call(account_names, account) - {username})
    return {"organizations": organizations, "tokens": list_tokens(state.engine, username)}


async def _render_account(page: Page, **extra: Any) -> Response:
    view = await asyncio.to_thread(_account_view, page)
    return render(page.request, "account.html", page=page, **view, **extra)


@router.get("/account")
async def account_page(page: PageDep) -> Response:
    return await _render_account(page, new_token=None, secret=None)


@router.post("/account/tokens")
async def new_token(page: PageDep, form: FormDep) -> Response:
    """A new token, shown on this answer only (the database keeps its hash)."""
    name = str(form.get("name") or "").strip()[:100] or "dashboard"
    engine = get_state(page.request).engine
    _, token = await asyncio.to_thread(create_token, engine, page.account["username"], name)
    return await _render_account(page, new_token=token, secret=None)


def _revoke_own(page: Page, token_id: int) -> None:
    state = get_state(page.request)
    account = find_account(state.engine, page.account["username"])
    row = state.db.call(Session.get, ApiToken, token_id)
    if row is None or row.account_id != account.id:
        raise ApiProblem(404, {"detail": f"Token {token_id} not found"})
    revoke_token(state.engine, token_id)


@router.post("/account/tokens/{token_id}/revoke")
async def revoke(token_id: int, page: PageDep, form: FormDep) -> Response:
    await asyncio.to_thread(_revoke_own, page, token_id)
    return redirect(page.request, "/account")


@router.post("/account/webhook-secret")
async def reveal_secret(page: PageDep, form: FormDep) -> Response:
    """The webhook signing secret, from the API's own route."""
    secret = await page.api.get("/v1/webhooks/default/secret")
    return await _render_account(page, new_token=None, secret=secret["key"])


def _period(start: str | None, end: str | None, account: str | None) -> dict[str, str]:
    return {k: v for k, v in {"start": start, "end": end, "account": account}.items() if v}


@router.get("/account/usage")
async def usage_page(
    page: PageDep, start: str | None = None, end: str | None = None, account: str | None = None
) -> Response:
    """What the account's runs (or an organization's) cost over a period, from the API's own
    ``GET /v1/account/usage``; the same report as CSV is a link away."""
    period = _period(start, end, account)
    report = await page.api.get("/v1/account/usage", **period)
    view = await asyncio.to_thread(_account_view, page)
    return render(
        page.request,
        "usage.html",
        page=page,
        report=report,
        organizations=view["organizations"],
        csv_url=f"/account/usage.csv?{urlencode(period)}",
    )


@router.get("/account/usage.csv")
async def usage_csv(
    page: PageDep, start: str | None = None, end: str | None = None, account: str | None = None
) -> Response:
    """The usage page's report as CSV."""
    report = await page.api.get("/v1/account/usage", **_period(start, end, account))
    return csv_attachment(responses.Usage.model_validate(report))
