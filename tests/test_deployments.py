"""Deployments on the real stack: releases, privacy, delete rules, and instances that the
deployment's controller keeps warm, scales with the queue and drains without cancelling."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
import replicate
from sqlalchemy import delete as sql_delete
from sqlmodel import Session, col, select

from replicant.tables import Deployment, DeploymentInstance, DeploymentRelease
from replicant.temporal import connect
from replicant.timeutil import as_utc, utcnow
from replicant.versions import create_version, ensure_model
from tests.conftest import DEPLOYMENT_DELETE_IDLE, DEPLOYMENT_IDLE, LiveStack
from tests.waiting import wait_until
from workflows.deployment import DeploymentWorkflow

HELLO = "replicate/hello-world"
SLEEP = "replicant/sleep"
EXAMPLES = Path(__file__).resolve().parent.parent / "examples"


def latest_version(api: httpx.Client, model: str) -> str:
    version: str = api.get(f"/v1/models/{model}").json()["latest_version"]["id"]
    return version


def unique(prefix: str) -> str:
    return f"{prefix}-{os.urandom(3).hex()}"


def poll(
    fetch: Callable[[], dict[str, Any]], until: Callable[[dict[str, Any]], bool], timeout: float
) -> dict[str, Any]:
    """Fetch until ``until`` holds and return the body; fail when it never does."""
    return wait_until(
        fetch, until, what="the deployment to reach the awaited state", timeout=timeout
    )


def deployment_row(live: LiveStack, deployment: dict[str, Any]) -> Deployment:
    with Session(live.engine) as session:
        return session.exec(
            select(Deployment).where(
                Deployment.owner == deployment["owner"], Deployment.name == deployment["name"]
            )
        ).one()


def controller_checked_since(
    live: LiveStack, deployment: dict[str, Any], instant: datetime
) -> bool:
    """Whether the deployment's controller has observed the deployment after ``instant`` (each
    observation is a local activity: a marker in the workflow's history)."""
    row = deployment_row(live, deployment)
    workflow = f"deployment-{row.owner}/{row.name}-{row.id}"

    async def markers() -> list[datetime]:
        temporal = await connect(live.settings)
        history = await temporal.get_workflow_handle(workflow).fetch_history()
        return [
            e.event_time.ToDatetime(tzinfo=UTC)
            for e in history.events
            if e.HasField("marker_recorded_event_attributes")
        ]

    return any(when > instant for when in asyncio.run(markers()))


@pytest.fixture
def owner(live: LiveStack) -> Iterator[tuple[str, httpx.Client]]:
    """A fresh account (its username and an API client) so deployments never collide."""
    token = live.new_account("deployer")
    with live.client(token) as client:
        username = client.get("/v1/account").json()["username"]
        yield username, client


def create(client: httpx.Client, model: str, version: str, **config: Any) -> dict[str, Any]:
    body = {
        "name": unique("dep"),
        "model": model,
        "version": version,
        "hardware": "cpu",
        "min_instances": 0,
        "max_instances": 1,
    }
    body.update(config)
    response = client.post("/v1/deployments", json=body)
    assert response.status_code == 200, response.text
    created: dict[str, Any] = response.json()
    return created


def get(client: httpx.Client, owner: str, name: str) -> dict[str, Any]:
    response = client.get(f"/v1/deployments/{owner}/{name}")
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    return body


def instance_rows(live: LiveStack, deployment: dict[str, Any]) -> list[DeploymentInstance]:
    row = deployment_row(live, deployment)
    with Session(live.engine) as session:
        return list(
            session.exec(
                select(DeploymentInstance).where(DeploymentInstance.deployment_id == row.id)
            ).all()
        )


