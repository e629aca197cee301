"""Deadlines: ``Cancel-After`` on every prediction create route; past the deadline a waiting
prediction ends ``aborted`` and a running one ``canceled``, shown as Replicate shows them.

A stack of its own: runs longer than the shared stack's 8-second timeout, a client that opted
in to ``aborted``, and a worker this module stops and starts.
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
import replicate

from replicant.readmodel import DEADLINE_ABORTED, DEADLINE_CANCELED
from replicant.versions import create_version, ensure_model
from tests.conftest import LiveStack, own_stack
from tests.deploykit import new_deployment
from tests.waiting import wait_until

OPTED_IN = "replicant-tests/1.0"
SLEEP = Path(__file__).parents[1] / "examples" / "sleep"


@pytest.fixture(scope="module")
def live(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveStack]:
    overrides = {"prediction_timeout": 120.0, "aborted_clients": ["replicant-tests/"]}
    with own_stack(tmp_path_factory, "deadlines", **overrides) as live:
        # gpu-t4 has one slot: a second prediction of this model waits for it.
        model = ensure_model(
            live.engine, live.settings.default_account, "sleep-t4", hardware="gpu-t4"
        )
        create_version(live.settings, live.engine, model, SLEEP)
        yield live


@pytest.fixture
def opted_in(live: LiveStack) -> Iterator[httpx.Client]:
    """An API client whose User-Agent is shown the status ``aborted``."""
    with live.client() as client:
        client.headers["User-Agent"] = OPTED_IN
        yield client


def official(live: LiveStack, cancel_after: str) -> replicate.Client:
    """The official Python client, sending ``Cancel-After`` with every request."""
    return replicate.Client(
        api_token=live.token, base_url=live.url, headers={"Cancel-After": cancel_after}
    )


def seconds_between(start: str, end: str) -> float:
    return (datetime.fromisoformat(end) - datetime.fromisoformat(start)).total_seconds()


def wait_until_past(instant: str) -> None:
    """Block until the wall clock is past ``instant`` (an ISO 8601 time from the API)."""
    moment = datetime.fromisoformat(instant) + timedelta(milliseconds=100)
    wait_until(
        lambda: datetime.now(moment.tzinfo) > moment,
        what=f"the clock to pass {instant}",
        timeout=(moment - datetime.now(moment.tzinfo)).total_seconds() + 10,
    )


def test_every_create_route_takes_cancel_after_and_refuses_malformed_values(
    live: LiveStack, opted_in: httpx.Client
) -> None:
    version = opted_in.get("/v1/models/replicate/hello-world").json()["latest_version"]["id"]
    deployment = "/".join(new_deployment(opted_in))
    routes: list[tuple[str, dict[str, Any], str, float]] = [
        ("/v1/models/replicate/hello-world/predictions", {}, "1h30m", 5400),
        ("/v1/predictions", {"version": version}, "90", 90),
        (f"/v1/deployments/{deployment}/predictions", {}, "5m", 300),
    ]
    for path, extra, duration, seconds in routes:
        body = {"input": {"text": "deadline"}, **extra}
        for bad in ("soon", "4s", "4.9s", "1h30", "5 m", "-5s", "30d"):
            refused = opted_in.post(path, json=body, headers={"Cancel-After": bad})
            assert refused.status_code == 422, (path, bad, refused.text)
            assert refused.headers["content-type"].startswith("application/problem+json")
            assert [f["field"] for f in refused.json()["invalid_fields"]] == ["Cancel-After"]
        created = opted_in.post(path, json=body, headers={"Cancel-After": duration})
        assert created.status_code == 201, created.text
        prediction = created.json()
        assert seconds_between(prediction["created_at"], prediction["deadline"]) == seconds
        final = live.wait_for(prediction["id"], timeout=120)
        assert final["status"] == "succeeded" and final["deadline"] == prediction["deadline"]
    # Without the header there is no deadline.
    plain = opted_in.post(routes[0][0], json={"input": {"text": "none"}}).json()
    assert "deadline" not in plain


def test_a_running_prediction_past_its_deadline_is_canceled(
    live: LiveStack, opted_in: httpx.Client
) -> None:
    client = official(live, "10s")
    prediction = client.models.predictions.create(model="replicant/sleep", input={"seconds": 100})
    assert prediction.status == "starting"
    prediction.wait()
    assert prediction.status == "canceled"
    assert prediction.error == DEADLINE_CANCELED
    assert prediction.started_at is not None
    # Every client sees `canceled` here: it ran.
    seen = opted_in.get(f"/v1/predictions/{prediction.id}").json()
    assert seen["status"] == "canceled"
    assert seconds_between(seen["created_at"], seen["deadline"]) == 10
    assert seconds_between(seen["deadline"], seen["completed_at"]) >= 0
    assert "slept 1s" in seen["logs"]


def test_a_prediction_still_waiting_at_its_deadline_is_aborted(
    live: LiveStack, opted_in: httpx.Client
) -> None:
    owner = live.settings.default_account
    path = f"/v1/models/{owner}/sleep-t4/predictions"
    blocker = opted_in.post(path, json={"input": {"seconds": 100}}).json()
    live.wait_for(blocker["id"], lambda p: p["status"] == "processing", 60)
    waiting = opted_in.post(
        path, json={"input": {"seconds": 1}}, headers={"Cancel-After": "5s"}
    ).json()
    final = live.wait_for(waiting["id"], timeout=60, token=None)
    assert opted_in.get(f"/v1/predictions/{blocker['id']}").json()["status"] == "processing"
    seen = opted_in.get(f"/v1/predictions/{waiting['id']}").json()
    assert seen["status"] == "aborted"
    assert seen["error"] == DEADLINE_ABORTED
    assert "started_at" not in seen
    assert seconds_between(seen["deadline"], seen["completed_at"]) >= 0
    listed = opted_in.get("/v1/predictions").json()["results"]
    assert [p["status"] for p in listed if p["id"] == waiting["id"]] == ["aborted"]
    # Clients that did not opt in (the official Python client cannot parse `aborted`) read
    # `canceled` with the same error, and their wait() ends.
    assert final["status"] == "canceled"
    client = official(live, "5s")
    legacy = client.predictions.get(waiting["id"])
    legacy.wait()
    assert legacy.status == "canceled" and legacy.error == DEADLINE_ABORTED
    opted_in.post(f"/v1/predictions/{blocker['id']}/cancel")
    assert live.wait_for(blocker["id"])["status"] == "canceled"


def test_the_deadline_holds_while_no_worker_runs(live: LiveStack, opted_in: httpx.Client) -> None:
    live.stack.stop("worker")
    try:
        created = opted_in.post(
            "/v1/models/replicate/hello-world/predictions",
            json={"input": {"text": "late"}},
            headers={"Cancel-After": "5s"},
        ).json()
        wait_until_past(created["deadline"])
    finally:
        live.stack.start_worker()
    final = live.wait_for(created["id"], timeout=60)
    seen = opted_in.get(f"/v1/predictions/{created['id']}").json()
    assert final["status"] == "canceled" and seen["status"] == "aborted"
    assert "started_at" not in seen and seen["output"] is None
