"""``GET /health``: ready only when the database, Temporal and every queue's worker are.

Never refused by admission (api/admission.py), and its database checks run in threads of
its own (``AppState.health_limiter``), so it answers while the API is saturated."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any, TypeVar

import anyio.to_thread
from fastapi import APIRouter
from fastapi.responses import JSONResponse
from sqlalchemy import text
from temporalio.api.enums.v1 import TaskQueueType
from temporalio.api.taskqueue.v1 import TaskQueue
from temporalio.api.workflowservice.v1 import DescribeTaskQueueRequest

from api.deps import StateDep
from api.state import AppState
from replicant import heartbeats

router = APIRouter(tags=["health"])
T = TypeVar("T")


def _database_ok(state: AppState) -> None:
    with state.engine.connect() as conn:
        conn.execute(text("SELECT 1"))


async def _in_thread(state: AppState, fn: Callable[[], T]) -> T:
    # Threads of health's own, with connections of their own: a saturated API still answers.
    return await anyio.to_thread.run_sync(fn, limiter=state.health_limiter)


async def _pollers(state: AppState, queue: str, kind: TaskQueueType.ValueType) -> int:
    client = await state.temporal()
    request = DescribeTaskQueueRequest(
        namespace=client.namespace,
        task_queue=TaskQueue(name=queue),
        task_queue_type=kind,
    )
    response = await client.workflow_service.describe_task_queue(request, timeout=None)
    return len(response.pollers)


@router.get("/health", include_in_schema=False)
async def health(state: StateDep) -> JSONResponse:
    missing: list[str] = []
    checks: dict[str, Any] = {}
    try:
        await _in_thread(state, lambda: _database_ok(state))
        checks["database"] = "ok"
    except Exception:
        checks["database"] = "unavailable"
        missing.append("database")
    try:
        client = await asyncio.wait_for(state.temporal(), timeout=5)
        await client.service_client.check_health()
        checks["temporal"] = "ok"
    except Exception:
        checks["temporal"] = "unavailable"
        missing.append("temporal")
    else:
        queues = {
            state.settings.orchestration_queue: TaskQueueType.TASK_QUEUE_TYPE_WORKFLOW,
            state.settings.build_queue: TaskQueueType.TASK_QUEUE_TYPE_ACTIVITY,
        }
        for sku in state.settings.hardware:
            queues[state.settings.task_queue(sku)] = TaskQueueType.TASK_QUEUE_TYPE_ACTIVITY
        # A queue is served when Temporal sees its pollers and a worker beat recently.
        alive = await _in_thread(state, lambda: heartbeats.live_queues(state.engine))
        workers: dict[str, int] = {}
        for queue, kind in queues.items():
            workers[queue] = await _pollers(state, queue, kind) if queue in alive else 0
            if workers[queue] == 0:
                missing.append(f"worker for {queue}")
        checks["workers"] = workers
    status = 503 if missing else 200
    return JSONResponse(
        {"status": "ok" if not missing else "unavailable", "missing": missing, **checks},
        status_code=status,
    )
