"""Programmatic starts through the Temporal client, queued cancels, a killed worker, and a
killed Temporal server."""

from __future__ import annotations

import asyncio
import os
import signal
from pathlib import Path

import httpx
from temporalio.client import Client

from api.startguard import START_RPC_TIMEOUT
from replicant.contracts import PredictionRequest
from replicant.devstack import wait_for_health
from replicant.ids import new_id
from replicant.settings import Settings
from replicant.temporal import connect
from replicant.timeutil import utcnow
from tests.conftest import HEARTBEAT_TIMEOUT, RETENTION, TERMINAL, LiveStack
from tests.observe import STARTED, is_queued, processes_in, run_activity
from tests.trainkit import client_for, data_uri, new_destination, versions_of, wait_training
from tests.waiting import async_wait_until, wait_until
from workflows.prediction import PredictionWorkflow


def version_of(api: httpx.Client, model: str) -> str:
    version: str = api.get(f"/v1/models/{model}").json()["latest_version"]["id"]
    return version


async def start(
    client: Client, settings: Settings, owner: str, model: str, version: str, **fields: object
) -> str:
    req = PredictionRequest(
        id=new_id(), owner=owner, model=model, version=version, created_at=utcnow(), **fields
    )
    await client.start_workflow(
        PredictionWorkflow.run,
        req,
        id=f"prediction-{req.id}",
        task_queue=settings.orchestration_queue,
    )
    return req.id


async def test_prediction_started_through_temporal_shows_up_in_the_api(
    live: LiveStack, api: httpx.Client
) -> None:
    client = await connect(live.settings)
    version = version_of(api, "replicate/hello-world")
    prediction_id = await start(
        client,
        live.settings,
        live.settings.default_account,
        "replicate/hello-world",
        version,
        input={"text": "from temporal"},
    )
    final = await asyncio.to_thread(live.wait_for, prediction_id)
    assert final["status"] == "succeeded"
    assert final["output"] == "hello from temporal"
    listed = api.get("/v1/predictions").json()["results"]
    assert prediction_id in [p["id"] for p in listed]
    # Findable in the Temporal UI by model, owner and status.
    query = (
        "ReplicantModel = 'replicate/hello-world' AND ReplicantStatus = 'succeeded' "
        f"AND ReplicantOwner = '{live.settings.default_account}'"
    )

    async def listed_in_ui() -> list[str]:
        return [w.id async for w in client.list_workflows(query)]

    found = await async_wait_until(
        listed_in_ui,
        lambda ids: f"prediction-{prediction_id}" in ids,
        what=f"prediction-{prediction_id} in the visibility query",
        timeout=10,
        interval=0.2,
    )
    assert f"prediction-{prediction_id}" in found


async def test_cancel_a_prediction_waiting_for_a_hardware_slot(
    live: LiveStack, api: httpx.Client
) -> None:
    client = await connect(live.settings)
    version = version_of(api, "replicant/sleep")
    owner = live.settings.default_account
    # gpu-t4 has one slot in the test stack: the second prediction waits in its queue.
    first = await start(
        client,
        live.settings,
        owner,
        "replicant/sleep",
        version,
        input={"seconds": 30},
        hardware="gpu-t4",
    )
    await asyncio.to_thread(live.wait_for, first, lambda p: p["status"] == "processing", 30)
    second = await start(
        client,
        live.settings,
        owner,
        "replicant/sleep",
        version,
        input={"seconds": 1},
        hardware="gpu-t4",
    )
    # Queued: its run activity waits on the gpu-t4 queue, taken by no worker.
    await async_wait_until(
        lambda: run_activity(client, second),
        is_queued,
        what=f"{second}'s run activity to wait on the gpu-t4 queue",
    )
    assert api.get(f"/v1/predictions/{second}").json()["status"] == "starting"
    assert api.post(f"/v1/predictions/{second}/cancel").status_code == 200
    queued = await asyncio.to_thread(live.wait_for, second)
    assert queued["status"] == "canceled"
    assert "started_at" not in queued
    api.post(f"/v1/predictions/{first}/cancel")
    assert (await asyncio.to_thread(live.wait_for, first))["status"] == "canceled"


