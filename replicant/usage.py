"""What runs cost and who spent it: a run's cost, usage reports and spend limits.

A run's cost is its ``predict_time`` times the price per second of the SKU that ran it
(``hardware_prices``), written into its ``metrics`` as ``cost`` when it ends, so a later
price change never rewrites what was charged. A usage report adds up the runs (predictions
and trainings) an account created that ended within a period, by model and hardware: its
totals are the sums of the runs it covers, each counted once.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from sqlmodel import Session, col, select

from replicant import responses
from replicant.tables import Prediction, Training

# Costs are kept to this many decimals (a millionth of the currency unit).
COST_DECIMALS = 8


def run_cost(prices: Mapping[str, float], hardware: str, predict_time: float) -> float:
    """What ``predict_time`` seconds on ``hardware`` cost (0 on a SKU without a price)."""
    return round(max(predict_time, 0.0) * prices.get(hardware, 0.0), COST_DECIMALS)


def with_cost(
    metrics: dict[str, Any], hardware: str, prices: Mapping[str, float] | None
) -> dict[str, Any]:
    """``metrics`` with the run's ``cost`` added when it has a ``predict_time`` (a run that
    never started costs nothing and says so by leaving it out); other keys are kept."""
    if prices is None or "predict_time" not in metrics:
        return metrics
    return {**metrics, "cost": run_cost(prices, hardware, float(metrics["predict_time"]))}


def month_start(now: datetime) -> datetime:
    """The start of ``now``'s calendar month (spend limits count from it)."""
    return now.replace(day=1, hour=0, minute=0, second=0, microsecond=0)


@dataclass
class UsageLine:
    """The runs of one kind, model and hardware within a report."""

    kind: str  # "prediction" or "training"
    model: str
    hardware: str
    runs: int = 0
    predict_time: float = 0.0
    cost: float = 0.0


@dataclass
class UsageReport:
    """An account's runs that ended in ``[start, end)``, by kind, model and hardware."""

    account: str
    start: datetime
    end: datetime
    lines: list[UsageLine] = field(default_factory=list)

    @property
    def runs(self) -> int:
        return sum(line.runs for line in self.lines)

    @property
    def predict_time(self) -> float:
        return round(sum(line.predict_time for line in self.lines), 6)

    @property
    def cost(self) -> float:
        return round(sum(line.cost for line in self.lines), COST_DECIMALS)


def usage_report(session: Session, account: str, start: datetime, end: datetime) -> UsageReport:
    """The usage of ``account`` (a user or an organization, the owner of its runs) over
    ``[start, end)`` by when its runs ended."""
    lines: dict[tuple[str, str, str], UsageLine] = {}
    for kind, table in (("prediction", Prediction), ("training", Training)):
        rows = session.exec(
            select(table.model, table.hardware, table.metrics).where(
                col(table.owner) == account,
                col(table.completed_at) >= start,
                col(table.completed_at) < end,
            )
        ).all()
        for model, hardware, metrics in rows:
            line = lines.setdefault(
                (kind, model, hardware), UsageLine(kind=kind, model=model, hardware=hardware)
            )
            line.runs += 1
            line.predict_time += float((metrics or {}).get("predict_time", 0.0))
            line.cost += float((metrics or {}).get("cost", 0.0))
    report = UsageReport(account=account, start=start, end=end)
    for key in sorted(lines):
        line = lines[key]
        line.predict_time = round(line.predict_time, 6)
        line.cost = round(line.cost, COST_DECIMALS)
        report.lines.append(line)
    return report


def spent(session: Session, account: str, since: datetime, until: datetime) -> float:
    """What ``account``'s runs that ended in ``[since, until)`` cost."""
    return usage_report(session, account, since, until).cost


def report_csv(report: responses.Usage) -> str:
    """A report (as the API shows it) as CSV: a header, one row per line, then the total."""
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(["kind", "model", "hardware", "runs", "predict_time", "cost"])
    for line in report.lines:
        writer.writerow(
            [line.kind, line.model, line.hardware, line.runs, line.predict_time, line.cost]
        )
    writer.writerow(["total", "", "", report.runs, report.predict_time, report.cost])
    return out.getvalue()
