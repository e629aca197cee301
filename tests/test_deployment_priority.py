"""A deployment on shared hardware: its predictions wait on the hardware's shared queue with
the deployment's priority, ahead of the ad-hoc backlog there (docs/fairness.md).

The backlog tests run on a stack of this module's own (tests/fairkit.py): a long prediction
holds the one ``gpu-t4`` slot while the backlog is queued, then is canceled, and the order in
which the rest start (``started_at``) shows who was served first.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlmodel import Session, select

from replicant.contracts import deployment_workflow_id
from replicant.deployments import deployment_config, set_deployment_priority
from replicant.devstack import settings_env
from replicant.tables import Deployment
from replicant.temporal import connect
from tests.accountkit import cli
from tests.conftest import LiveStack
from tests.fairkit import (
    account,
    created,
    hold_the_slot,
    long_run_live,
    predict,
    serve_backlog,
    sleep_model_on_one_slot,
)
from tests.test_replay import replayer, save
from tests.waiting import wait_until

HELLO = "replicate/hello-world"


live = long_run_live("deployment-priority")  # the embedded stack of this module (tests/fairkit.py)


@pytest.fixture(scope="module")
def one_slot_model(live: LiveStack) -> str:
    return sleep_model_on_one_slot(live, "urgent-sleep")


def deploy(client: httpx.Client, model: str, hardware: str, min_instances: int = 0) -> str:
    """A new deployment of ``model``'s latest version (its own instances); its name."""
    version = client.get(f"/v1/models/{model}").json()["latest_version"]["id"]
    name = f"urgent-{os.urandom(3).hex()}"
    body = {"name": name, "model": model, "version": version, "hardware": hardware}
    response = client.post(
        "/v1/deployments", json={**body, "min_instances": min_instances, "max_instances": 1}
    )
    assert response.status_code == 200, response.text
    return name


def instances(client: httpx.Client, deployment: str) -> int:
    """The instances a deployment has in any state."""
    shown = client.get(f"/v1/deployments/{deployment}").json()
    return int(shown["instances"] + shown["instances_booting"] + shown["instances_draining"])


async def placement(live: LiveStack, prediction_id: str) -> tuple[str, int, str]:
    """(task queue, priority key, fairness key) of the run of a prediction's workflow that
    ran the model (after the run it continues on the orchestration queue): what the Temporal
    UI shows, and what its run activity inherits on any worker."""
    temporal = await connect(live.settings)
    workflow_id = f"prediction-{prediction_id}"
    latest = await temporal.get_workflow_handle(workflow_id).describe()
    first_run = latest.raw_description.workflow_execution_info.first_run_id
    described = await temporal.get_workflow_handle(workflow_id, run_id=first_run).describe()
    priority = described.raw_description.workflow_execution_info.priority
    return described.task_queue, priority.priority_key, priority.fairness_key


def operator(live: LiveStack, *args: str) -> subprocess.CompletedProcess[str]:
    """``replicant deployments set-priority ARGS`` as an operator runs it: the console script,
    in a process of its own (with a placement flag the command ends its process itself)."""
    command = [str(Path(sys.executable).parent / "replicant"), "deployments", "set-priority"]
    return subprocess.run(
        [*command, *args],
        env=settings_env(live.settings),
        capture_output=True,
        text=True,
        timeout=120,
    )


async def test_a_prioritized_deployment_on_shared_hardware_goes_ahead_of_the_backlog(
    live: LiveStack, one_slot_model: str
) -> None:
    username, token_a = account(live, "flood")
    _, token_b = account(live, "small")
    with live.client(token_a) as a, live.client(token_b) as b:
        name = deploy(a, one_slot_model, "gpu-t4")
        set_deployment_priority(live.engine, f"{username}/{name}", 1, shared_hardware=True)
        shown = a.get(f"/v1/deployments/{username}/{name}").json()
        assert (shown["priority"], shown["shared_hardware"]) == (1, True)
        blocker = await hold_the_slot(live, token_a, a, one_slot_model)
        # A queues a backlog, B a few after it, then A's deployment a few after both: the
        # deployment's are A's too, so only their priority can put them ahead of A's backlog.
        backlog = {"A": [predict(a, one_slot_model, 0) for _ in range(30)]}
        backlog["B"] = [predict(b, one_slot_model, 0) for _ in range(3)]
        path = f"/v1/deployments/{username}/{name}/predictions"
        backlog["deployment"] = [
            created(a.post(path, json={"input": {"seconds": 0}})) for _ in range(3)
        ]
        tokens = {"A": token_a, "B": token_b, "deployment": token_a}
        order = await serve_backlog(live, (a, blocker), backlog, tokens)
        # No instance of its own ever served it.
        assert instances(a, f"{username}/{name}") == 0
    first = backlog["deployment"][0]
    assert await placement(live, first) == ("replicant-hw-gpu-t4", 1, username)
    # The deployment's start before the backlog has drained by more than a few slots...
    deployed = [i for i, owner in enumerate(order) if owner == "deployment"]
    assert max(deployed) <= 4, order
    # ...and behind them, accounts still take turns: B's are not left behind all of A's.
    b_positions = [i for i, owner in enumerate(order) if owner == "B"]
    assert max(b_positions) <= 10, order