async def test_worker_killed_mid_prediction_still_reaches_a_terminal_state(
    live: LiveStack, api: httpx.Client
) -> None:
    body = api.post("/v1/models/replicant/sleep/predictions", json={"input": {"seconds": 3}}).json()
    await asyncio.to_thread(live.wait_for, body["id"], lambda p: p["status"] == "processing", 30)
    # SIGKILL the worker and its model processes, as a lost machine would.
    live.stack.stop("worker", sig=signal.SIGKILL)
    # The run's heartbeat times out: Temporal schedules the run again (no worker takes it).
    temporal = await connect(live.settings)
    await async_wait_until(
        lambda: run_activity(temporal, body["id"]),
        lambda pending: pending is not None and pending.attempt > 1,
        what=f"{body['id']}'s run activity to time out and be scheduled again",
        timeout=HEARTBEAT_TIMEOUT + 30,
    )
    assert api.get(f"/v1/predictions/{body['id']}").json()["status"] == "processing"

    # /health says so once the dead worker's heartbeat is stale (seconds, not minutes).
    async def health() -> httpx.Response:
        return await asyncio.to_thread(httpx.get, f"{live.url}/health")

    health_response = await async_wait_until(
        health,
        lambda r: r.status_code == 503,
        what="/health to report the killed worker",
        timeout=20,
        interval=0.2,
    )
    assert health_response.status_code == 503
    assert "worker for replicant-hw-cpu" in health_response.json()["missing"]
    live.stack.start_worker()
    final = await asyncio.to_thread(live.wait_for, body["id"], timeout=90)
    assert final["status"] == "succeeded"
    assert final["output"].startswith("slept")


# A client that waits the create's wait and more, but not as long as the API's own start
# call may take (a wait counted from the start's answer answered after it).
WAITING_CLIENT_TIMEOUT = START_RPC_TIMEOUT.total_seconds()


async def executions(temporal: Client, prediction_id: str) -> int:
    """How many workflow executions Temporal has had under a prediction's workflow id."""
    query = f'WorkflowId = "prediction-{prediction_id}"'
    return len([w async for w in temporal.list_workflows(query)])


async def test_a_waiting_create_answers_starting_while_no_worker_takes_its_workflow(
    live: LiveStack, api: httpx.Client
) -> None:
    # No worker polls the hardware queue: the workflow's first task, which accepts the
    # create's update, waits until one does.
    live.stack.stop("worker")
    try:
        answer = await asyncio.to_thread(
            api.post,
            "/v1/models/replicate/hello-world/predictions",
            json={"input": {"text": "unhurried"}},
            headers={"Prefer": "wait=2"},
            timeout=WAITING_CLIENT_TIMEOUT,
        )
    finally:
        live.stack.start_worker()
    assert answer.status_code == 201, answer.text
    body = answer.json()
    # As Replicate answers a wait that ran out: the official clients poll on from here.
    assert body["status"] == "starting"
    final = await asyncio.to_thread(live.wait_for, body["id"], timeout=90)
    assert final["status"] == "succeeded"
    assert final["output"] == "hello unhurried"
    # Started once: the start the deadline cut short was settled, not repeated.
    temporal = await connect(live.settings)
    count = await async_wait_until(
        lambda: executions(temporal, body["id"]),
        what=f"{body['id']}'s workflow to be listed",
    )
    assert count == 1


async def test_cancel_while_the_model_boots(live: LiveStack, api: httpx.Client) -> None:
    from replicant.versions import create_version, ensure_model

    # A model of its own: a new version, so no process of it is warm yet.
    name = f"slowboot-{os.urandom(3).hex()}"
    model = ensure_model(live.engine, live.settings.default_account, name)
    version = create_version(
        live.settings, live.engine, model, Path(__file__).parent / "models" / "slowboot"
    )
    body = api.post(
        f"/v1/models/{live.settings.default_account}/{name}/predictions",
        json={"input": {"text": "never"}},
    ).json()
    # Booting: the run activity has started a coglet process for the version, in setup().
    temporal = await connect(live.settings)
    pending = await async_wait_until(
        lambda: run_activity(temporal, body["id"]),
        lambda pending: pending is not None and pending.state == STARTED,
        what=f"{body['id']}'s run activity to start",
    )
    assert pending is not None and pending.attempt == 1
    await asyncio.to_thread(
        wait_until,
        lambda: processes_in(Path(version.model_dir)),
        what="a coglet process booting slowboot",
    )
    assert api.get(f"/v1/predictions/{body['id']}").json()["status"] == "starting"
    assert api.post(f"/v1/predictions/{body['id']}/cancel").status_code == 200
    final = await asyncio.to_thread(live.wait_for, body["id"])
    assert final["status"] == "canceled"
    assert final.get("output") is None
    assert "started_at" not in final  # canceled before setup() ended


