"""What ``GET /health`` reports, checked in the background so that it answers at once.

From the first ``/health`` on, each part (the database; Temporal; the workers of every queue)
is checked by a loop of its own: again ``REFRESH`` seconds after each check ends while
``/health`` is asked (within ``IDLE`` seconds), every ``IDLE_REFRESH`` seconds otherwise, so
that a monitor's first probe after a quiet spell still finds a recent check. ``/health``
answers from the latest results at once. A part is unavailable once ``FAILURES`` checks in a
row have failed (an error, or no answer within ``CHECK_TIMEOUT`` seconds), or has never
succeeded: a part that is down (refused connections) is reported within a second or two,
one that stops answering within two ``CHECK_TIMEOUT``s, whatever the load, while a single
check that fails on a busy machine does not make the API look down to a load balancer (as a
probe's failure threshold). The first ``/health`` of the process waits for a first check of
each part (``CHECK_TIMEOUT`` at most)."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any, Protocol, TypeVar

import anyio
import anyio.to_thread
from sqlalchemy import text
from sqlalchemy.engine import Engine
from temporalio.api.enums.v1 import TaskQueueType
from temporalio.api.taskqueue.v1 import TaskQueue
from temporalio.api.workflowservice.v1 import DescribeTaskQueueRequest
from temporalio.client import Client

from replicant import heartbeats
from replicant.settings import Settings

log = logging.getLogger("replicant.api")
T = TypeVar("T")


class AppState(Protocol):
    """What the checks use of the API process's state (api/state.py's ``AppState``)."""

    settings: Settings
    engine: Engine

    @property
    def health_limiter(self) -> anyio.CapacityLimiter: ...

    async def temporal(self) -> Client: ...


# Seconds each check (the database; Temporal; its workers) has: a bound for a part that does
# not answer at all, well past a busy machine's slowest answer.
CHECK_TIMEOUT = 10.0
# Checks in a row that must fail before a part that had answered is reported unavailable.
FAILURES = 2
# Seconds between the end of a part's check and its next, while /health is asked.
REFRESH = 1.0
# Seconds after a /health during which the checks keep the pace of REFRESH; then they slow
# to IDLE_REFRESH, so that the first /health after a quiet spell finds a recent check.
IDLE = 60.0
IDLE_REFRESH = 5.0


async def _in_thread(state: AppState, fn: Callable[[], T]) -> T:
    # Threads of health's own, with connections of their own: a saturated API still answers.
    # A check that outlasts its timeout is left to finish on its own.
    return await anyio.to_thread.run_sync(fn, limiter=state.health_limiter, abandon_on_cancel=True)


async def _database(state: AppState) -> str:
    def select_one() -> None:
        with state.engine.connect() as conn:
            conn.execute(text("SELECT 1"))

    await _in_thread(state, select_one)
    return "ok"


async def _temporal(state: AppState) -> str:
    client = await state.temporal()
    await client.service_client.check_health(timeout=timedelta(seconds=CHECK_TIMEOUT))
    return "ok"


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


@dataclass
class Part:
    """One part's checks: the latest result that holds (None once ``FAILURES`` checks in a
    row failed, or before any succeeded), the failures in a row since, and when the check
    that is waiting for its answer began (None between checks)."""

    check: Callable[[AppState], Awaitable[Any]]
    value: Any = None
    failures: int = 0
    waiting: float | None = None
    checked: asyncio.Event = field(default_factory=asyncio.Event)  # set by the first check

    def record(self, value: Any) -> None:
        """A check's result (None: it failed)."""
        if value is not None:
            self.value, self.failures = value, 0
            return
        self.failures += 1
        if self.failures >= FAILURES:
            self.value = None

    def now(self) -> Any:
        """The latest result that holds, or None (unavailable); also None while the check
        after a failed one has waited longer than ``CHECK_TIMEOUT`` (it is failing too)."""
        waited = time.monotonic() - self.waiting if self.waiting is not None else 0.0
        if waited > CHECK_TIMEOUT and self.failures + 1 >= FAILURES:
            return None
        return self.value


class HealthWatch:
    """The background checks of one API process (made on the event loop)."""

    def __init__(self, state: AppState) -> None:
        self.state = state
        self.parts = {"database": Part(_database), "temporal": Part(_temporal)}
        self.parts["workers"] = Part(_workers)
        self.asked = 0.0
        self.loops: list[asyncio.Task[None]] = []

    async def report(self) -> tuple[int, dict[str, Any]]:
        """``/health``'s status and body, from the latest checks."""
        self.asked = time.monotonic()
        if not self.loops or any(loop.done() for loop in self.loops):
            self._start()
        firsts = [asyncio.create_task(part.checked.wait()) for part in self.parts.values()]
        _, pending = await asyncio.wait(firsts, timeout=CHECK_TIMEOUT)
        for waiter in pending:
            waiter.cancel()
        return self._compose()

    def stop(self) -> None:
        """Stop the checks (at shutdown)."""
        for loop in self.loops:
            loop.cancel()
        self.loops = []

    def _start(self) -> None:
        self.stop()
        loop = asyncio.get_running_loop()
        for name, part in self.parts.items():
            part.value, part.failures, part.checked = None, 0, asyncio.Event()
            self.loops.append(loop.create_task(self._watch(name, part)))

    async def _watch(self, name: str, part: Part) -> None:
        while True:
            began = part.waiting = time.monotonic()
            try:
                async with asyncio.timeout(CHECK_TIMEOUT):
                    value = await part.check(self.state)
            except Exception:
                value = None
            part.record(value)
            part.waiting = None
            part.checked.set()
            # The pace of the checks, not a wait for an event: REFRESH after this check ended
            # while /health is asked, else IDLE_REFRESH after it began.
            now = time.monotonic()
            asked = now - self.asked <= IDLE
            await asyncio.sleep(REFRESH if asked else max(0.0, began + IDLE_REFRESH - now))

    def _compose(self) -> tuple[int, dict[str, Any]]:
        missing: list[str] = []
        checks: dict[str, Any] = {}
        if self.parts["temporal"].now() is None:
            checks["temporal"] = "unavailable"
            missing.append("temporal")
        else:
            checks["temporal"] = "ok"
            workers = self.parts["workers"].now()
            if workers is None:
                checks["workers"] = "unavailable"
                missing.append("workers")
            else:
                checks["workers"] = workers
                missing += [f"worker for {q}" for q, c in workers.items() if c == 0]
        checks["database"] = "ok" if self.parts["database"].now() is not None else "unavailable"
        if checks["database"] != "ok":
            missing.insert(0, "database")
        if missing:
            log.warning("event=health_unavailable missing=%s", ",".join(missing))
        body = {"status": "ok" if not missing else "unavailable", "missing": missing, **checks}
        return (503 if missing else 200), body
