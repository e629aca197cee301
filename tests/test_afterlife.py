"""What follows a prediction's end needs no worker of its hardware: its workflow closes at
the end, a workflow of its own delivers the `completed` webhook, and the retention sweep
removes the data (after the delivery, whose body is the final prediction); a worker
stopped (SIGTERM) while it runs a prediction, of a hardware queue or of a deployment, leaves
the prediction to the next one.

A stack of its own: the orchestration worker (which serves gpu-t4 too) and a worker of the
cpu queue alone, which this module SIGKILLs once a run is over; a short retention, a
retention sweep every second, `completed` retries at most 2 s apart, a stopping worker's
grace, and room for runs longer than it.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
from collections.abc import Iterator
from datetime import datetime, timedelta
from typing import Any

import httpx
import pytest
from temporalio.api.enums.v1 import EventType
from temporalio.client import WorkflowExecutionStatus, WorkflowFailureError

from replicant.contracts import webhook_workflow_id
from replicant.db import make_engine
from replicant.devstack import Stack, wait_for_health
from replicant.temporal import connect
from tests.conftest import LiveStack, schemas_derived_once, stack_settings, suite_database
from tests.observe import failed_attempts
from tests.receiver import Receiver, refusing_receiver, running_receiver
from tests.test_deployment_instances import retire
from tests.test_deployments import get, poll, unique
from tests.test_webhooks import delivered_completed, verify_all
from tests.waiting import async_wait_until
from tests.workflow_runs import all_events
from workers.deployments import STOP_GRACE

RETENTION = 10.0
HELLO = "replicate/hello-world"
SLEEP = "replicant/sleep"
# How long a stopping worker lets its hardware queues' runs end.
WORKER_STOP_GRACE = STOP_GRACE * 2
# Longer than a stopping worker waits for running predictions (both graces).
LONG_RUN = STOP_GRACE * 4
# Well within the grace from when the worker is stopped, yet seen running before that.
SHORT_RUN = STOP_GRACE
CPU_WORKER = "worker-cpu"

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveStack]:
    data_dir = tmp_path_factory.mktemp("afterlife")
    with contextlib.ExitStack() as cleanup:
        database = cleanup.enter_context(suite_database())
        settings = stack_settings(
            data_dir,
            prediction_retention=RETENTION,
            retention_sweep_interval=1.0,
            webhook_retry_max_interval=2.0,
            prediction_timeout=LONG_RUN * 3,
            worker_stop_grace=WORKER_STOP_GRACE,
            **database,
        )
        stack = Stack(settings, ui=False, log_dir=data_dir / "logs")
        cleanup.callback(stack.stop)
        with schemas_derived_once():
            token = stack.prepare()
        stack.start_temporal()
        stack.start_worker("worker", "--hardware", "gpu-t4")
        stack.start_worker(CPU_WORKER, "--no-orchestration", "--hardware", "cpu")
        stack.start_api()
        wait_for_health(settings.resolved_public_url)
        engine = make_engine(settings.resolved_database_url)
        cleanup.callback(engine.dispose)
        live = LiveStack(stack, settings, settings.resolved_public_url, token, engine)
        # The model's environment is built on its first prediction: not within a test's wait.
        with live.client() as api:
            first = api.post(f"/v1/models/{HELLO}/predictions", json={"input": {"text": "1"}})
        assert live.wait_for(first.json()["id"], timeout=600)["status"] == "succeeded"
        yield live


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    with running_receiver() as r:
        yield r


def predict(api: httpx.Client, body: dict[str, Any]) -> dict[str, Any]:
    response = api.post(f"/v1/models/{HELLO}/predictions", json=body, headers={"Prefer": "wait"})
    assert response.status_code == 201, response.text
    created: dict[str, Any] = response.json()
    # `Prefer: wait` is answered when the run ends, before the workflow closes.
    assert created["status"] == "succeeded", created
    return created


async def wait_closed(live: LiveStack, prediction_id: str) -> WorkflowExecutionStatus | None:
    """Wait until the prediction's workflow has closed (its close event); its status then."""
    client = await connect(live.settings)
    handle = client.get_workflow_handle(f"prediction-{prediction_id}")
    with contextlib.suppress(WorkflowFailureError):
        await handle.result(follow_runs=False)
    return (await handle.describe()).status


