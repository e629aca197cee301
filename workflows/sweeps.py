"""The scheduled sweeps: workflows of one activity each, started by Temporal Schedules
(``workers/schedules.py``).

- ``FileExpiryWorkflow`` (every ``file_sweep_interval``): delete the uploaded files past their
  ``expires_at``, their objects first, then their rows; and the objects of managed weights
  that no version refers to any more.
- ``RetentionSweepWorkflow`` (every ``retention_sweep_interval``): remove the data of
  predictions past retention that still hold it (their own workflow was terminated or reset
  before removing it).
- ``StartReconcileWorkflow`` (every ``reconcile_interval``): settle the creates a crash left
  half-done (``activities/reconcile.py``), each pass going on from the rows where the last
  pass stopped (carried from run to run by the Schedule as the last completion result).
"""

from __future__ import annotations

from datetime import timedelta
from typing import TypeVar

from temporalio import workflow
from temporalio.common import RetryPolicy

with workflow.unsafe.imports_passed_through():
    from replicant.contracts import (
        ActivityName,
        ExpiredFiles,
        ExpireFiles,
        ReconciledStarts,
        ReconcileStarts,
        SweepRetention,
        SweptPredictions,
    )

SWEEP_TIMEOUT = timedelta(minutes=30)
SWEEP_HEARTBEAT = timedelta(minutes=2)
SWEEP_ATTEMPTS = 3

R = TypeVar("R")


async def sweep(
    activity_name: str,
    job: object,
    result_type: type[R],
    limit: timedelta = SWEEP_TIMEOUT,
    heartbeat: timedelta = SWEEP_HEARTBEAT,
) -> R:
    """One pass: the sweep's activity, heartbeating, tried ``SWEEP_ATTEMPTS`` times."""
    result: R = await workflow.execute_activity(
        activity_name,
        job,
        result_type=result_type,
        start_to_close_timeout=limit,
        heartbeat_timeout=heartbeat,
        retry_policy=RetryPolicy(maximum_attempts=SWEEP_ATTEMPTS),
    )
    return result


@workflow.defn(name="FileExpiryWorkflow")
class FileExpiryWorkflow:
    """Remove the uploaded files that have expired."""

    @workflow.run
    async def run(self, job: ExpireFiles) -> ExpiredFiles:
        return await sweep(ActivityName.REMOVE_EXPIRED_FILES, job, ExpiredFiles)


@workflow.defn(name="RetentionSweepWorkflow")
class RetentionSweepWorkflow:
    """Remove the data of overdue predictions."""

    @workflow.run
    async def run(self, job: SweepRetention) -> SweptPredictions:
        return await sweep(ActivityName.REMOVE_OVERDUE_PREDICTION_DATA, job, SweptPredictions)


@workflow.defn(name="StartReconcileWorkflow")
class StartReconcileWorkflow:
    """Settle the rows left ``starting`` (and the builds left running) without a workflow."""

    @workflow.run
    async def run(self, job: ReconcileStarts) -> ReconciledStarts:
        # The Schedule hands each run the last one's result: the pass goes on where that one
        # stopped, whichever worker runs it and however often workers restart.
        if workflow.has_last_completion_result():
            last = workflow.get_last_completion_result(ReconciledStarts)
            if last is not None:
                job = job.model_copy(update={"after": last.after})
        return await sweep(
            ActivityName.RECONCILE_STARTS,
            job,
            ReconciledStarts,
            limit=timedelta(minutes=10),
            heartbeat=timedelta(minutes=1),
        )
