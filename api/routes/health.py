"""``GET /health``: ready only when the database, Temporal and every queue's worker are.

Never refused by admission (api/admission.py), and its database checks run in threads of
its own (``AppState.health_limiter``), so it answers while the API is saturated. Every check
has ``CHECK_TIMEOUT`` seconds (the database's and Temporal's side by side): a part that does
not answer by then is reported unavailable, so ``/health`` itself always answers."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from datetime import timedelta
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

log = logging.getLogger("replicant.api")
router = APIRouter(tags=["health"])
T = TypeVar("T")

# Seconds each part (the database; Temporal, then its workers) has to answer: a bound for a
# part that does not answer at all, well past a busy machine's slowest answer.
CHECK_TIMEOUT = 10.0


def _database_ok(state: AppState) -> None:
    with state.engine.connect() as conn:
        conn.execute(text("SELECT 1"))


async def _in_thread(state: AppState, fn: Callable[[], T]) -> T:
    # Threads of health's own, with connections of their own: a saturated API still answers.
    # A check that outlasts its timeout is left to finish on its own.
    return await anyio.to_thread.run_sync(fn, limiter=state.health_limiter, abandon_on_cancel=True)


async def _pollers(state: AppState, queue: str, kind: TaskQueueType.ValueType) -> int:
    client = await state.temporal()
    request = DescribeTaskQueueRequest(
        namespace=client.namespace,
        task_queue=TaskQueue(name=queue),
        task_queue_type=kind,
    )
    response = await client.workflow_service.describe_task_queue(
        request, timeout=timedelta(seconds=CHECK_TIMEOUT)
    )
    return len(response.pollers)


async def _database(state: AppState) -> str:
    try:
        async with asyncio.timeout(CHECK_TIMEOUT):
            await _in_thread(state, lambda: _database_ok(state))
        return "ok"
    except Exception:
        return "unavailable"


async def _workers(state: AppState) -> dict[str, int]:
    """Each queue's pollers, asked of Temporal all at once; 0 for a queue whose workers
    have not beaten lately (a killed worker's pollers stay listed for minutes)."""
    queues = {
        state.settings.orchestration_queue: TaskQueueType.TASK_QUEUE_TYPE_WORKFLOW,
        state.settings.build_queue: TaskQueueType.TASK_QUEUE_TYPE_ACTIVITY,
    }
    for sku in state.settings.hardware:
        queues[state.settings.task_queue(sku)] = TaskQueueType.TASK_QUEUE_TYPE_ACTIVITY
    alive = await _in_thread(state, lambda: heartbeats.live_queues(state.engine))

    async def pollers(queue: str, kind: TaskQueueType.ValueType) -> int:
        return await _pollers(state, queue, kind) if queue in alive else 0

    counts = await asyncio.gather(*(pollers(queue, kind) for queue, kind in queues.items()))
    return dict(zip(queues, counts, strict=True))


@router.get("/health", include_in_schema=False)
async def health(state: StateDep) -> JSONResponse:
    missing: list[str] = []
    checks: dict[str, Any] = {}
    database = asyncio.create_task(_database(state))  # meanwhile, ask Temporal
    try:
        async with asyncio.timeout(CHECK_TIMEOUT):
            client = await state.temporal()
            await client.service_client.check_health(timeout=timedelta(seconds=CHECK_TIMEOUT))
        checks["temporal"] = "ok"
    except Exception:
        checks["temporal"] = "unavailable"
        missing.append("temporal")
    else:
        try:
            async with asyncio.timeout(CHECK_TIMEOUT):
                checks["workers"] = await _workers(state)
        except Exception:
            checks["workers"] = "unavailable"
            missing.append("workers")
        else:
            missing += [f"worker for {q}" for q, c in checks["workers"].items() if c == 0]
    checks["database"] = await database
    if checks["database"] != "ok":
        missing.insert(0, "database")
    status = 503 if missing else 200
    if missing:
        log.warning("event=health_unavailable missing=%s", ",".join(missing))
    return JSONResponse(
        {"status": "ok" if not missing else "unavailable", "missing": missing, **checks},
        status_code=status,
    )