async def test_after_life_goes_on_with_the_hardware_worker_killed(
    stack: LiveStack, receiver: Receiver
) -> None:
    # The receiver fails the first attempts: the retries come after the worker is gone.
    receiver.answers = [(500, 0.0), (500, 0.0), (503, 0.0)]
    with stack.client() as api:
        secret = api.get("/v1/webhooks/default/secret").json()["key"]
        created = await asyncio.to_thread(
            predict,
            api,
            {
                "input": {"text": "after"},
                "webhook": receiver.url,
                "webhook_events_filter": ["completed"],
            },
        )
    # The prediction's workflow closed at its end; its webhook is delivered by another.
    assert await wait_closed(stack, created["id"]) == WorkflowExecutionStatus.COMPLETED
    stack.stack.stop(CPU_WORKER, sig=signal.SIGKILL)
    try:
        deliveries = await asyncio.to_thread(receiver.wait, delivered_completed, created["id"], 60)
        assert [d.answered for d in deliveries] == [500, 500, 503, 200]
        verify_all(secret, deliveries)
        assert deliveries[-1].json()["output"] == "hello after"
        removed = await asyncio.to_thread(
            stack.wait_for, created["id"], lambda p: p["data_removed"], RETENTION + 60
        )
        assert removed["data_removed"] is True
        assert removed["output"] is None and removed["input"] == {}
        assert removed["status"] == "succeeded"
    finally:
        stack.stack.start_worker(CPU_WORKER, "--no-orchestration", "--hardware", "cpu")
    client = await connect(stack.settings)
    delivery = await client.get_workflow_handle(webhook_workflow_id(created["id"])).describe()
    assert delivery.task_queue == stack.settings.orchestration_queue


async def test_the_sweep_removes_the_data_once_retention_is_over(stack: LiveStack) -> None:
    """A prediction's workflow closes at its end: the retention sweep removes the data, also
    of a prediction whose workflow was terminated (as from the Temporal UI)."""
    await asyncio.to_thread(wait_for_health, stack.url)
    with stack.client() as api:
        created = await asyncio.to_thread(predict, api, {"input": {"text": "swept"}})
        kept = api.get(f"/v1/predictions/{created['id']}").json()
    assert kept["data_removed"] is False and kept["output"] == "hello swept"
    assert await wait_closed(stack, created["id"]) == WorkflowExecutionStatus.COMPLETED
    removed = await asyncio.to_thread(
        stack.wait_for, created["id"], lambda p: p["data_removed"], RETENTION + 60
    )
    assert removed["data_removed"] is True
    assert removed["output"] is None and removed["input"] == {}
    assert removed["status"] == "succeeded"


async def test_a_completed_webhook_delivered_after_retention_carries_the_final_prediction(
    stack: LiveStack,
) -> None:
    temporal = await connect(stack.settings)
    with refusing_receiver() as (receiver, come_back), stack.client() as api:
        body = {"webhook": receiver.url, "webhook_events_filter": ["completed"]}
        created = await asyncio.to_thread(predict, api, {"input": {"text": "late"}, **body})
        # Down until retention is over, and the sweep's line (one interval more) too.
        overdue = datetime.fromisoformat(created["completed_at"]) + timedelta(seconds=RETENTION + 2)
        await async_wait_until(
            lambda: failed_attempts(temporal, created["id"]),
            lambda failed: any(when > overdue for when, _ in failed),
            what=f"a refused delivery of {created['id']} past its retention",
            timeout=RETENTION + 60,
            interval=0.5,
        )
        kept = api.get(f"/v1/predictions/{created['id']}").json()
        assert kept["data_removed"] is False and kept["output"] == "hello late"
        come_back()
        [delivery] = await asyncio.to_thread(receiver.wait, delivered_completed, created["id"])
        verify_all(api.get("/v1/webhooks/default/secret").json()["key"], [delivery])
        final = delivery.json()
        assert final["status"] == "succeeded" and final["output"] == "hello late"
        assert final["input"] == {"text": "late"} and final["data_removed"] is False
    # Then, the delivery over (its workflow closed), the sweep removes the data.
    await temporal.get_workflow_handle(webhook_workflow_id(created["id"])).result()
    removed = await asyncio.to_thread(
        stack.wait_for, created["id"], lambda p: p["data_removed"], 60
    )
    assert removed["output"] is None and removed["input"] == {}


