"""RetentionSweepWorkflow: one sweep of predictions past retention that still hold data.

A Temporal Schedule (``workers/schedules.py``) starts it every ``retention_sweep_interval``
seconds; it catches the predictions whose own workflow was terminated or reset before
removing their data.
"""

from __future__ import annotations

from datetime import timedelta

from temporalio import workflow
from temporalio.common import RetryPolicy

with workflow.unsafe.imports_passed_through():
    from replicant.contracts import ActivityName, SweepRetention, SweptPredictions

SWEEP_TIMEOUT = timedelta(minutes=30)


@workflow.defn(name="RetentionSweepWorkflow")
class RetentionSweepWorkflow:
    """Remove the data of overdue predictions."""

    @workflow.run
    async def run(self, job: SweepRetention) -> SweptPredictions:
        result: SweptPredictions = await workflow.execute_activity(
            ActivityName.REMOVE_OVERDUE_PREDICTION_DATA,
            job,
            result_type=SweptPredictions,
            start_to_close_timeout=SWEEP_TIMEOUT,
            heartbeat_timeout=timedelta(minutes=2),
            retry_policy=RetryPolicy(maximum_attempts=3),
        )
        return result
