"""One prediction handed to a coglet process, and the pool's runs in flight.

A ``Run`` is the one object of a prediction on the worker: what coglet has reported about it
so far and its stop; ``Runs`` is the one place runs live, by prediction id (webhook
deliveries, uploads, coglet's log records and cancels find them there)."""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from typing import Any

from replicant.runner import CogPrediction
from workers.runners.answer import LogTail
from workers.runners.coglet import END_MARKERS, TERMINAL, parse_prediction, rank
from workers.runners.process import CogletProcess


class Run:
    """The reports of one prediction: webhook deliveries and coglet's log lines about it."""

    def __init__(self, prediction_id: str, process: CogletProcess, webhook: bool) -> None:
        self.id = prediction_id
        self.process = process
        self.webhook = webhook
        self.best: dict[str, Any] | None = None
        self.hook_terminal = asyncio.Event()
        self.logs = LogTail(process.spec.max_logs)
        # Values of coglet's answer over their limit, by key: their size (see answer.py).
        self.oversized: dict[str, int] = {}
        self.logs_done = asyncio.Event()
        self.changed = asyncio.Event()
        self.cancel_requested = False
        self.started = False
        self.task: asyncio.Task[CogPrediction] | None = None
        self.stopper: asyncio.Task[None] | None = None
        # The memory cgroup's OOM-kill count when the run started (None: unreadable).
        self.oom_kills: int | None = None
        # A training shows what setup() printed before its own logs (the first one of its
        # process: a later one did not see setup run).
        # The lines are taken as they are read from coglet's output, which may be after the
        # process reported itself ready.
        self.setup_logs = ""
        self.takes_setup_logs = process.spec.mode == "train" and not process.setup_logs_taken
        process.setup_logs_taken = process.setup_logs_taken or self.takes_setup_logs

    def with_setup_logs(self, state: CogPrediction) -> CogPrediction:
        """``state`` with what setup() printed before its logs (``setup_logs``)."""
        if self.takes_setup_logs and self.process.setup_logs:
            self.setup_logs, self.process.setup_logs = (
                self.setup_logs + self.process.setup_logs,
                "",
            )
        if self.setup_logs:
            state.logs = self.setup_logs + state.logs
        return state

    def offer(self, payload: dict[str, Any], oversized: Mapping[str, int] | None = None) -> None:
        """A webhook delivery; they arrive out of order, so keep the most complete.
        ``oversized``: values left out of it for their size (see answer.py)."""
        oversized = oversized or {}
        if "output" in oversized:
            return  # the answer to the PUT says how the run ended
        if "logs" in oversized:
            payload["logs"] = self.stream_logs
        if self.best is None or rank(payload) >= rank(self.best):
            self.best = payload
        if payload.get("status") in TERMINAL:
            self.hook_terminal.set()
        self.changed.set()

    def on_log_record(self, fields: dict[str, Any]) -> None:
        """A line of coglet's own log about this prediction."""
        message = fields.get("message")
        if "source" in fields:
            self.logs.append(f"{message}\n")
            if not self.webhook:
                self.changed.set()
        elif message == "Starting prediction":
            self.started = True
        elif message in END_MARKERS:
            self.logs_done.set()

    @property
    def stream_logs(self) -> str:
        """The prediction's log lines as coglet wrote them to its output."""
        return self.logs.text()

    def snapshot(self) -> CogPrediction:
        """The current non-terminal state for ``on_update``."""
        if self.webhook:
            state = parse_prediction(self.best or {"status": "processing"})
            if state.status in TERMINAL:
                state.status = "processing"
            return self.with_setup_logs(state)
        return self.with_setup_logs(CogPrediction(status="processing", logs=self.stream_logs))


class Runs:
    """The pool's runs in flight by prediction id."""

    def __init__(self) -> None:
        self._runs: dict[str, Run] = {}

    def __contains__(self, prediction_id: object) -> bool:
        return prediction_id in self._runs

    def get(self, prediction_id: str) -> Run | None:
        """The run of ``prediction_id`` (None: none in flight)."""
        return self._runs.get(prediction_id)

    def add(self, run: Run) -> None:
        """Note a run handed to its process."""
        self._runs[run.id] = run

    def drop(self, run: Run) -> None:
        """Forget a run that has ended (not a newer run of the same id)."""
        if self._runs.get(run.id) is run:
            del self._runs[run.id]

    def on_record(self, fields: dict[str, Any]) -> None:
        """A log record of coglet's (any process of the pool's) about a prediction."""
        run = self._runs.get(str(fields.get("prediction_id")))
        if run is not None:
            run.on_log_record(fields)
