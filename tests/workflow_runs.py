"""The runs of one workflow id: a prediction continues as new on the orchestration queue once
its run is over (its after-life), so its history spans two runs. And starting a prediction's
workflow through Temporal, as a program would (docs/api.md)."""

from __future__ import annotations

from typing import Any

from temporalio.api.history.v1 import HistoryEvent
from temporalio.client import Client, WorkflowHandle, WorkflowHistory

from replicant.contracts import PredictionRequest, RunOutcome
from replicant.settings import Settings
from replicant.temporal import connect
from workflows.prediction import PredictionWorkflow


async def start_prediction(
    settings: Settings, req: PredictionRequest
) -> WorkflowHandle[Any, RunOutcome]:
    """Start ``req``'s workflow on the orchestration queue; it records the row itself."""
    client = await connect(settings)
    return await client.start_workflow(
        PredictionWorkflow.run,
        req,
        id=f"prediction-{req.id}",
        task_queue=settings.orchestration_queue,
    )


async def run_histories(client: Client, workflow_id: str) -> list[WorkflowHistory]:
    """The history of every run of ``workflow_id``, the first run first."""
    histories: list[WorkflowHistory] = []
    run_id: str | None = None
    while True:
        handle = client.get_workflow_handle(workflow_id, run_id=run_id)
        history = await handle.fetch_history()
        histories.insert(0, history)
        started = history.events[0].workflow_execution_started_event_attributes
        run_id = started.continued_execution_run_id or None
        if run_id is None:
            return histories


async def all_events(client: Client, workflow_id: str) -> list[HistoryEvent]:
    """The events of every run of ``workflow_id``, in order."""
    return [e for h in await run_histories(client, workflow_id) for e in h.events]
