"""Probes for the states a test waits on (use them with ``tests.waiting``): where a
prediction's run activity (or a build's) is in Temporal (queued for a slot, started,
retrying), the failed activity attempts of its workflow (e.g. refused webhook deliveries),
and which coglet processes run a version (booting or warm).
"""

from __future__ import annotations

import contextlib
from datetime import UTC, datetime
from pathlib import Path

from temporalio.api.enums.v1 import EventType, PendingActivityState
from temporalio.api.workflow.v1 import PendingActivityInfo
from temporalio.client import Client
from temporalio.service import RPCError, RPCStatusCode

from replicant.contracts import ActivityName, webhook_workflow_id
from tests.workflow_runs import all_events

SCHEDULED = PendingActivityState.PENDING_ACTIVITY_STATE_SCHEDULED
STARTED = PendingActivityState.PENDING_ACTIVITY_STATE_STARTED


async def pending_activity(
    temporal: Client, workflow_id: str, name: str
) -> PendingActivityInfo | None:
    """The pending activity ``name`` of a workflow, or None while there is none."""
    described = await temporal.get_workflow_handle(workflow_id).describe()
    for pending in described.raw_description.pending_activities:
        if pending.activity_type.name == name:
            return pending
    return None


async def run_activity(temporal: Client, prediction_id: str) -> PendingActivityInfo | None:
    """The pending run activity of a prediction's workflow, or None while there is none."""
    return await pending_activity(
        temporal, f"prediction-{prediction_id}", ActivityName.RUN_PREDICTION
    )


async def build_activity(temporal: Client, build_id: str) -> PendingActivityInfo | None:
    """The pending ``build_version`` activity of a build's workflow, or None."""
    return await pending_activity(temporal, f"build-{build_id}", ActivityName.BUILD_VERSION)


async def failed_attempts(temporal: Client, prediction_id: str) -> list[tuple[datetime, str]]:
    """When each failed activity attempt of a prediction's workflows (every run of its own,
    and its `completed` webhook's delivery) failed, and its failure message, in order."""
    failed = EventType.EVENT_TYPE_ACTIVITY_TASK_FAILED
    events = []
    for workflow_id in (f"prediction-{prediction_id}", webhook_workflow_id(prediction_id)):
        try:
            events += await all_events(temporal, workflow_id)
        except RPCError as err:
            if err.status != RPCStatusCode.NOT_FOUND:
                raise
    return sorted(
        (
            event.event_time.ToDatetime(tzinfo=UTC),
            event.activity_task_failed_event_attributes.failure.message,
        )
        for event in events
        if event.event_type == failed
    )


def is_queued(pending: PendingActivityInfo | None) -> bool:
    """Scheduled on its hardware queue and taken by no worker yet: waiting for a slot."""
    return pending is not None and pending.state == SCHEDULED and pending.attempt == 1


def processes_in(directory: Path) -> list[int]:
    """The ids of the processes whose working directory is ``directory`` (coglet runs a
    version in its model directory, from its boot until it stops)."""
    target = directory.resolve()
    found = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        with contextlib.suppress(OSError):
            if (proc / "cwd").resolve(strict=True) == target:
                found.append(int(proc.name))
    return found
