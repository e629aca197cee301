"""A prediction's after-life needs no worker of its hardware, and a sweep removes the data
of predictions whose workflow was terminated.

A stack of its own: the orchestration worker (which serves gpu-t4 too) and a worker of the
cpu queue alone, which this module SIGKILLs once a run is over; a short retention and a
retention sweep every second.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from temporalio.api.enums.v1 import EventType

from replicant.db import make_engine
from replicant.devstack import Stack, wait_for_health
from replicant.temporal import connect
from tests.conftest import LiveStack, schemas_derived_once, stack_settings, suite_database
from tests.receiver import Receiver, running_receiver
from tests.test_webhooks import delivered_completed, verify_all
from tests.workflow_runs import run_histories

RETENTION = 10.0
HELLO = "replicate/hello-world"
CPU_WORKER = "worker-cpu"

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveStack]:
    data_dir = tmp_path_factory.mktemp("afterlife")
    with contextlib.ExitStack() as cleanup:
        database = cleanup.enter_context(suite_database())
        settings = stack_settings(
            data_dir, prediction_retention=RETENTION, retention_sweep_interval=1.0, **database
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
    # `Prefer: wait` is answered when the run ends, before the hand-over.
    assert created["status"] == "succeeded", created
    return created


async def wait_handed_over(live: LiveStack, prediction_id: str, timeout: float = 60) -> None:
    """Wait until the workflow's current run is its after-life on the orchestration queue."""
    client = await connect(live.settings)
    handle = client.get_workflow_handle(f"prediction-{prediction_id}")
    deadline = time.monotonic() + timeout
    while (queue := (await handle.describe()).task_queue) != live.settings.orchestration_queue:
        assert time.monotonic() < deadline, f"still on {queue} after {timeout}s"
        await asyncio.sleep(0.1)


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
    await wait_handed_over(stack, created["id"])
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
    first, after_life = await run_histories(client, f"prediction-{created['id']}")
    queues = [
        h.events[0].workflow_execution_started_event_attributes.task_queue.name
        for h in (first, after_life)
    ]
    assert queues == ["replicant-hw-cpu", stack.settings.orchestration_queue]
    assert first.events[-1].event_type == EventType.EVENT_TYPE_WORKFLOW_EXECUTION_CONTINUED_AS_NEW


async def test_sweep_removes_the_data_of_a_terminated_prediction(stack: LiveStack) -> None:
    await asyncio.to_thread(wait_for_health, stack.url)
    with stack.client() as api:
        created = await asyncio.to_thread(predict, api, {"input": {"text": "terminated"}})
    await wait_handed_over(stack, created["id"])
    client = await connect(stack.settings)
    # As from the Temporal UI: the workflow ends before its retention timer fires.
    await client.get_workflow_handle(f"prediction-{created['id']}").terminate("from the UI")
    with stack.client() as api:
        kept = api.get(f"/v1/predictions/{created['id']}").json()
    assert kept["data_removed"] is False and kept["output"] == "hello terminated"
    removed = await asyncio.to_thread(
        stack.wait_for, created["id"], lambda p: p["data_removed"], RETENTION + 60
    )
    assert removed["data_removed"] is True
    assert removed["output"] is None and removed["input"] == {}
    assert removed["status"] == "succeeded"
