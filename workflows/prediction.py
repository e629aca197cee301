"""PredictionWorkflow: the durable life of one prediction.

record (programmatic starts only) -> stage input files into the object store (only when the
input holds URLs or data URIs) -> run on the hardware queue (the run activity writes
``processing``, logs, output and the terminal state to the read model itself, so a fast
prediction costs one activity round trip) -> notify -> retention timer -> remove data (once
the ``completed`` webhook is delivered or given up, so that it carries the final prediction).
Once the run is over, the workflow continues as new on the orchestration queue (its
after-life: webhook retries, retention, removal need no worker of the hardware).
A deadline (``Cancel-After``) is a durable timer beside the run: when it passes first, the
prediction ends ``aborted`` if it never started, else ``canceled``, and its workflow closes as
Canceled (it asks Temporal to cancel it, through an activity: a workflow cannot ask that of
itself, and Temporal closes a workflow as Canceled only after such a request).
"""

from __future__ import annotations

import asyncio
import contextlib
from datetime import datetime, timedelta

from temporalio import workflow
from temporalio.common import TypedSearchAttributes

from workflows import steps
from workflows.runs import CLOSES_AT_END, Rungs, RunLadder
from workflows.steps import LOCAL, MODEL_ATTR, STATUS_ATTR, deliver_completed
from workflows.webhooks import start_delivery

with workflow.unsafe.imports_passed_through():
    from replicant.contracts import (
        ActivityName,
        ErrorType,
        FinishPrediction,
        PredictionRef,
        PredictionRequest,
        RunOutcome,
        Status,
        WaitResult,
        WebhookDelivery,
        WorkflowRun,
    )


# Errors that retrying cannot fix; anything else (a lost worker, a crashed process) retries.
NON_RETRYABLE = [ErrorType.VERSION_NOT_FOUND]
# The workflow.patched() id under which a passed deadline asks Temporal to cancel the
# workflow (which then closes as Canceled) rather than canceling the run itself.
DEADLINE_CANCELS_WORKFLOW = "deadline-cancels-workflow"


def wants_completed(req: PredictionRequest) -> bool:
    events = req.webhook_events_filter
    return bool(req.webhook) and (events is None or "completed" in events)


def search_attributes(req: PredictionRequest, status: Status = "starting") -> TypedSearchAttributes:
    """The attributes that make a prediction findable in the Temporal UI."""
    return steps.search_attributes(req.model, req.version, req.owner, status)


RUNGS = Rungs(
    noun="Prediction",
    stage_patch="stage-inputs",
    stage_activity=ActivityName.STAGE_INPUTS,
    run_activity=ActivityName.RUN_PREDICTION,
    result_type=RunOutcome,
    non_retryable=NON_RETRYABLE,
)