def test_create_get_list_and_update_make_new_releases(
    live: LiveStack, owner: tuple[str, httpx.Client]
) -> None:
    username, client = owner
    version = latest_version(client, HELLO)
    created = create(client, HELLO, version, min_instances=0, max_instances=2)
    assert created["owner"] == username
    release = created["current_release"]
    assert release["number"] == 1
    assert release["model"] == HELLO
    assert release["version"] == version
    assert release["configuration"] == {"hardware": "cpu", "min_instances": 0, "max_instances": 2}
    assert release["created_by"]["username"] == username
    assert release["created_by"]["type"] == "user"

    official = replicate.Client(api_token=client.headers["Authorization"][7:], base_url=live.url)
    dep = official.deployments.get(f"{username}/{created['name']}")
    assert dep.current_release is not None and dep.current_release.number == 1

    updated = official.deployments.update(username, created["name"], max_instances=3)
    assert updated.current_release is not None
    assert updated.current_release.number == 2
    assert updated.current_release.configuration.max_instances == 3
    assert updated.current_release.configuration.min_instances == 0

    patched = client.patch(
        f"/v1/deployments/{username}/{created['name']}", json={"hardware": "gpu-t4"}
    ).json()
    assert patched["current_release"]["number"] == 3
    assert patched["current_release"]["configuration"]["hardware"] == "gpu-t4"
    # The same values again change nothing: no new release.
    same = client.patch(
        f"/v1/deployments/{username}/{created['name']}", json={"hardware": "gpu-t4"}
    ).json()
    assert same["current_release"]["number"] == 3
    assert get(client, username, created["name"])["current_release"]["number"] == 3

    second = official.deployments.create(
        name=unique("dep"),
        model=HELLO,
        version=version,
        hardware="cpu",
        min_instances=0,
        max_instances=1,
    )
    listed = [d.name for d in official.deployments.list().results]
    assert listed == [second.name, created["name"]]


@pytest.mark.parametrize(
    ("config", "field"),
    [
        ({"min_instances": 6}, "min_instances"),
        ({"max_instances": 21}, "max_instances"),
        ({"min_instances": -1}, "min_instances"),
        ({"min_instances": 3, "max_instances": 2}, "min_instances"),
        ({"hardware": "gpu-h9000"}, "hardware"),
        ({"name": "Not A Name"}, "name"),
    ],
)
def test_create_refuses_out_of_bounds_configuration(
    owner: tuple[str, httpx.Client], config: dict[str, Any], field: str
) -> None:
    _, client = owner
    body = {
        "name": unique("dep"),
        "model": HELLO,
        "version": latest_version(client, HELLO),
        "hardware": "cpu",
        "min_instances": 0,
        "max_instances": 1,
        **config,
    }
    response = client.post("/v1/deployments", json=body)
    assert response.status_code == 422, response.text
    assert response.headers["content-type"].startswith("application/problem+json")
    assert field in [f["field"] for f in response.json()["invalid_fields"]]


def test_update_refuses_min_above_max(owner: tuple[str, httpx.Client]) -> None:
    username, client = owner
    created = create(client, HELLO, latest_version(client, HELLO), max_instances=2)
    response = client.patch(
        f"/v1/deployments/{username}/{created['name']}", json={"min_instances": 3}
    )
    assert response.status_code == 422
    assert response.json()["invalid_fields"][0]["field"] == "min_instances"
    assert get(client, username, created["name"])["current_release"]["number"] == 1


def test_deployments_are_private_to_their_owner(
    live: LiveStack, owner: tuple[str, httpx.Client]
) -> None:
    username, client = owner
    created = create(client, HELLO, latest_version(client, HELLO))
    path = f"/v1/deployments/{username}/{created['name']}"
    with live.client(live.new_account("stranger")) as stranger:
        assert stranger.get(path).status_code == 404
        assert stranger.patch(path, json={"max_instances": 2}).status_code == 404
        assert stranger.delete(path).status_code == 404
        response = stranger.post(f"{path}/predictions", json={"input": {"text": "x"}})
        assert response.status_code == 404
        assert response.json()["detail"] == f"Deployment {username}/{created['name']} not found"
        assert created["name"] not in [
            d["name"] for d in stranger.get("/v1/deployments").json()["results"]
        ]
    # The owner's view is unchanged by all that.
    assert get(client, username, created["name"])["current_release"]["number"] == 1


