"""Fast runs in their workflow's own task (``local_run_seconds``, workflows/steps.py
``start_run``): a version whose last runs were fast runs its next predictions as local
activities, which share the hardware's slots with the runs that came as activity tasks, can
be canceled while they hang, survive a killed worker, and replay.
"""

from __future__ import annotations

import asyncio
import os
import signal
from collections.abc import Iterator
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
from temporalio.api.enums.v1 import EventType
from temporalio.api.history.v1 import HistoryEvent

from replicant.contracts import ActivityName
from replicant.temporal import connect
from replicant.timeutil import as_utc
from replicant.versions import create_version, ensure_model
from tests.conftest import LiveStack, own_stack
from tests.test_replay import closed_history, patch_markers, replayer, save
from tests.workflow_runs import all_events

# The module's own stack (``fast``): end to end.
pytestmark = pytest.mark.e2e

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"
SLOTS = 2  # the cpu hardware's slots on this stack
RUN_TIMEOUT = 60  # seconds a run may take here
STOP_GRACE = 4  # seconds a worker stopped gracefully gives its runs
CLIENTS = 64


@pytest.fixture(scope="module")
def fast(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveStack]:
    """A stack whose fast versions run in their workflow's task (the default of `make dev`);
    the suite's other stacks run every prediction as an activity."""
    with own_stack(
        tmp_path_factory,
        "localruns",
        local_run_seconds=1.0,
        hardware={"cpu": SLOTS},
        prediction_timeout=RUN_TIMEOUT,
        worker_stop_grace=STOP_GRACE,
    ) as stack:
        yield stack


def sleep_model(live: LiveStack) -> str:
    """A new sleep model on the cpu hardware (a version no earlier test ran)."""
    name = f"sleep-{os.urandom(3).hex()}"
    model = ensure_model(live.engine, "replicant", name, hardware="cpu")
    create_version(live.settings, live.engine, model, EXAMPLES / "sleep")
    return f"replicant/{name}"


def create(api: httpx.Client, model: str, seconds: float, **headers: str) -> dict[str, Any]:
    response = api.post(
        f"/v1/models/{model}/predictions", json={"input": {"seconds": seconds}}, headers=headers
    )
    assert response.status_code == 201, response.text
    body: dict[str, Any] = response.json()
    return body


def made_fast(api: httpx.Client, model: str) -> None:
    """Three fast runs, answered by the API: the version counts as fast from now on."""
    for _ in range(3):
        assert create(api, model, 0, Prefer="wait")["status"] == "succeeded"


def ran_locally(events: list[HistoryEvent]) -> bool:
    """Whether the run was a local activity (a marker) rather than an activity task."""
    scheduled = [
        e.activity_task_scheduled_event_attributes.activity_type.name
        for e in events
        if e.event_type == EventType.EVENT_TYPE_ACTIVITY_TASK_SCHEDULED
    ]
    markers = [e for e in events if e.event_type == EventType.EVENT_TYPE_MARKER_RECORDED]
    if ActivityName.RUN_PREDICTION in scheduled:
        return False
    assert markers, "the run left neither an activity task nor a local activity's marker"
    return True


async def events_of(live: LiveStack, prediction_id: str) -> list[HistoryEvent]:
    return await all_events(await connect(live.settings), f"prediction-{prediction_id}")


def test_a_fast_version_runs_in_its_workflows_task_and_the_history_replays(
    fast: LiveStack,
) -> None:
    model = sleep_model(fast)
    with fast.client() as api:
        first = create(api, model, 0, Prefer="wait")
        made_fast(api, model)
        local = create(api, model, 0, Prefer="wait")
        # With a deadline the run goes through the hardware queue (a timer beside it).
        timed = create(api, model, 0, Prefer="wait", **{"Cancel-After": "60s"})
    assert [first["status"], local["status"], timed["status"]] == ["succeeded"] * 3
    assert local["output"] == "slept for 0 seconds"
    assert not ran_locally(asyncio.run(events_of(fast, first["id"])))
    assert ran_locally(asyncio.run(events_of(fast, local["id"])))
    assert not ran_locally(asyncio.run(events_of(fast, timed["id"])))

    async def replay() -> None:
        history = await closed_history(await connect(fast.settings), f"prediction-{local['id']}")
        save("prediction-local-run", history)
        await replayer().replay_workflow(history)
        assert patch_markers(history) == []

    asyncio.run(replay())