@workflow.defn(name="PredictionWorkflow")
class PredictionWorkflow(RunLadder[RunOutcome, RunOutcome]):
    """One prediction, from queued to removed."""

    def __init__(self) -> None:
        super().__init__()
        self._status: Status = "starting"
        self._terminal = False
        self._deadline_passed = False
        # The deadline's cancel went through Temporal: an `aborted` end closes as Canceled.
        self._deadline_cancel_requested = False

    @workflow.run
    async def run(self, req: PredictionRequest) -> RunOutcome:
        if req.outcome is not None:  # the after-life run, on the orchestration queue
            self._status, self._terminal = req.outcome.status, True
            return await self._after_life(req, req.outcome)
        if workflow.info().typed_search_attributes.get(MODEL_ATTR) is None:
            workflow.upsert_search_attributes(
                [pair.key.value_set(pair.value) for pair in search_attributes(req)]
            )
        if req.shape >= 1 or workflow.patched(CLOSES_AT_END):
            return await self._live(req)
        if not req.recorded:
            await workflow.execute_local_activity(
                ActivityName.RECORD_PREDICTION, req, start_to_close_timeout=LOCAL
            )
        if req.deadline is not None and workflow.patched("deadline"):
            outcome = await self._run_before_deadline(req, req.deadline)
        else:
            outcome = await self._run_model(req)
        self._status, self._terminal = outcome.status, True
        workflow.upsert_search_attributes([STATUS_ATTR.value_set(outcome.status)])
        if self._hands_over(req) and workflow.patched("after-life"):
            # The rest needs no hardware worker: continue on the orchestration queue, once
            # `wait_done` has answered (in this same workflow task).
            await workflow.wait_condition(workflow.all_handlers_finished)
            workflow.continue_as_new(
                req.model_copy(update={"outcome": outcome}),
                task_queue=req.side_queue,
                search_attributes=workflow.info().typed_search_attributes,
            )
        return await self._after_life(req, outcome)

    async def _live(self, req: PredictionRequest) -> RunOutcome:
        """The prediction's life, and the workflow's: it closes as the prediction ended (the
        `completed` webhook goes on in a workflow of its own, the retention sweep removes
        the data)."""
        outcome = await self._shielded(self._record_and_run(req))
        self._status, self._terminal = outcome.status, True
        workflow.upsert_search_attributes([STATUS_ATTR.value_set(outcome.status)])
        # A cancel asked from here on finds the prediction ended: it closes as it ended.
        await self._shielded(self._hand_over(req))
        ended = outcome.status
        if ended == "aborted" and self._deadline_cancel_requested:
            ended = "canceled"
        return self._close(outcome, "Prediction", ended, outcome.error)

    async def _hand_over(self, req: PredictionRequest) -> None:
        """Start the `completed` webhook's workflow, and let `wait_done` answer."""
        if wants_completed(req):
            await start_delivery("prediction", req)
        # `wait_done` answers before the workflow closes.
        await workflow.wait_condition(workflow.all_handlers_finished)

    async def _record_and_run(self, req: PredictionRequest) -> RunOutcome:
        if not req.recorded:
            await workflow.execute_local_activity(
                ActivityName.RECORD_PREDICTION,
                req,
                start_to_close_timeout=LOCAL,
                summary=f"record prediction {req.id}",
            )
        if req.deadline is not None:
            return await self._run_before_deadline(req, req.deadline, closes_at_end=True)
        return await self._run_model(req)

    def _hands_over(self, req: PredictionRequest) -> bool:
        """Whether the workflow runs on a hardware queue and has an after-life to live."""
        rest = wants_completed(req) or (req.source == "api" and req.retention >= 0)
        return rest and req.side_queue not in (None, workflow.info().task_queue)

    async def _after_life(self, req: PredictionRequest, outcome: RunOutcome) -> RunOutcome:
        """The `completed` webhook, the retention timer, then removing the data (once the
        webhook is delivered or given up)."""
        # The `completed` webhook is retried while the retention timer runs.
        notify: asyncio.Task[None] | None = None
        if wants_completed(req) and workflow.patched("completed-webhook"):
            notify = asyncio.create_task(self._notify_completed(req))
        if req.source == "api" and req.retention >= 0:
            await workflow.sleep(timedelta(seconds=req.retention))
            if notify is not None and workflow.patched("remove-after-completed"):
                # The `completed` body is the prediction as it is at delivery: its input,
                # output and logs stay until the delivery has succeeded or given up.
                await notify
            await workflow.execute_activity(
                ActivityName.REMOVE_PREDICTION_DATA,
                PredictionRef(id=req.id),
                task_queue=req.side_queue,
                start_to_close_timeout=timedelta(minutes=5),
            )
        if notify is not None:
            await notify
        return outcome

    async def _notify_completed(self, req: PredictionRequest) -> None:
        delivery = WebhookDelivery(
            prediction_id=req.id, event="completed", timeout=req.webhook_timeout
        )
        await deliver_completed(
            ActivityName.SEND_WEBHOOK,
            delivery,
            attempt_timeout=req.webhook_timeout,
            retry_period=req.webhook_retry_period,
            max_interval=req.webhook_retry_max_interval,
            subject=req.id,
            task_queue=req.side_queue,
        )

    async def _run_before_deadline(
        self, req: PredictionRequest, deadline: datetime, closes_at_end: bool = False
    ) -> RunOutcome:
        """Run the model; if the deadline passes first, end it as a cancel would (a workflow
        that closes at the run's end: a cancel through Temporal, so that it closes Canceled)."""
        run = asyncio.create_task(self._run_model(req))
        left = (deadline - workflow.now()).total_seconds()
        if left > 0:
            with contextlib.suppress(asyncio.TimeoutError):
                await workflow.wait_condition(run.done, timeout=left)
        if not run.done():
            self._deadline_passed = True
            if closes_at_end and (req.shape >= 1 or workflow.patched(DEADLINE_CANCELS_WORKFLOW)):
                await self._request_own_cancel()
            else:
                self.cancel()
        return await run

    async def _request_own_cancel(self) -> None:
        """Ask Temporal to cancel this workflow and wait until the request is in: it cancels
        the run as the API's cancel does (``_shielded``), and the workflow closes Canceled."""
        info = workflow.info()
        await workflow.execute_local_activity(
            ActivityName.REQUEST_WORKFLOW_CANCEL,
            WorkflowRun(workflow_id=info.workflow_id, run_id=info.run_id),
            start_to_close_timeout=LOCAL,
            summary="cancel at the deadline",
        )
        self._deadline_cancel_requested = True
        await workflow.wait_condition(lambda: self._cancel_asked_by_temporal)

    async def _run_model(self, req: PredictionRequest) -> RunOutcome:
        return await self._climb(req, RUNGS)

    async def _finish(
        self, req: PredictionRequest, status: Status, error: str | None
    ) -> RunOutcome:
        if status == "canceled" and self._deadline_passed:
            # The read model knows whether the run started: `aborted` if never, else `canceled`.
            ended: RunOutcome = await workflow.execute_local_activity(
                ActivityName.ABORT_PREDICTION,
                FinishPrediction(id=req.id, status="aborted", completed_at=workflow.now()),
                result_type=RunOutcome,
                start_to_close_timeout=LOCAL,
            )
            return ended
        done = FinishPrediction(id=req.id, status=status, error=error, completed_at=workflow.now())
        await workflow.execute_local_activity(
            ActivityName.FINISH_PREDICTION,
            done,
            start_to_close_timeout=LOCAL,
            summary=f"record {status}",
        )
        return RunOutcome(status=status, error=error, completed_at=done.completed_at)

    @workflow.signal
    def cancel(self) -> None:
        """Cancel the prediction in whatever state it is; a no-op once it is terminal."""
        self._cancel_requested = True
        if self._run is not None and not self._terminal:
            self._run.cancel()

    @workflow.update
    async def wait_done(self) -> WaitResult:
        """Return once the prediction is terminal (``Prefer: wait``)."""
        await workflow.wait_condition(lambda: self._terminal)
        return WaitResult(status=self._status)

    @workflow.query
    def status(self) -> str:
        return self._status