def test_predictions_sync_and_async_through_the_official_client(
    live: LiveStack, owner: tuple[str, httpx.Client]
) -> None:
    username, client = owner
    created = create(client, SLEEP, latest_version(client, SLEEP))
    official = replicate.Client(api_token=client.headers["Authorization"][7:], base_url=live.url)
    deployment = official.deployments.get(f"{username}/{created['name']}")

    sync = deployment.predictions.create(input={"seconds": 0}, wait=True)
    assert sync.status == "succeeded"
    assert sync.output == "slept for 0 seconds"

    # Long enough that the create answers before it is done, however busy the host: queued,
    # or already running on the instance the sync prediction left warm.
    queued = official.deployments.predictions.create(
        f"{username}/{created['name']}", input={"seconds": 2}
    )
    assert queued.status in ("starting", "processing")
    queued.wait()
    assert queued.status == "succeeded"
    assert queued.output == "slept for 2 seconds"

    raw = client.get(f"/v1/predictions/{queued.id}").json()
    assert raw["deployment"] == f"{username}/{created['name']}"
    assert raw["model"] == SLEEP


def test_min_instances_keeps_a_warm_instance_the_first_prediction_uses(
    live: LiveStack, owner: tuple[str, httpx.Client]
) -> None:
    username, client = owner
    created = create(client, HELLO, latest_version(client, HELLO), min_instances=1)
    name = created["name"]
    # Before any prediction, the controller has booted one instance.
    ready = poll(lambda: get(client, username, name), lambda d: d["instances"] == 1, 60)
    assert ready["instances"] == 1
    assert ready["queue_depth"] == 0
    [before] = instance_rows(live, created)
    assert before.status == "ready" and before.pid is not None and before.ready_at is not None

    response = client.post(
        f"/v1/deployments/{username}/{name}/predictions",
        json={"input": {"text": "warm"}},
        headers={"Prefer": "wait"},
    )
    assert response.status_code == 201, response.text
    prediction = response.json()
    assert prediction["status"] == "succeeded"
    assert prediction["output"] == "hello warm"
    assert prediction["deployment"] == f"{username}/{name}"
    # It ran on the process that was already up: no new instance, no new model process,
    # and the instance was ready before the prediction was created.
    [after] = instance_rows(live, created)
    assert (after.id, after.pid, after.ready_at) == (before.id, before.pid, before.ready_at)
    assert after.ready_at is not None
    created_at = prediction["created_at"].replace("Z", "+00:00")
    assert after.ready_at < datetime.fromisoformat(created_at)
    # The model process is alive and is a coglet serving this version.
    cmdline = Path(f"/proc/{after.pid}/cmdline").read_bytes().split(b"\0")
    assert any(b"cog.server.http" in part for part in cmdline)
    # min_instances keeps it: the controller checks it after the idle period and it stays.
    idle_over = datetime.now(UTC) + timedelta(seconds=DEPLOYMENT_IDLE)
    wait_until(
        lambda: controller_checked_since(live, created, idle_over),
        what="the controller to check the deployment after the idle period",
        timeout=DEPLOYMENT_IDLE + 30,
        interval=0.5,
    )
    assert get(client, username, name)["instances"] == 1
    assert [r.pid for r in instance_rows(live, created)] == [before.pid]


def test_scales_to_max_under_a_burst_and_back_to_zero_when_idle(
    live: LiveStack, owner: tuple[str, httpx.Client]
) -> None:
    username, client = owner
    created = create(client, SLEEP, latest_version(client, SLEEP), min_instances=0, max_instances=2)
    name = created["name"]
    assert get(client, username, name)["instances"] == 0
    ids = []
    for _ in range(5):
        response = client.post(
            f"/v1/deployments/{username}/{name}/predictions", json={"input": {"seconds": 1.5}}
        )
        assert response.status_code == 201, response.text
        ids.append(response.json()["id"])
    seen: list[int] = []

    def watch() -> dict[str, Any]:
        body = get(client, username, name)
        seen.append(body["instances"] + body["instances_booting"])
        return body

    poll(watch, lambda d: d["instances"] == 2, 60)
    assert max(seen) == 2
    for prediction_id in ids:
        assert live.wait_for(prediction_id, token=token_of(client))["status"] == "succeeded"
    assert max(seen) <= 2
    # The idle period passes: every instance stops (min_instances is 0).
    idle = poll(
        watch,
        lambda d: d["instances"] + d["instances_booting"] + d["instances_draining"] == 0,
        60,
    )
    assert idle["instances"] == 0 and idle["instances_draining"] == 0
    assert max(seen) == 2
    assert instance_rows(live, created) == []