async def test_work_of_every_kind_finishes_when_temporal_is_killed_and_restarted(
    live: LiveStack,
) -> None:
    """The dev server SIGKILLed while predictions run and wait for a slot, a training waits,
    and a deployment's instance runs a prediction; a run ends while it is down, another
    outlives its heartbeat timeout. Restarted on its own database: every one ends truthfully,
    and the training's version is pushed."""
    token = live.new_account("restart")
    destination = new_destination(live, token, "restarted")
    with live.client(token) as api:
        username = api.get("/v1/account").json()["username"]
        deployment = api.post(
            "/v1/deployments",
            json={
                "name": "restarted",
                "model": "replicant/sleep",
                "version": version_of(api, "replicant/sleep"),
                "hardware": "cpu",
                "min_instances": 1,
                "max_instances": 1,
            },
        )
        assert deployment.status_code == 200, deployment.text
        path = f"/v1/deployments/{username}/restarted"
        await asyncio.to_thread(
            wait_until,
            lambda: api.get(path).json()["instances"],
            what="the deployment's instance to run",
        )

        def sleep(route: str, seconds: float) -> str:
            created = api.post(route, json={"input": {"seconds": seconds}})
            assert created.status_code == 201, created.text
            prediction_id: str = created.json()["id"]
            return prediction_id

        # A run that outlasts the outage below by far (started through Temporal, to give it a
        # longer timeout than the stack's), on gpu-t4's one slot.
        outlasting = await start(
            await connect(live.settings),
            live.settings,
            username,
            "replicant/sleep",
            version_of(api, "replicant/sleep"),
            input={"seconds": 12},
            hardware="gpu-t4",
            timeout=60,
            heartbeat_timeout=HEARTBEAT_TIMEOUT,
            retention=RETENTION,
        )
        # cpu has 2 slots: two predictions run, a third and the training wait for one.
        predictions = [sleep("/v1/models/replicant/sleep/predictions", s) for s in (5, 5, 2)]
        training = client_for(live, token).trainings.create(
            model="replicant/ngram",
            version=version_of(api, "replicant/ngram"),
            input={"text": data_uri("alpha beta gamma delta. " * 20)},
            destination=destination,
        )
        await asyncio.to_thread(
            live.wait_for, outlasting, lambda p: p["status"] == "processing", 60, token
        )

        def processing() -> list[str]:
            statuses = {p: api.get(f"/v1/predictions/{p}").json()["status"] for p in predictions}
            return [p for p in predictions if statuses[p] == "processing"]

        # Which two take cpu's slots is the queue's choice, not the order of the creates.
        running = await asyncio.to_thread(
            wait_until, processing, lambda ids: len(ids) == 2, what="cpu's two slots to be taken"
        )
        waiting = next(p for p in predictions if p not in running)
        deployed = sleep(f"{path}/predictions", 3)  # its instance is warm: it runs at once
        await asyncio.to_thread(
            live.wait_for, deployed, lambda p: p["status"] == "processing", 60, token
        )
        live.stack.stop("temporal", sig=signal.SIGKILL)
        try:
            # A cancel cannot reach a workflow now: 503 with Retry-After, and nothing recorded
            # (each still runs to the end below).
            for run in (f"/v1/predictions/{waiting}", f"/v1/trainings/{training.id}"):
                refused = api.post(f"{run}/cancel")
                assert refused.status_code == 503, refused.text
                assert refused.headers["Content-Type"] == "application/problem+json"
                assert refused.headers["Retry-After"].isdigit()
                assert api.get(run).json()["status"] not in TERMINAL
            # A run ends while Temporal is down: the worker records it, Temporal cannot hear of it.
            # By then the outlasting run has missed its heartbeat timeout: once Temporal is back,
            # its attempt is timed out and it runs again (its row never says `canceled`).
            await asyncio.to_thread(live.wait_for, running[0], timeout=90, token=token)
        finally:
            # Whatever failed above, the session's stack gets its Temporal back.
            live.stack.start_temporal()
        for prediction_id in (outlasting, *predictions, deployed):
            final = await asyncio.to_thread(live.wait_for, prediction_id, timeout=180, token=token)
            assert final["status"] == "succeeded", final
            # The retention sweep may have removed an early run's output (20 s) by now.
            assert final["data_removed"] or final["output"].startswith("slept"), final
            assert final.get("deployment") == (
                f"{username}/restarted" if prediction_id == deployed else None
            )
        await asyncio.to_thread(wait_training, training)
        assert training.status == "succeeded", (training.error, training.logs)
        owner_name, version = training.output["version"].split(":")
        assert owner_name == destination
        assert version in versions_of(live, token, destination)
        # Leave the shared stack as it was: no instance kept warm, every worker back.
        api.patch(path, json={"min_instances": 0}).raise_for_status()
    await asyncio.to_thread(wait_for_health, live.url)
