"""The ladder every run workflow climbs, a prediction's and a training's alike:

cancel asked already? -> stage the input files (only when the input holds URLs or data URIs;
on ``side_queue``, else the workflow's own queue) -> cancel asked meanwhile? -> run the model
on its hardware queue (heartbeats; a cancel reaches the running model) -> the run's result, or
the end the workflow records: ``canceled`` (a cancel signal, or the workflow itself cancelled
from the Temporal UI) or ``failed`` (a staging error, or the run's last attempt failed).

Only temporalio, the standard library and replicant.contracts are imported here, as in every
workflow module.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

from temporalio import workflow
from temporalio.exceptions import ActivityError, ApplicationError, CancelledError

from workflows.steps import STATUS_ATTR, failure_message, may_hold_files, stage, start_run

with workflow.unsafe.imports_passed_through():
    from replicant.contracts import Status

Result = TypeVar("Result")
Ended = TypeVar("Ended")
T = TypeVar("T")

# The workflow.patched() id under which a run's workflow closes when the run ends (Completed,
# Failed or Canceled, as the run ended), its `completed` webhook delivered by a workflow of
# its own and its data removed by the retention sweep.
CLOSES_AT_END = "closes-at-end"


@dataclass(frozen=True)
class Rungs:
    """What one kind of run names on the ladder."""

    noun: str  # "Prediction", "Training": in failure messages
    stage_patch: str  # the workflow.patched() id under which staging was added
    stage_activity: str
    run_activity: str
    result_type: type[Any]
    non_retryable: list[str]


class RunLadder(Generic[Result, Ended]):
    """The shared part of a run workflow; a kind brings ``_finish`` (how it records an end
    the workflow decided) and its ``Rungs``."""

    def __init__(self) -> None:
        self._cancel_requested = False
        self._cancel_asked_by_temporal = False
        self._run: workflow.ActivityHandle[Result] | None = None

    def cancel(self) -> None:
        raise NotImplementedError

    _status: Status
    _terminal: bool

    @workflow.signal
    def started(self) -> None:
        """The run activity recorded ``processing``: the ``status`` query and the
        ``ReplicantStatus`` search attribute say so too."""
        if not self._terminal and self._status == "starting":
            self._status = "processing"
            workflow.upsert_search_attributes([STATUS_ATTR.value_set("processing")])

    async def _shielded(self, work: Awaitable[T]) -> T:
        """Await ``work`` whatever it is doing when the workflow is asked to cancel (the API's
        cancel, the Temporal UI's "Request Cancellation"): that request becomes the kind's
        own cancel, so the run ends as ``canceled`` and is recorded so."""
        task = asyncio.ensure_future(work)
        while True:
            try:
                return await asyncio.shield(task)
            except asyncio.CancelledError:
                self._cancel_asked_by_temporal = True
                self.cancel()

    def _close(self, result: T, noun: str, status: Status, error: str | None) -> T:
        """Close the workflow as the run ended: Completed with ``result``, Failed with the
        run's error (not retried), or Canceled when the cancel came through Temporal."""
        if status == "failed":
            raise ApplicationError(
                error or f"The {noun.lower()} failed", type=f"{noun}Failed", non_retryable=True
            )
        if status == "canceled" and self._cancel_asked_by_temporal:
            raise asyncio.CancelledError(f"The {noun.lower()} was canceled")
        return result

    async def _finish(self, req: Any, status: Status, error: str | None) -> Ended:
        raise NotImplementedError

    async def _climb(self, req: Any, rungs: Rungs) -> Result | Ended:
        """Stage and run ``req``: the run's result, or the end recorded by ``_finish``."""
        if self._cancel_requested:
            return await self._finish(req, "canceled", None)
        # A request of shape 1 or more (replicant/contracts.py) stages without a patch marker.
        if may_hold_files(req.input) and (
            getattr(req, "shape", 0) >= 1 or workflow.patched(rungs.stage_patch)
        ):
            staged = await stage(rungs.stage_activity, req, req.side_queue)
            if isinstance(staged, str):
                return await self._finish(req, "failed", f"Input file error: {staged}")
            req = req.model_copy(update={"staged_files": staged.files})
            if self._cancel_requested:
                return await self._finish(req, "canceled", None)
        self._run = start_run(rungs.run_activity, req, rungs.result_type, rungs.non_retryable)
        try:
            result: Result = await self._run
        except asyncio.CancelledError:
            # The whole workflow was cancelled (e.g. from the Temporal UI): same as a cancel.
            self._run.cancel()
            return await self._finish(req, "canceled", None)
        except ActivityError as err:
            if isinstance(err.cause, CancelledError):
                return await self._finish(req, "canceled", None)
            message = failure_message(rungs.noun, err, rungs.non_retryable)
            return await self._finish(req, "failed", message)
        return result