def total_instances(deployment: dict[str, Any]) -> int:
    counts = ("instances", "instances_booting", "instances_draining")
    return sum(int(deployment[key]) for key in counts)


def token_of(client: httpx.Client) -> str:
    return str(client.headers["Authorization"]).split(" ", 1)[1]


def test_a_new_release_lets_a_running_prediction_finish(
    live: LiveStack, owner: tuple[str, httpx.Client]
) -> None:
    username, client = owner
    created = create(client, SLEEP, latest_version(client, SLEEP), min_instances=1)
    name = created["name"]
    poll(lambda: get(client, username, name), lambda d: d["instances"] == 1, 60)
    [old] = instance_rows(live, created)
    running = client.post(
        f"/v1/deployments/{username}/{name}/predictions", json={"input": {"seconds": 4}}
    ).json()
    live.wait_for(running["id"], lambda p: p["status"] == "processing", token=token_of(client))
    # A new release on other hardware needs a new instance; the old one drains.
    patched = client.patch(f"/v1/deployments/{username}/{name}", json={"hardware": "gpu-t4"})
    assert patched.status_code == 200
    assert patched.json()["current_release"]["number"] == 2
    draining = poll(lambda: get(client, username, name), lambda d: d["instances_draining"] == 1, 30)
    assert draining["instances_draining"] == 1
    final = live.wait_for(running["id"], token=token_of(client))
    assert final["status"] == "succeeded", final
    assert final["output"] == "slept for 4 seconds"
    # Afterwards only the new release's instance runs.
    settled = poll(
        lambda: get(client, username, name),
        lambda d: d["instances"] == 1 and d["instances_draining"] == 0,
        60,
    )
    assert settled["instances"] == 1
    [new] = instance_rows(live, created)
    assert new.id != old.id and new.release == 2 and new.hardware == "gpu-t4"
    again = client.post(
        f"/v1/deployments/{username}/{name}/predictions",
        json={"input": {"seconds": 0}},
        headers={"Prefer": "wait"},
    ).json()
    assert again["status"] == "succeeded"


def test_delete_only_when_offline_and_unused(
    live: LiveStack, owner: tuple[str, httpx.Client], replicate2: Callable[..., Any]
) -> None:
    username, client = owner
    created = create(client, HELLO, latest_version(client, HELLO), min_instances=1)
    path = f"/v1/deployments/{username}/{created['name']}"
    online = client.delete(path)
    assert online.status_code == 409
    assert online.headers["content-type"].startswith("application/problem+json")
    assert "online" in online.json()["detail"]
    # Retrying cannot fix it: the 2.x client, which retries a 409 by default, sends it once.
    assert online.headers["x-should-retry"] == "false"
    token = client.headers["Authorization"].removeprefix("Bearer ")
    answer = replicate2(live, "delete-deployment", username, created["name"], token=token)
    assert answer == {"status": 409, "requests": 1}

    client.patch(path, json={"min_instances": 0})
    offline = poll(lambda: client.get(path).json(), lambda d: total_instances(d) == 0, 60)
    assert total_instances(offline) == 0
    recent = client.delete(path)
    assert recent.status_code == 409
    assert "offline and unused" in recent.json()["detail"]
    assert client.get(path).status_code == 200

    # Once it has been unused for the whole period (the controller marks it active while it
    # settles), it can be deleted.
    def quiet_for() -> timedelta:
        return utcnow() - as_utc(deployment_row(live, created).last_active_at)

    wait_until(
        quiet_for,
        lambda quiet: quiet > timedelta(seconds=DEPLOYMENT_DELETE_IDLE),
        what=f"the deployment to be unused for {DEPLOYMENT_DELETE_IDLE:g} seconds",
        timeout=DEPLOYMENT_DELETE_IDLE + 30,
    )
    gone = client.delete(path)
    assert gone.status_code == 204, gone.text
    assert client.get(path).status_code == 404
    assert client.post(f"{path}/predictions", json={"input": {"text": "x"}}).status_code == 404


