"""Running one prediction on a warm process: the PUT, live updates, failure and cancel.

The request is always synchronous (the answer is the authoritative terminal state, and a
dropped connection makes coglet cancel); a webhook is added only when live updates need one
(see the package docstring for why).
"""

from __future__ import annotations

import asyncio
import logging
import shutil
import time
from pathlib import Path
from typing import Any, Unpack
from urllib.parse import quote

import aiohttp

from replicant.runner import BootError, CogPrediction, OnUpdate, RunnerSpec, RunWith
from replicant.runstate import RunState
from workers.runners.answer import answer_reader, answered_prediction
from workers.runners.client import CogletClient
from workers.runners.coglet import (
    HEALTHY,
    UNHEALTHY,
    WORKER_CRASHED,
    prediction_path,
    request_body,
    unhealthy_error,
)
from workers.runners.process import CogletProcess
from workers.runners.processes import Processes
from workers.runners.run import Run, Runs

AT_CAPACITY_RETRY_FOR = 5.0


class _NotHandedOver(Exception):
    """coglet was gone before it received the prediction: safe to retry on a new process."""


class Executor:
    """Runs predictions on the pool's processes; ``runs`` holds the ones in flight."""

    def __init__(
        self,
        processes: Processes,
        client: CogletClient,
        runs: Runs,
        log: logging.Logger,
        *,
        cancel_grace: float,
        update_interval: float,
    ) -> None:
        self.processes = processes
        self.client = client
        self.log = log
        self.cancel_grace = cancel_grace
        self.update_interval = update_interval
        self.runs = runs
        self._streams_output: dict[str, bool] = {}

    async def predict(
        self, spec: RunnerSpec, prediction_id: str, input: dict[str, Any], **run: Unpack[RunWith]
    ) -> CogPrediction:
        """Run one prediction on ``spec.key``'s process (see ``RunnerPool.predict``); a
        second hand-over, after a process gone before it took the run, keeps its state."""
        state = run.get("state") or RunState(prediction_id)
        if state.id != prediction_id:
            raise ValueError(f"the state of run {state.id} for run {prediction_id}")
        on_update, on_booted = run.get("on_update"), run.get("on_booted")
        context = run.get("context")
        booted_called = False
        for attempt in range(2):
            process = await self.processes.checkout(spec)
            webhook = on_update is not None and self._wants_webhook(spec)
            handed = Run(prediction_id, process, webhook, self.log, state)
            self.runs.add(handed)
            handed.task = asyncio.create_task(self._execute(process, handed, input, context))
            try:
                if on_booted is not None and not booted_called:
                    booted_called = True
                    await on_booted()
                return await self._follow(handed, handed.task, on_update)
            except _NotHandedOver as err:
                if attempt:
                    raise BootError(
                        "the model process exited before it took the prediction",
                        process.output_tail(),
                    ) from err
                self.log.warning("event=runner_gone key=%s retry=1", spec.key)
            except BaseException:
                # Cancelled (timeout, workflow cancel) or a callback failed: stop the run.
                await asyncio.shield(self._stop(handed))
                raise
        raise AssertionError("unreachable")

    async def cancel(self, prediction_id: str) -> None:
        """Cancel a running prediction; its ``predict`` call then returns it ``canceled``."""
        run = self.runs.get(prediction_id)
        if run is None:
            self.log.info("event=cancel_unknown prediction=%s", prediction_id)
            return
        await asyncio.shield(self._stop(run))

    def _wants_webhook(self, spec: RunnerSpec) -> bool:
        if spec.streams_output is not None:
            return spec.streams_output
        # Unknown until the first run of the key reports it: stream to be safe.
        return self._streams_output.get(spec.key, True)

    async def _follow(
        self, run: Run, task: asyncio.Task[CogPrediction], on_update: OnUpdate | None
    ) -> CogPrediction:
        """Wait for the run, passing changed states to ``on_update`` on the way."""
        if on_update is None:
            return await asyncio.shield(task)
        while not task.done():
            changed = asyncio.ensure_future(run.changed.wait())
            try:
                await asyncio.wait({task, changed}, return_when=asyncio.FIRST_COMPLETED)
            finally:
                changed.cancel()
            if task.done():
                break
            run.changed.clear()
            state = run.news()
            if state is not None:
                await on_update(state)
                # Throttle: a chatty model must not turn into a flood of callbacks.
                await asyncio.wait({task}, timeout=self.update_interval)
        return task.result()

    async def _execute(
        self,
        process: CogletProcess,
        run: Run,
        input: dict[str, Any],
        context: dict[str, str] | None = None,
    ) -> CogPrediction:
        """Send the prediction to coglet and end the run with its answer; frees the process."""
        started = time.perf_counter()
        webhook = process.links + quote(run.id, safe="") if run.webhook else None
        url = process.url + prediction_path(process.spec.mode, run.id)
        # Read before the run: a rise by its end means the kernel killed a process for memory.
        run.oom_kills = process.oom_kills()
        inputs: Path | None = None
        try:
            if process.sandbox is not None:
                input, inputs = await asyncio.to_thread(process.sandbox.take_inputs, run.id, input)
            answer = await self._send(process, run, url, request_body(input, webhook, context))
            result = await run.within_limits(answer)
            if result.status in ("failed", "canceled") and process.alive:
                await run.fill_logs(result)
                await self._check_health(process, result)
            result = run.explained(result)
            self.log.info(
                "event=prediction_done key=%s prediction=%s status=%s webhook=%s seconds=%.4f",
                process.spec.key,
                run.id,
                result.status,
                run.webhook,
                time.perf_counter() - started,
            )
            return await run.end(result)
        finally:
            if process.streams_output is not None:
                self._streams_output[process.spec.key] = process.streams_output
            self.runs.drop(run)
            if inputs is not None:
                shutil.rmtree(inputs, ignore_errors=True)
            self.processes.release(process)

    async def _send(
        self, process: CogletProcess, run: Run, url: str, body: dict[str, Any]
    ) -> CogPrediction:
        deadline = time.monotonic() + AT_CAPACITY_RETRY_FOR
        delay = 0.001
        while True:
            if run.cancel_requested:
                return CogPrediction(status="canceled")
            try:
                status, answer = await self.client.put(url, body, answer_reader(process.spec))
            except (aiohttp.ClientError, TimeoutError) as err:
                # The process died: crashed, OOM-killed, or killed by us after a cancel.
                process.retire()
                await process.wait_closed(within=2.0)  # its output, read to the end
                if run.cancel_requested:
                    return run.canceled_answer()
                if not run.started:
                    raise _NotHandedOver() from err  # the model never ran: safe to retry
                return run.died_answer()
            # coglet answers 409 to a share of back-to-back calls while it frees its slot.
            if status in (409, 503) and time.monotonic() < deadline:
                await asyncio.sleep(delay)
                delay = min(delay * 2, 0.05)
                continue
            break
        if status == 409:
            # The slot never came free: the process is stuck; do not reuse it.
            process.retire()
        result = answered_prediction(status, answer)
        run.oversized = answer.oversized
        return result

    async def _check_health(self, process: CogletProcess, result: CogPrediction) -> None:
        """After a failed or canceled run: retire the process if the failure broke its slot
        (a crashed worker leaves coglet UNHEALTHY)."""
        status, body = await self.client.health(process.url)
        if status == UNHEALTHY and process.checks_health and result.error != WORKER_CRASHED:
            # The model's healthcheck() failed (coglet says UNHEALTHY too once its worker is
            # gone: that run's error says so already).
            self.processes.stopped_for(process, "unhealthy", unhealthy_error(body))
        elif status not in HEALTHY:
            if status == "DEFUNCT":  # its run's error already says how its worker ended
                self.processes.report(process, "defunct", result.error or "coglet is DEFUNCT")
            self.log.warning(
                "event=runner_unhealthy key=%s pid=%d health=%s",
                process.spec.key,
                process.pid,
                status,
            )
            self.processes.retire(process)

    async def _stop(self, run: Run) -> None:
        """Cancel a run in coglet and wait until its slot is free (idempotent)."""
        if run.stopper is None:
            run.stopper = asyncio.create_task(self._cancel_and_settle(run))
        await run.stopper

    async def _cancel_and_settle(self, run: Run) -> None:
        task, process = run.task, run.process
        assert task is not None
        run.cancel_requested = True
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.cancel_grace
        url = process.url + prediction_path(process.spec.mode, run.id) + "/cancel"
        self.log.info("event=cancel key=%s prediction=%s", process.spec.key, run.id)
        while not task.done() and loop.time() < deadline:
            status = await self.client.cancel(url)
            if status is None or status == 200:
                break
            # 404: coglet has not registered the prediction yet (or just finished it).
            await asyncio.wait({task}, timeout=0.02)
        await asyncio.wait({task}, timeout=max(deadline - loop.time(), 0))
        if not task.done():
            # A model stuck in C code (time.sleep, a CUDA call) never sees coglet's cancel.
            self.log.warning(
                "event=cancel_timeout key=%s prediction=%s pid=%d action=kill_and_restart",
                process.spec.key,
                run.id,
                process.pid,
            )
            self.processes.retire(process, restart=True)
            await asyncio.wait({task}, timeout=10)
