"""StartReconcileWorkflow: one pass that settles creates a crash left half-done.

A Temporal Schedule (``workers/schedules.py``) starts it every ``reconcile_interval``
seconds; the pass is one activity (``activities/reconcile.py``).
"""

from __future__ import annotations

from datetime import timedelta

from temporalio import workflow
from temporalio.common import RetryPolicy

with workflow.unsafe.imports_passed_through():
    from replicant.contracts import ActivityName, ReconciledStarts, ReconcileStarts


@workflow.defn(name="StartReconcileWorkflow")
class StartReconcileWorkflow:
    """Fail the rows left ``starting`` without a workflow."""

    @workflow.run
    async def run(self, job: ReconcileStarts) -> ReconciledStarts:
        result: ReconciledStarts = await workflow.execute_activity(
            ActivityName.RECONCILE_STARTS,
            job,
            result_type=ReconciledStarts,
            start_to_close_timeout=timedelta(minutes=10),
            heartbeat_timeout=timedelta(minutes=1),
            retry_policy=RetryPolicy(maximum_attempts=3),
        )
        return result