def test_local_runs_and_activity_runs_share_the_slots_under_64_clients(fast: LiveStack) -> None:
    """64 clients at once, most of their runs local, some (with a deadline) activity tasks:
    all succeed, and never more run at once than the hardware has slots."""
    model = sleep_model(fast)
    with fast.client() as api:
        made_fast(api, model)

    async def burst() -> list[dict[str, Any]]:
        headers = {"Authorization": f"Bearer {fast.token}", "Prefer": "wait"}
        limits = httpx.Limits(max_connections=CLIENTS)
        async with httpx.AsyncClient(
            base_url=fast.url, headers=headers, timeout=120, limits=limits
        ) as http:

            async def one(n: int) -> dict[str, Any]:
                extra = {"Cancel-After": "300s"} if n % 8 == 0 else {}
                response = await http.post(
                    f"/v1/models/{model}/predictions",
                    json={"input": {"seconds": 0.3}},
                    headers=extra,
                )
                assert response.status_code == 201, response.text
                body: dict[str, Any] = response.json()
                return body

            return await asyncio.gather(*(one(n) for n in range(CLIENTS)))

    answered = asyncio.run(burst())
    # A wait may run out on a busy machine: each prediction is followed to its end.
    ended = [fast.wait_for(p["id"], timeout=300) for p in answered]
    assert {p["status"] for p in ended} == {"succeeded"}
    # From the model's start for as long as it ran (a slot is free again before the run's
    # end is written, so `completed_at` may pass the next run's start).
    spans = [(_at(p["started_at"]), _at(p["started_at"]) + _ran(p)) for p in ended]
    assert _most_at_once(spans) <= SLOTS
    histories = [asyncio.run(events_of(fast, p["id"])) for p in ended]
    kinds = [ran_locally(events) for events in histories]
    # Each run was made once: no workflow task failed and lost a local run's result.
    failed = EventType.EVENT_TYPE_WORKFLOW_TASK_FAILED
    assert not [p["id"] for p, h in zip(ended, histories, strict=True) if _has(h, failed)]
    assert kinds.count(False) >= CLIENTS // 8  # the deadlines' runs, at least
    assert kinds.count(True) > 0


def test_a_second_waiter_on_a_local_run_does_not_make_it_run_twice(fast: LiveStack) -> None:
    """A retry with the create's Idempotency-Key waits on the running prediction (an update
    of its workflow, sent while the run holds the workflow's task open): the run is made
    once and both answers show its end."""
    model = sleep_model(fast)
    key = {"Idempotency-Key": os.urandom(8).hex()}
    with fast.client() as api:
        made_fast(api, model)
        first = create(api, model, 0.8, **key)
        fast.wait_for(first["id"], lambda p: p["status"] == "processing", timeout=60)
        again = create(api, model, 0.8, Prefer="wait", **key)
    assert again["id"] == first["id"]
    assert again["status"] == "succeeded"
    events = asyncio.run(events_of(fast, first["id"]))
    assert ran_locally(events)
    assert not _has(events, EventType.EVENT_TYPE_WORKFLOW_TASK_FAILED)
    markers = [e for e in events if e.event_type == EventType.EVENT_TYPE_MARKER_RECORDED]
    assert len(markers) == 1


def processing_local_run(live: LiveStack, seconds: float) -> tuple[str, dict[str, Any]]:
    """A new fast version (its model's name) and a run of it of ``seconds``, processing."""
    model = sleep_model(live)
    with live.client() as api:
        made_fast(api, model)
        body = create(api, model, seconds)
    live.wait_for(body["id"], lambda p: p["status"] == "processing", timeout=60)
    return model, body


def test_a_local_run_that_hangs_is_canceled(fast: LiveStack) -> None:
    model, hanging = processing_local_run(fast, 600)
    with fast.client() as api:
        assert api.post(f"/v1/predictions/{hanging['id']}/cancel").status_code == 200
        # The cancel reaches the run at its workflow task's next heartbeat.
        ended = fast.wait_for(hanging["id"], timeout=120)
        assert ended["status"] == "canceled"
        assert ran_locally(asyncio.run(events_of(fast, hanging["id"])))
        # The version is slow now (a run seen processing for long, then canceled).
        after = create(api, model, 0, Prefer="wait")
    assert after["status"] == "succeeded"
    assert not ran_locally(asyncio.run(events_of(fast, after["id"])))


def test_a_local_run_whose_worker_is_killed_runs_again_on_the_next(fast: LiveStack) -> None:
    _, body = processing_local_run(fast, 5)
    # SIGKILL the worker and its model processes, as a lost machine would.
    fast.stack.stop("worker", sig=signal.SIGKILL)
    fast.stack.start_worker()
    # The dead worker's workflow task times out; the new worker runs the run again.
    final = fast.wait_for(body["id"], timeout=180)
    assert final["status"] == "succeeded"
    assert final["output"] == "slept for 5 seconds"
    assert ran_locally(asyncio.run(events_of(fast, body["id"])))


def _at(stamp: str) -> datetime:
    return as_utc(datetime.fromisoformat(stamp))


def _has(events: list[HistoryEvent], kind: EventType.ValueType) -> bool:
    return any(e.event_type == kind for e in events)


def _ran(prediction: dict[str, Any]) -> timedelta:
    return timedelta(seconds=prediction["metrics"]["predict_time"])


def _most_at_once(spans: list[tuple[datetime, datetime]]) -> int:
    """The most spans that overlap at any moment."""
    edges = sorted([(start, 1) for start, _ in spans] + [(end, -1) for _, end in spans])
    running = most = 0
    for _, step in edges:
        running += step
        most = max(most, running)
    return most


@pytest.mark.parametrize("seconds", [2, 12])
def test_a_local_run_on_a_worker_stopped_gracefully_succeeds(fast: LiveStack, seconds: int) -> None:
    """SIGTERM, as an orchestrator's rolling restart sends: a run that ends within the
    worker's stop grace (STOP_GRACE) ends in it, a longer one is made again by the next
    worker; neither ends canceled or failed for the stop."""
    _, body = processing_local_run(fast, seconds)
    fast.stack.stop("worker", sig=signal.SIGTERM)
    fast.stack.start_worker()
    final = fast.wait_for(body["id"], timeout=240)
    assert final["status"] == "succeeded", final
    assert final["output"] == f"slept for {seconds} seconds"
