"""Temporal Schedules that the orchestration worker keeps registered: the file-expiry sweep,
the reconciler of creates a crash left half-done, and the retention sweep.

Registered at every worker start, idempotently: the first start creates the schedule, later
ones (and other workers) update it to the current settings.
"""

from __future__ import annotations

import logging
from datetime import timedelta

from temporalio.client import (
    Client,
    Schedule,
    ScheduleActionStartWorkflow,
    ScheduleAlreadyRunningError,
    ScheduleIntervalSpec,
    ScheduleOverlapPolicy,
    SchedulePolicy,
    ScheduleSpec,
    ScheduleUpdate,
    ScheduleUpdateInput,
)

from replicant.contracts import ExpireFiles, ReconcileStarts, SweepRetention
from replicant.settings import Settings
from workflows.sweeps import FileExpiryWorkflow, RetentionSweepWorkflow, StartReconcileWorkflow

log = logging.getLogger("replicant.worker")

FILE_EXPIRY_SCHEDULE = "replicant-file-expiry"
START_RECONCILE_SCHEDULE = "replicant-start-reconcile"
RETENTION_SCHEDULE = "replicant-retention-sweep"


def file_expiry_schedule(settings: Settings) -> Schedule:
    every = timedelta(seconds=max(1.0, settings.file_sweep_interval))
    return Schedule(
        action=ScheduleActionStartWorkflow(
            FileExpiryWorkflow.run,
            ExpireFiles(),
            id=f"{FILE_EXPIRY_SCHEDULE}-sweep",
            task_queue=settings.orchestration_queue,
            run_timeout=timedelta(hours=1),
        ),
        spec=ScheduleSpec(intervals=[ScheduleIntervalSpec(every=every)]),
        # A sweep still running when the next is due: skip that one.
        policy=SchedulePolicy(overlap=ScheduleOverlapPolicy.SKIP),
    )


def start_reconcile_schedule(settings: Settings) -> Schedule:
    every = timedelta(seconds=max(1.0, settings.reconcile_interval))
    return Schedule(
        action=ScheduleActionStartWorkflow(
            StartReconcileWorkflow.run,
            ReconcileStarts(
                grace=settings.start_grace,
                asks=settings.reconcile_asks,
                limit=settings.reconcile_rows,
            ),
            id=f"{START_RECONCILE_SCHEDULE}-pass",
            task_queue=settings.orchestration_queue,
            run_timeout=timedelta(minutes=30),
        ),
        spec=ScheduleSpec(intervals=[ScheduleIntervalSpec(every=every)]),
        policy=SchedulePolicy(overlap=ScheduleOverlapPolicy.SKIP),
    )


def retention_schedule(settings: Settings) -> Schedule:
    every = timedelta(seconds=max(1.0, settings.retention_sweep_interval))
    # The sweep removes the data once retention is over (a prediction's workflow closes at
    # its end); a `completed` delivery still running holds it: its last attempt starts
    # within the retry period and takes at most the webhook timeout.
    job = SweepRetention(
        retention=settings.prediction_retention,
        webhook_hold=settings.webhook_retry_period + settings.webhook_timeout,
    )
    return Schedule(
        action=ScheduleActionStartWorkflow(
            RetentionSweepWorkflow.run,
            job,
            id=f"{RETENTION_SCHEDULE}-sweep",
            task_queue=settings.orchestration_queue,
            run_timeout=timedelta(hours=1),
        ),
        spec=ScheduleSpec(intervals=[ScheduleIntervalSpec(every=every)]),
        policy=SchedulePolicy(overlap=ScheduleOverlapPolicy.SKIP),
    )


async def ensure_schedules(client: Client, settings: Settings) -> None:
    """Create the schedules, or bring existing ones up to date with ``settings``."""
    for schedule_id, schedule in (
        (FILE_EXPIRY_SCHEDULE, file_expiry_schedule(settings)),
        (START_RECONCILE_SCHEDULE, start_reconcile_schedule(settings)),
        (RETENTION_SCHEDULE, retention_schedule(settings)),
    ):
        await _ensure(client, schedule_id, schedule)


async def _ensure(client: Client, schedule_id: str, schedule: Schedule) -> None:
    try:
        await client.create_schedule(schedule_id, schedule)
        log.info("event=schedule_created schedule=%s", schedule_id)
    except ScheduleAlreadyRunningError:

        def update(_: ScheduleUpdateInput) -> ScheduleUpdate:
            return ScheduleUpdate(schedule=schedule)

        await client.get_schedule_handle(schedule_id).update(update)
