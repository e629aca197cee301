"""FileExpiryWorkflow: one sweep of uploaded files past their ``expires_at``.

A Temporal Schedule (``workers/schedules.py``) starts it every ``file_sweep_interval``
seconds; the sweep is one activity that deletes the expired files' objects, then their rows.
"""

from __future__ import annotations

from datetime import timedelta

from temporalio import workflow
from temporalio.common import RetryPolicy

with workflow.unsafe.imports_passed_through():
    from replicant.contracts import ActivityName, ExpiredFiles, ExpireFiles

SWEEP_TIMEOUT = timedelta(minutes=30)


@workflow.defn(name="FileExpiryWorkflow")
class FileExpiryWorkflow:
    """Remove the uploaded files that have expired."""

    @workflow.run
    async def run(self, job: ExpireFiles) -> ExpiredFiles:
        result: ExpiredFiles = await workflow.execute_activity(
            ActivityName.REMOVE_EXPIRED_FILES,
            job,
            result_type=ExpiredFiles,
            start_to_close_timeout=SWEEP_TIMEOUT,
            heartbeat_timeout=timedelta(minutes=2),
            retry_policy=RetryPolicy(maximum_attempts=3),
        )
        return result