def test_a_prediction_left_waiting_by_a_deletion_ends_canceled(
    live: LiveStack, owner: tuple[str, httpx.Client]
) -> None:
    """A create that read the deployment just before its deletion records its prediction
    just after it (the delete saw none waiting): the retired controller cancels it."""
    username, client = owner
    created = create(client, HELLO, latest_version(client, HELLO), max_instances=0)
    path = f"/v1/deployments/{username}/{created['name']}"
    made = client.post(f"{path}/predictions", json={"input": {"text": "late"}})
    assert made.status_code == 201, made.text
    # The deletion as DELETE makes it (rows, then the controller's retire signal), with the
    # prediction already waiting: the state that race leaves.
    row = deployment_row(live, created)
    with Session(live.engine) as session:
        session.exec(
            sql_delete(DeploymentRelease).where(col(DeploymentRelease.deployment_id) == row.id)
        )
        session.exec(sql_delete(Deployment).where(col(Deployment.id) == row.id))
        session.commit()

    async def retire() -> None:
        temporal = await connect(live.settings)
        handle = temporal.get_workflow_handle(f"deployment-{row.owner}/{row.name}-{row.id}")
        await handle.signal(DeploymentWorkflow.retire)

    asyncio.run(retire())
    token = client.headers["Authorization"].removeprefix("Bearer ")
    assert live.wait_for(made.json()["id"], token=token)["status"] == "canceled"
    assert client.get(path).status_code == 404


def test_a_version_used_by_a_deployment_cannot_be_deleted(
    live: LiveStack, owner: tuple[str, httpx.Client]
) -> None:
    username, client = owner
    model = ensure_model(live.engine, username, unique("private"), visibility="private")
    version = create_version(live.settings, live.engine, model, EXAMPLES / "hello-world")
    created = create(client, f"{username}/{model.name}", version.id)
    response = client.delete(f"/v1/models/{username}/{model.name}/versions/{version.id}")
    assert response.status_code == 409
    assert response.json()["detail"] == "A deployment uses this version"
    # A stranger cannot deploy it: the model is private.
    with live.client(live.new_account("stranger")) as stranger:
        body = {
            "name": unique("dep"),
            "model": f"{username}/{model.name}",
            "version": version.id,
            "hardware": "cpu",
            "min_instances": 0,
            "max_instances": 1,
        }
        assert stranger.post("/v1/deployments", json=body).status_code == 404
    assert created["current_release"]["version"] == version.id


def test_the_npm_client_creates_updates_and_predicts_through_a_deployment(
    live: LiveStack, owner: tuple[str, httpx.Client], node_client: Path
) -> None:
    username, client = owner
    name = unique("js")
    done = subprocess.run(
        [
            "node",
            str(node_client.parent / "deployments.mjs"),
            live.url,
            token_of(client),
            username,
            name,
            SLEEP,
            latest_version(client, SLEEP),
            json.dumps({"seconds": 0}),
            # Long enough that the create answers before it is done, however busy the host.
            json.dumps({"seconds": 2}),
        ],
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert done.returncode == 0, done.stderr
    seen = json.loads(done.stdout)
    assert (seen["created"], seen["updated"], seen["fetched"]) == (1, 2, 2)
    assert seen["sync"] == {
        "status": "succeeded",
        "output": "slept for 0 seconds",
        "deployment": f"{username}/{name}",
    }
    # The create answers with the prediction as it is then: queued, or already running on the
    # instance the sync prediction left warm; the client then polls it to the end.
    assert seen["queued"]["first"] in ("starting", "processing"), seen
    assert {k: seen["queued"][k] for k in ("status", "output")} == {
        "status": "succeeded",
        "output": "slept for 2 seconds",
    }
