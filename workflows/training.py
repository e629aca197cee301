"""TrainingWorkflow: the durable life of one training.

stage input files into the object store (only when the input holds URLs or data URIs) -> run
the trainer on the base model's hardware queue (the activity records ``processing`` and logs,
sends the ``start`` and ``logs`` webhooks, and stores the trainer's weights in the object
store with no expiry) -> create the new version on the destination and mark the training
succeeded, in one transaction -> notify ``completed``.

Cancel and failure leave no version behind: the version is created only after the weights
are stored, by one guarded transaction that does nothing once the training has ended; a
training that ends any other way has its stored weights removed.
"""

from __future__ import annotations

from datetime import timedelta

from temporalio import workflow
from temporalio.common import RetryPolicy
from temporalio.exceptions import ActivityError

from workflows.runs import CLOSES_AT_END, Rungs, RunLadder
from workflows.steps import LOCAL, STATUS_ATTR, deliver_completed, failure_message
from workflows.webhooks import start_delivery

with workflow.unsafe.imports_passed_through():
    from replicant.contracts import (
        ActivityName,
        CompleteTraining,
        ErrorType,
        FinishTraining,
        Status,
        TrainingOutcome,
        TrainingRequest,
        TrainingRun,
        TrainingWebhook,
    )


# Errors that retrying cannot fix.
NON_RETRYABLE = [ErrorType.VERSION_NOT_FOUND, ErrorType.DESTINATION_GONE]
COMPLETE = timedelta(minutes=1)


RUNGS = Rungs(
    noun="Training",
    stage_patch="stage-training-inputs",
    stage_activity=ActivityName.STAGE_TRAINING_INPUTS,
    run_activity=ActivityName.RUN_TRAINING,
    result_type=TrainingRun,
    non_retryable=NON_RETRYABLE,
)


@workflow.defn(name="TrainingWorkflow")
class TrainingWorkflow(RunLadder[TrainingRun, TrainingOutcome]):
    """One training, from queued to a new version on its destination."""

    def __init__(self) -> None:
        super().__init__()
        self._status: Status = "starting"
        self._terminal = False
        self._completing = False

    @workflow.run
    async def run(self, req: TrainingRequest) -> TrainingOutcome:
        if workflow.patched(CLOSES_AT_END):
            return await self._live(req)
        outcome = await self._train(req)
        self._status, self._terminal = outcome.status, True
        workflow.upsert_search_attributes([STATUS_ATTR.value_set(outcome.status)])
        events = req.webhook_events_filter
        if req.webhook and (events is None or "completed" in events):
            await self._notify_completed(req)
        return outcome

    async def _live(self, req: TrainingRequest) -> TrainingOutcome:
        """The training's life, and the workflow's: it closes as the training ended (the
        `completed` webhook goes on in a workflow of its own)."""
        outcome = await self._shielded(self._train(req))
        self._status, self._terminal = outcome.status, True
        workflow.upsert_search_attributes([STATUS_ATTR.value_set(outcome.status)])
        events = req.webhook_events_filter
        if req.webhook and (events is None or "completed" in events):
            # A cancel asked from here on finds the training ended: it closes as it ended.
            await self._shielded(start_delivery("training", req))
        return self._close(outcome, "Training", outcome.status, outcome.error)

    async def _train(self, req: TrainingRequest) -> TrainingOutcome:
        run = await self._climb(req, RUNGS)
        if isinstance(run, TrainingOutcome):  # ended before or during the run
            return run
        if self._cancel_requested:
            return await self._finish(req, "canceled", None)
        if run.status != "succeeded":
            return await self._finish(req, run.status, run.error)
        if run.weights is None:
            return await self._finish(req, "failed", "The trainer returned no weights")
        # From here the training is being completed: a cancel no longer changes the outcome.
        self._completing = True
        try:
            outcome: TrainingOutcome = await workflow.execute_activity(
                ActivityName.COMPLETE_TRAINING,
                CompleteTraining(id=req.id, weights=run.weights, completed_at=workflow.now()),
                result_type=TrainingOutcome,
                start_to_close_timeout=COMPLETE,
                retry_policy=RetryPolicy(non_retryable_error_types=NON_RETRYABLE),
                summary=f"create the new version of {req.destination}",
            )
        except ActivityError as err:
            return await self._finish(
                req, "failed", failure_message("Training", err, NON_RETRYABLE)
            )
        return outcome

    async def _finish(
        self, req: TrainingRequest, status: Status, error: str | None
    ) -> TrainingOutcome:
        """Record a terminal state without a version, and remove any stored weights."""
        done = FinishTraining(id=req.id, status=status, error=error, completed_at=workflow.now())
        await workflow.execute_local_activity(
            ActivityName.FINISH_TRAINING,
            done,
            start_to_close_timeout=LOCAL,
            summary=f"record {status}",
        )
        return TrainingOutcome(status=status, error=error, completed_at=done.completed_at)

    async def _notify_completed(self, req: TrainingRequest) -> None:
        delivery = TrainingWebhook(
            training_id=req.id, event="completed", timeout=req.webhook_timeout
        )
        await deliver_completed(
            ActivityName.SEND_TRAINING_WEBHOOK,
            delivery,
            attempt_timeout=req.webhook_timeout,
            retry_period=req.webhook_retry_period,
            max_interval=req.webhook_retry_max_interval,
            subject=req.id,
        )

    @workflow.signal
    def cancel(self) -> None:
        """Cancel the training unless it has ended or is creating its version already."""
        if self._terminal or self._completing:
            return
        self._cancel_requested = True
        if self._run is not None:
            self._run.cancel()

    @workflow.query
    def status(self) -> str:
        return self._status
