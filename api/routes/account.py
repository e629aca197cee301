"""The account of the caller's API token: a user or an organization; and its usage."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated

from fastapi import APIRouter, Query, Request
from fastapi.responses import Response

from api.deps import CurrentAccount, DatabaseDep
from api.errors import invalid, not_found
from api.usage import csv_attachment
from replicant import responses, serialize
from replicant.catalog import account_names
from replicant.timeutil import as_utc, utcnow
from replicant.usage import month_start, usage_report

router = APIRouter(prefix="/v1", tags=["account"])


@router.get("/account", response_model_exclude_unset=True)
async def get_account(account: CurrentAccount) -> responses.Account:
    """``{type, username, name, github_url}``; an unset github_url is left out (spec: a URI).

    Beyond Replicate: ``fairness_weight``, the account's share of busy hardware queues.
    """
    return serialize.account(account)


@router.get("/account/usage", response_model=responses.Usage)
async def get_usage(
    request: Request,
    account: CurrentAccount,
    db: DatabaseDep,
    start: Annotated[datetime | None, Query(description="From (default: this month)")] = None,
    end: Annotated[datetime | None, Query(description="Until, excluded (default: now)")] = None,
    of: Annotated[
        str | None, Query(alias="account", description="An organization of the caller")
    ] = None,
    format: Annotated[str | None, Query(description="`csv` for CSV")] = None,
) -> Response | responses.Usage:
    """Beyond Replicate: the runs the caller (or one of its organizations, ``account``)
    created that ended in ``[start, end)``, by model and hardware, with their cost
    (docs/usage.md); CSV with ``format=csv`` or ``Accept: text/csv``."""
    until = as_utc(end) if end is not None else utcnow()
    since = as_utc(start) if start is not None else month_start(until)
    if since > until:
        raise invalid([{"field": "start", "message": "start is after end"}])
    name = of or account.username
    if name not in await db.read(account_names, account):
        raise not_found(f"Account {name}")
    report = serialize.usage(await db.read(usage_report, name, since, until))
    if format == "csv" or "text/csv" in request.headers.get("accept", ""):
        return csv_attachment(report)
    return report
