"""One prediction handed to a coglet process, and the pool's runs in flight.

A ``Run`` is the one object of a prediction on the worker's side of coglet: what coglet has
reported about it so far, its stop, and its end (as Cog's ``PredictTask`` owns a prediction's
response and its terminal transitions): coglet's answer becomes the run's terminal state
here, in its ``RunState`` (replicant/runstate.py: the one the run activity's ``LiveRun``
handed to the pool, when it did). ``Runs`` is the one place runs live, by prediction id
(webhook deliveries, uploads, coglet's log records and cancels find them there)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Mapping
from typing import Any

from replicant.runner import CogPrediction
from replicant.runstate import RunState
from workers.runners.answer import LogTail, output_too_large
from workers.runners.coglet import (
    END_MARKERS,
    TERMINAL,
    WORKER_CRASHED,
    explain_model_error,
    parse_prediction,
    rank,
    worker_died_error,
)
from workers.runners.process import CogletProcess

# How long an answer whose logs were over their limit waits for the run's end in coglet's
# output (its logs' tail is read from there).
OVERSIZED_LOGS_WAIT = 10.0


class Run:
    """One prediction on a coglet process: the reports about it (webhook deliveries and
    coglet's log lines), its stop, and its end."""

    def __init__(
        self,
        prediction_id: str,
        process: CogletProcess,
        webhook: bool,
        log: logging.Logger,
        state: RunState,
    ) -> None:
        """``state``: the run's one ``RunState``, kept by a second hand-over too."""
        self.id = prediction_id
        self.state = state
        self.log = log
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

    def news(self) -> CogPrediction | None:
        """The current state when it differs from the last one reported (None: no news)."""
        state = self.snapshot()
        return state if self.state.report(state) else None

    # -- its end: coglet's answer (or the lack of one) becomes the run's terminal state ----

    def canceled_answer(self) -> CogPrediction:
        """The answer of a run canceled before coglet could answer it."""
        return CogPrediction(status="canceled", logs=self.stream_logs)

    def died_answer(self) -> CogPrediction:
        """The answer of a run whose model process died under it."""
        return CogPrediction(status="failed", error=self.death_error(), logs=self.stream_logs)

    def death_error(self) -> str:
        """The error of a run whose model process died under it (see worker_died_error), or
        that the pool stopped for its state (``failure``)."""
        process = self.process
        if process.failure is not None:
            return process.failure
        now = process.oom_kills()
        oom = self.oom_kills is not None and now is not None and now > self.oom_kills
        limit = process.cgroup.limit if process.cgroup is not None else None
        self.log.warning(
            "event=model_process_died key=%s prediction=%s pid=%d oom_kill=%s limit=%s",
            process.spec.key,
            self.id,
            process.pid,
            oom,
            limit,
        )
        return worker_died_error(oom, limit)

    async def within_limits(self, result: CogPrediction) -> CogPrediction:
        """coglet's answer within the limits: logs over theirs keep their end (read from
        coglet's log stream to the end of the run); an output over its limit fails the run,
        saying so."""
        if "logs" in self.oversized:
            # Reading that much of coglet's output may lag its answer by seconds on a busy host.
            await self._logs_written(OVERSIZED_LOGS_WAIT)
            result.logs = self.stream_logs
        size = self.oversized.get("output")
        if size is not None and result.status == "succeeded":
            result.status, result.output = "failed", None
            result.error = output_too_large(size, self.process.spec.max_output)
            self.log.warning(
                "event=output_too_large key=%s prediction=%s bytes=%d",
                self.process.spec.key,
                self.id,
                size,
            )
        return result

    async def fill_logs(self, result: CogPrediction) -> None:
        """The logs coglet leaves out of a failed or canceled answer (and the partial output
        of an iterator), from the last webhook delivery or else coglet's log stream."""
        if result.logs:
            return
        if self.webhook:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(1.0):
                    await self.hook_terminal.wait()
            if self.best is not None:
                result.logs = str(self.best.get("logs") or "")
                if result.output is None:
                    # The partial output of an iterator that failed or was canceled.
                    result.output = self.best.get("output")
        if not result.logs:
            await self._logs_written(0.5)
            result.logs = self.stream_logs

    def explained(self, result: CogPrediction) -> CogPrediction:
        """``result`` with the error a reader can act on: a crashed worker's cause, the
        model's own exception message."""
        if result.status == "failed" and result.error == WORKER_CRASHED:
            result.error = self.death_error()
        explain_model_error(result)
        return result

    async def end(self, result: CogPrediction) -> CogPrediction:
        """End the run with ``result`` (what setup() printed before its logs): its terminal
        state, settled once."""
        if self.takes_setup_logs and not (self.process.setup_logs or self.setup_logs):
            # What setup() printed is read from coglet's output, which may lag its answer:
            # this run's end in the output comes after it.
            await self._logs_written(1.0)
        return self.state.end(self.with_setup_logs(result))

    async def _logs_written(self, within: float) -> None:
        """Wait up to ``within`` seconds for coglet's marker that the run's logs are written."""
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(within):
                await self.logs_done.wait()


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
