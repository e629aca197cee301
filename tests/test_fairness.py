"""Fair hardware queues: with a backlog, accounts take turns for a slot (weighted).

Everything runs on a stack of this module's own (predictions may run long here), on its
``gpu-t4`` queue, which has one slot. An account's
long prediction holds the slot while the backlog is queued; once every queued prediction's
run activity waits in Temporal's queue, the long one is canceled and the order in which the
rest start (``started_at``) shows who was served first.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Iterator

import httpx
import pytest

from replicant.temporal import connect
from tests.accountkit import cli
from tests.conftest import LiveStack
from tests.fairkit import (
    account,
    hold_the_slot,
    long_run_live,
    predict,
    serve_backlog,
    sleep_model_on_one_slot,
)
from tests.trainkit import corpus, new_destination, train

live = long_run_live("fairness")  # the embedded stack of this module (tests/fairkit.py)


@pytest.fixture(scope="module")
def one_slot_model(live: LiveStack) -> str:
    return sleep_model_on_one_slot(live, "fair-sleep")


@pytest.fixture
def clients(live: LiveStack) -> Iterator[dict[str, httpx.Client]]:
    opened: dict[str, httpx.Client] = {}
    yield opened
    for client in opened.values():
        client.close()


async def test_a_flood_from_one_account_does_not_starve_another(
    live: LiveStack, one_slot_model: str, clients: dict[str, httpx.Client]
) -> None:
    _, token_a = account(live, "flood")
    _, token_b = account(live, "small")
    a = clients["a"] = live.client(token_a)
    b = clients["b"] = live.client(token_b)
    blocker = await hold_the_slot(live, token_a, a, one_slot_model)
    # A queues 50 (the running one and 49 more), then B queues 3.
    backlog = {"A": [predict(a, one_slot_model, 0) for _ in range(49)]}
    backlog["B"] = [predict(b, one_slot_model, 0) for _ in range(3)]
    order = await serve_backlog(live, (a, blocker), backlog, {"A": token_a, "B": token_b})
    # Served in turn: B's three start before A's backlog has drained by more than a few.
    b_positions = [i for i, owner in enumerate(order) if owner == "B"]
    assert max(b_positions) <= 7, order


async def test_weights_share_a_long_backlog_two_to_one(
    live: LiveStack, one_slot_model: str, clients: dict[str, httpx.Client]
) -> None:
    _, token_a = account(live, "heavy", weight=2.0)
    _, token_b = account(live, "light", weight=1.0)
    _, token_c = account(live, "holder")
    a = clients["a"] = live.client(token_a)
    b = clients["b"] = live.client(token_b)
    c = clients["c"] = live.client(token_c)
    assert a.get("/v1/account").json()["fairness_weight"] == 2.0
    blocker = await hold_the_slot(live, token_c, c, one_slot_model)
    backlog: dict[str, list[str]] = {"A": [], "B": []}
    for _ in range(30):  # a mixed backlog: both accounts queue as they go
        backlog["A"].append(predict(a, one_slot_model, 0))
        backlog["B"].append(predict(b, one_slot_model, 0))
    order = await serve_backlog(live, (c, blocker), backlog, {"A": token_a, "B": token_b})
    # While both wait (the first 30 slots), A gets about two of every three.
    served_a = order[:30].count("A")
    assert 17 <= served_a <= 23, order


async def test_priority_and_fairness_ride_on_the_workflow(
    live: LiveStack, one_slot_model: str, clients: dict[str, httpx.Client]
) -> None:
    username, token = account(live, "seen", weight=3.0)
    client = clients["a"] = live.client(token)
    prediction_id = predict(client, one_slot_model, 0)
    temporal = await connect(live.settings)
    described = await temporal.get_workflow_handle(f"prediction-{prediction_id}").describe()
    # What the Temporal UI shows, and what the run activity inherits on any worker.
    priority = described.raw_description.workflow_execution_info.priority
    assert (priority.fairness_key, priority.fairness_weight) == (username, 3.0)
    final = await asyncio.to_thread(live.wait_for, prediction_id, token=token)
    assert final["status"] == "succeeded"


def test_operator_sets_an_accounts_weight_with_the_cli(live: LiveStack) -> None:
    username, token = account(live, "weighed")
    done = cli(live, "accounts", "set-weight", username, "2.5")
    assert done.returncode == 0, done.stdout + done.stderr
    with live.client(token) as client:
        assert client.get("/v1/account").json()["fairness_weight"] == 2.5
    refused = cli(live, "accounts", "set-weight", username, "0")
    assert refused.returncode != 0
    assert "weight must be between" in refused.stdout + refused.stderr
    unknown = cli(live, "accounts", "set-weight", f"nobody-{os.urandom(3).hex()}", "2")
    assert unknown.returncode != 0
    assert "no account named" in unknown.stdout + unknown.stderr


async def test_a_deployment_sets_the_priority_of_its_predictions(
    live: LiveStack, clients: dict[str, httpx.Client]
) -> None:
    username, token = account(live, "deployer")
    client = clients["a"] = live.client(token)
    version = client.get("/v1/models/replicate/hello-world").json()["latest_version"]["id"]
    config = {"model": "replicate/hello-world", "version": version, "hardware": "cpu"}
    name = f"urgent-{os.urandom(3).hex()}"
    body = {"name": name, **config, "min_instances": 0, "max_instances": 1, "priority": 1}
    created = client.post("/v1/deployments", json=body)
    assert created.status_code == 200, created.text
    assert created.json()["priority"] == 1
    # Out of range: refused, naming the field.
    refused = client.patch(f"/v1/deployments/{username}/{name}", json={"priority": 9})
    assert refused.status_code == 422
    assert [f["field"] for f in refused.json()["invalid_fields"]] == ["priority"]
    # A change of priority orders the queue at once; it is no new release of the instances.
    lowered = client.patch(f"/v1/deployments/{username}/{name}", json={"priority": 2})
    assert lowered.status_code == 200, lowered.text
    assert (lowered.json()["priority"], lowered.json()["current_release"]["number"]) == (2, 1)
    response = client.post(
        f"/v1/deployments/{username}/{name}/predictions",
        json={"input": {"text": "first"}},
        headers={"Prefer": "wait"},
    )
    assert response.status_code == 201, response.text
    assert response.json()["status"] == "succeeded"
    temporal = await connect(live.settings)
    handle = temporal.get_workflow_handle(f"prediction-{response.json()['id']}")
    priority = (await handle.describe()).raw_description.workflow_execution_info.priority
    assert (priority.priority_key, priority.fairness_key) == (2, username)
    # A deployment without one has the default priority, 3.
    plain = {"name": f"plain-{os.urandom(3).hex()}", **config, "min_instances": 0}
    default = client.post("/v1/deployments", json={**plain, "max_instances": 1})
    assert default.json()["priority"] == 3


async def test_a_training_takes_its_turn_as_its_account(live: LiveStack) -> None:
    username, token = account(live, "trainer", weight=2.0)
    destination = new_destination(live, token, f"tuned-{os.urandom(3).hex()}")
    training = await asyncio.to_thread(train, live, token, destination, corpus(7, 200))
    temporal = await connect(live.settings)
    described = await temporal.get_workflow_handle(f"training-{training.id}").describe()
    # Its run activity, on the hardware queue, inherits this priority.
    priority = described.raw_description.workflow_execution_info.priority
    assert (priority.fairness_key, priority.fairness_weight) == (username, 2.0)