async def test_an_operator_moves_a_deployment_to_shared_hardware_and_back(
    live: LiveStack,
) -> None:
    username, token = account(live, "deployer")
    with live.client(token) as client:
        name = deploy(client, HELLO, "cpu", min_instances=1)
        deployment = f"{username}/{name}"

        def has(count: int) -> Any:
            return wait_until(
                lambda: instances(client, deployment),
                lambda n: n == count,
                what=f"{deployment} to have {count} instances",
                timeout=120,
            )

        has(1)
        done = operator(live, deployment, "2", "--shared-hardware")
        assert done.returncode == 0, done.stdout + done.stderr
        assert "runs on the shared queue of cpu" in done.stdout
        shown = client.get(f"/v1/deployments/{deployment}").json()
        assert (shown["priority"], shown["shared_hardware"]) == (2, True)
        # Its instances stop (min_instances 1 no longer applies), and its predictions run.
        has(0)
        response = client.post(
            f"/v1/deployments/{deployment}/predictions",
            json={"input": {"text": "shared"}},
            headers={"Prefer": "wait"},
        )
        assert response.json()["status"] == "succeeded", response.text
        assert await placement(live, response.json()["id"]) == ("replicant-hw-cpu", 2, username)
        # On shared hardware the priority is the operator's, not the owner's.
        refused = client.patch(f"/v1/deployments/{deployment}", json={"priority": 1})
        assert refused.status_code == 403, refused.text
        # Back on its own instances: its controller starts min_instances again at once.
        done = operator(live, deployment, "3", "--own-instances")
        assert done.returncode == 0, done.stdout + done.stderr
        has(1)
        changed = client.patch(f"/v1/deployments/{deployment}", json={"priority": 4})
        assert changed.status_code == 200, changed.text
        assert (changed.json()["priority"], changed.json()["shared_hardware"]) == (4, False)
        response = client.post(
            f"/v1/deployments/{deployment}/predictions",
            json={"input": {"text": "own"}},
            headers={"Prefer": "wait"},
        )
        assert response.json()["status"] == "succeeded", response.text
        # Its workflow is on the orchestration queue again, its run on its instances' queue.
        shown_queue, priority, _ = await placement(live, response.json()["id"])
        assert (shown_queue, priority) == (live.settings.orchestration_queue, 4)
    # The controller's history, through both moves, replays with the current code.
    with Session(live.engine) as session:
        row = session.exec(
            select(Deployment).where(Deployment.owner == username, Deployment.name == name)
        ).one()
    temporal = await connect(live.settings)
    controller = temporal.get_workflow_handle(deployment_workflow_id(deployment_config(row)))
    history = await controller.fetch_history()
    save("deployment-shared-hardware", history)
    await replayer().replay_workflow(history)


def test_the_operator_command_refuses_what_it_cannot_do(live: LiveStack) -> None:
    username, token = account(live, "refused")
    with live.client(token) as client:
        name = deploy(client, HELLO, "cpu")
    # Without a placement flag the command ends normally: it runs in this process.
    out_of_range = cli(live, "deployments", "set-priority", f"{username}/{name}", "9")
    assert out_of_range.returncode != 0
    assert "priority must be between 1 and 5" in out_of_range.stdout + out_of_range.stderr
    unknown = cli(
        live, "deployments", "set-priority", f"{username}/nothing-{os.urandom(3).hex()}", "1"
    )
    assert unknown.returncode != 0
    assert "no deployment named" in unknown.stdout + unknown.stderr