def _stopped_mid_run(stack: LiveStack, prediction_id: str, seconds: float) -> None:
    """Stop the cpu worker as an orchestrator would (SIGTERM) while the sleep prediction runs,
    start another; the prediction still sleeps its ``seconds`` and succeeds."""
    # The sleep model's environment may be built on this first run: not within a short wait.
    running = stack.wait_for(prediction_id, lambda p: p["status"] != "starting", 600)
    assert running["status"] == "processing", running
    stack.stack.stop(CPU_WORKER, sig=signal.SIGTERM)
    stack.stack.start_worker(CPU_WORKER, "--no-orchestration", "--hardware", "cpu")
    final = stack.wait_for(prediction_id, timeout=180)
    assert final["status"] == "succeeded", final
    assert final["output"] == f"slept for {seconds:g} seconds"


async def _last_run_attempt(stack: LiveStack, prediction_id: str) -> tuple[int, str]:
    """The attempt of the run activity that ran last (history records the last one only), and
    why the one before it ended."""
    client = await connect(stack.settings)
    # Its row may say succeeded before the history records the attempt: wait for the close.
    await asyncio.wait_for(client.get_workflow_handle(f"prediction-{prediction_id}").result(), 60)
    events = await all_events(client, f"prediction-{prediction_id}")
    runs = {
        e.event_id
        for e in events
        if e.event_type == EventType.EVENT_TYPE_ACTIVITY_TASK_SCHEDULED
        and e.activity_task_scheduled_event_attributes.activity_type.name == "run_prediction"
    }
    [started] = [
        e.activity_task_started_event_attributes
        for e in events
        if e.event_type == EventType.EVENT_TYPE_ACTIVITY_TASK_STARTED
        and e.activity_task_started_event_attributes.scheduled_event_id in runs
    ]
    return started.attempt, started.last_failure.message


async def test_a_run_within_the_grace_of_a_worker_stopped_gracefully_ends_in_its_attempt(
    stack: LiveStack,
) -> None:
    with stack.client() as api:
        created = api.post(
            f"/v1/models/{SLEEP}/predictions", json={"input": {"seconds": SHORT_RUN}}
        )
    assert created.status_code == 201, created.text
    prediction_id = created.json()["id"]
    await asyncio.to_thread(_stopped_mid_run, stack, prediction_id, SHORT_RUN)
    # The stopping worker waited for it, its model process still up: no second attempt.
    assert await _last_run_attempt(stack, prediction_id) == (1, "")


async def test_a_run_on_a_worker_stopped_gracefully_is_run_by_the_next_attempt(
    stack: LiveStack,
) -> None:
    with stack.client() as api:
        created = api.post(f"/v1/models/{SLEEP}/predictions", json={"input": {"seconds": LONG_RUN}})
    assert created.status_code == 201, created.text
    prediction_id = created.json()["id"]
    await asyncio.to_thread(_stopped_mid_run, stack, prediction_id, LONG_RUN)
    # Past the grace, Temporal's worker ends the attempt; the next attempt runs it.
    assert await _last_run_attempt(stack, prediction_id) == (
        2,
        "Worker is shutting down and this activity did not complete in time",
    )


async def test_a_deployment_run_on_a_worker_stopped_gracefully_is_run_by_the_next_attempt(
    stack: LiveStack,
) -> None:
    with stack.client() as api:
        owner = api.get("/v1/account").json()["username"]
        name = unique("stopped")
        version = api.get(f"/v1/models/{SLEEP}").json()["latest_version"]["id"]
        deployment = {"name": name, "model": SLEEP, "version": version, "hardware": "cpu"}
        created = api.post(
            "/v1/deployments", json={**deployment, "min_instances": 1, "max_instances": 1}
        )
        assert created.status_code == 200, created.text
        try:
            poll(lambda: get(api, owner, name), lambda d: d["instances"] == 1, 600)
            started = api.post(
                f"/v1/deployments/{owner}/{name}/predictions", json={"input": {"seconds": LONG_RUN}}
            )
            assert started.status_code == 201, started.text
            prediction_id = started.json()["id"]
            await asyncio.to_thread(_stopped_mid_run, stack, prediction_id, LONG_RUN)
            # The stopping host ends the attempt without a terminal state, then the model
            # process; the next attempt runs on the next worker's instance.
            attempt = await _last_run_attempt(stack, prediction_id)
            assert attempt == (2, "the worker running it stopped")
        finally:
            retire(api, owner, name)
