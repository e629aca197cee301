"""One run's state on the worker, the one type both of its holders keep it in.

A run (a prediction's or a training's attempt) is held twice on the worker: by its run
activity (``activities/running.py`` ``LiveRun``: what goes to the read model and the live
webhooks) and by the runner pool (``workers/runners/run.py`` ``Run``: what coglet reports
about it). Each keeps the run's state in a ``RunState``, which owns its transitions as Cog's
``PredictTask`` owns a prediction's response: it starts once, takes the states reported
while it runs, and ends once; the first end is the run's end, and what comes after it
changes nothing."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from replicant.runner import CogPrediction
from replicant.timeutil import utcnow

TERMINAL = frozenset({"succeeded", "failed", "canceled"})


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
