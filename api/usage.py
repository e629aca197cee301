"""Usage at the API: spend limits at create (an account whose runs of the month cost its
limit already gets a 402 for a new prediction or training, ``spend_limits``) and a usage
report as CSV (replicant/usage.py)."""

from __future__ import annotations

from fastapi.responses import Response

from api.errors import ProblemError
from api.state import AppState
from replicant import responses
from replicant.timeutil import utcnow
from replicant.usage import month_start, report_csv, spent


async def check_spend_limit(state: AppState, account: str) -> None:
    """402 once ``account``'s runs this calendar month (UTC) cost its limit; nothing is
    read for an account without one."""
    limit = state.settings.spend_limits.get(account)
    if limit is None:
        return
    now = utcnow()
    cost = await state.db.read(spent, account, month_start(now), now)
    if cost >= limit:
        raise ProblemError(
            402,
            f"Account {account} has reached its spend limit of {limit:g} for this month "
            f"(spent {cost:g}); new predictions and trainings are refused until the month "
            "ends or an operator raises the limit",
            title="Spend limit reached",
        )


def csv_attachment(report: responses.Usage) -> Response:
    """The report as a CSV download named after its account and period."""
    filename = f"usage-{report.account}-{report.start[:10]}-{report.end[:10]}.csv"
    return Response(
        report_csv(report),
        media_type="text/csv; charset=utf-8",
        headers={"Content-Disposition": f'attachment; filename="{filename}"'},
    )
