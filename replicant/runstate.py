"""One run's state on the worker, in one object both of its holders share.

A run (a prediction's or a training's attempt) is held twice on the worker: by its run
activity (``activities/running.py`` ``LiveRun``: what goes to the read model and the live
webhooks) and by the runner pool (``workers/runners/run.py`` ``Run``: what coglet reports
about it). Both hold the one ``RunState`` of the run: the activity makes it and hands it to
the pool's ``predict`` (``ModelRunner``, replicant/runner.py), whose ``Run`` reports to it
and settles its end from coglet's answer. It owns the run's transitions as Cog's
``PredictTask`` owns a prediction's response: it starts once, takes the states reported
while it runs, and ends once; the first end is the run's end, and what comes after it
changes nothing (an attempt that ends otherwise, as by its timeout, records its own end:
``LiveRun.close``). ``CogPrediction`` is one such state, as coglet reports it."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from pydantic import BaseModel, Field

from replicant.timeutil import utcnow

TERMINAL = frozenset({"succeeded", "failed", "canceled"})


class CogPrediction(BaseModel):
    """The latest state coglet reported for a prediction (cumulative output and logs)."""

    status: str
    output: Any = None
    logs: str = ""
    error: str | None = None
    metrics: dict[str, Any] = Field(default_factory=dict)


class RunState:
    """One run's state: when its model started, the latest state reported, and its end."""

    def __init__(self, run_id: str) -> None:
        self.id = run_id
        self.started_at: datetime | None = None
        self.latest: CogPrediction | None = None
        self.ended: CogPrediction | None = None

    @property
    def status(self) -> str:
        """``starting`` until the model starts, ``processing`` while it runs, then how the
        run ended."""
        if self.ended is not None:
            return self.ended.status
        return "starting" if self.started_at is None else "processing"

    def start(self) -> datetime:
        """The model has started the run (now); when it did, the first time only."""
        if self.started_at is None:
            self.started_at = utcnow()
        return self.started_at

    def report(self, state: CogPrediction) -> bool:
        """A state reported while the run goes on; whether it is news (it differs from the
        latest, and the run has not ended)."""
        if self.ended is not None or state == self.latest:
            return False
        self.latest = state
        return True

    def end(self, result: CogPrediction) -> CogPrediction:
        """The run's end: ``result`` the first time, the first end after that (a status
        coglet should not end a run with is kept as it came: the run activity reads it)."""
        if self.ended is None:
            self.ended = result
        return self.ended

    def fail(self, error: str, logs: str = "") -> CogPrediction:
        """End the run ``failed`` with ``error``."""
        return self.end(CogPrediction(status="failed", error=error, logs=logs))

    def cancel(self, logs: str = "", output: Any = None) -> CogPrediction:
        """End the run ``canceled``."""
        return self.end(CogPrediction(status="canceled", logs=logs, output=output))
