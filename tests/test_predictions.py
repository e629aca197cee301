"""Predictions through the HTTP API and the official Python client, on the real stack."""

from __future__ import annotations

import asyncio
import json
import os
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import pytest
import replicate

from replicant.tables import Version
from replicant.temporal import connect
from tests.conftest import RETENTION, TIMEOUT, LiveStack
from tests.observe import STARTED, is_queued, processes_in, run_activity
from tests.waiting import async_wait_until, wait_until

HELLO = "replicate/hello-world"
SLEEP = "replicant/sleep"
EXAMPLES = Path(__file__).parents[1] / "examples"
MODELS = Path(__file__).parent / "models"


def latest_version(api: httpx.Client, model: str) -> str:
    response = api.get(f"/v1/models/{model}")
    assert response.status_code == 200, response.text
    version: str = response.json()["latest_version"]["id"]
    return version


def create(api: httpx.Client, model: str, input: dict[str, Any], **headers: str) -> httpx.Response:
    return api.post(f"/v1/models/{model}/predictions", json={"input": input}, headers=headers)


def test_sync_prediction_returns_output_within_wait(api: httpx.Client) -> None:
    response = create(api, HELLO, {"text": "Alice"}, Prefer="wait")
    assert response.status_code == 201, response.text
    body = response.json()
    assert body["status"] == "succeeded"
    assert body["output"] == "hello Alice"
    assert body["model"] == HELLO
    assert body["source"] == "api"
    assert response.headers["Location"] == body["urls"]["get"]
    assert body["urls"]["get"].startswith("http")
    assert body["metrics"]["predict_time"] >= 0
    assert body["metrics"]["total_time"] >= body["metrics"]["predict_time"]
    assert body["started_at"] and body["completed_at"]
    assert body["data_removed"] is False


def test_create_by_version_id_and_by_owner_name_version(api: httpx.Client) -> None:
    version = latest_version(api, HELLO)
    for ref in (version, f"{HELLO}:{version}"):
        response = api.post(
            "/v1/predictions",
            json={"version": ref, "input": {"text": ref[:4]}},
            headers={"Prefer": "wait=30"},
        )
        assert response.status_code == 201, response.text
        assert response.json()["output"] == f"hello {ref[:4]}"
        assert response.json()["version"] == version


def test_async_prediction_starts_then_completes(live: LiveStack, api: httpx.Client) -> None:
    response = create(api, SLEEP, {"seconds": 1.2})
    assert response.status_code == 201
    body = response.json()
    assert body["status"] == "starting"
    assert body["output"] is None
    final = live.wait_for(body["id"])
    assert final["status"] == "succeeded"
    assert "slept" in final["output"]
    assert "1s" in final["logs"] or "1" in final["logs"]


def test_wait_shorter_than_the_run_answers_starting_and_get_shows_the_true_status(
    live: LiveStack, api: httpx.Client
) -> None:
    response = create(api, SLEEP, {"seconds": 4}, Prefer="wait=1")
    answered = datetime.now(UTC)
    assert response.status_code == 201
    body = response.json()
    # Replicate's contract for an expired wait: the clients' run() polls on only then.
    assert (body["status"], body["output"]) == ("starting", None)
    running = live.wait_for(body["id"], lambda p: p["status"] != "starting")
    assert running["status"] == "processing"
    final = live.wait_for(body["id"])
    assert final["status"] == "succeeded"
    # The answer came while the model still ran, not after it (timings: bench/).
    assert answered < datetime.fromisoformat(final["completed_at"])


def test_a_malformed_prefer_is_refused_naming_the_real_longest_wait(
    live: LiveStack, api: httpx.Client
) -> None:
    longest = live.settings.max_wait
    for prefer, message in (
        ("later", f"must be 'wait' or 'wait=N' with N from 1 to {longest}"),
        (f"wait={longest + 1}", f"wait must be between 1 and {longest} seconds"),
    ):
        response = create(api, HELLO, {"text": "x"}, Prefer=prefer)
        assert response.status_code == 422, response.text
        assert response.json()["invalid_fields"] == [{"field": "Prefer", "message": message}]


def test_replicate_1_run_polls_a_model_that_outlasts_the_wait_to_its_output(
    live: LiveStack,
) -> None:
    client = replicate.Client(api_token=live.token, base_url=live.url)
    output = client.run(SLEEP, input={"seconds": 3}, wait=1)
    assert output == "slept for 3 seconds"


def test_replicate_2_run_polls_a_model_that_outlasts_the_wait_to_its_output(
    live: LiveStack, replicate2: Callable[..., Any]
) -> None:
    answer = replicate2(live, "run", SLEEP, json.dumps({"seconds": 3}), "1")
    assert answer == {"output": "slept for 3 seconds"}


def test_official_client_run_and_create_wait(live: LiveStack) -> None:
    client = replicate.Client(api_token=live.token, base_url=live.url)
    assert client.run(HELLO, input={"text": "Bob"}) == "hello Bob"
    version = latest_version(live.client(), HELLO)
    assert client.run(f"{HELLO}:{version}", input={"text": "Carol"}) == "hello Carol"
    prediction = client.predictions.create(version=version, input={"text": "Dan"})
    prediction.wait()
    assert prediction.status == "succeeded"
    assert prediction.output == "hello Dan"
    again = client.predictions.get(prediction.id)
    assert again.output == "hello Dan"


def test_list_is_newest_first_with_cursor_pagination(live: LiveStack) -> None:
    token = live.new_account("lister")
    with live.client(token) as client:
        ids = []
        for i in range(5):
            response = create(client, HELLO, {"text": str(i)})
            assert response.status_code == 201
            ids.append(response.json()["id"])
        page = client.get("/v1/predictions", params={"page_size": 2}).json()
        seen = [p["id"] for p in page["results"]]
        assert page["previous"] is None
        while page["next"]:
            assert page["next"].startswith("http")
            page = client.get(page["next"]).json()
            seen += [p["id"] for p in page["results"]]
        assert seen == list(reversed(ids))
        back = client.get(page["previous"]).json()
        assert [p["id"] for p in back["results"]] == list(reversed(ids))[2:4]
        # The official client walks the same pages.
        official = replicate.Client(api_token=token, base_url=live.url)
        listed = [p.id for p in official.predictions.list().results]
        assert listed == list(reversed(ids))


def own_model(live: LiveStack, name: str, src: Path, hardware: str = "cpu") -> tuple[str, Version]:
    """A fresh model of the stack's account from ``src`` (a new version: no warm process);
    its ``owner/name`` and version."""
    from replicant.versions import create_version, ensure_model

    owner, unique = live.settings.default_account, f"{name}-{os.urandom(3).hex()}"
    model = ensure_model(live.engine, owner, unique, hardware=hardware)
    return f"{owner}/{unique}", create_version(live.settings, live.engine, model, src)


async def test_cancel_while_queued_booting_and_running(live: LiveStack, api: httpx.Client) -> None:
    temporal = await connect(live.settings)

    async def cancel_and_wait(prediction_id: str) -> dict[str, Any]:
        assert api.post(f"/v1/predictions/{prediction_id}/cancel").status_code == 200
        return await asyncio.to_thread(live.wait_for, prediction_id)

    # Running: the sleep model is warm after an earlier run; cancel mid-run.
    warm = create(api, SLEEP, {"seconds": 0.1}, Prefer="wait").json()
    assert warm["status"] == "succeeded"
    running = create(api, SLEEP, {"seconds": 30}).json()
    await asyncio.to_thread(live.wait_for, running["id"], lambda p: p["status"] == "processing", 30)
    assert (await cancel_and_wait(running["id"]))["status"] == "canceled"

    # Queued: one prediction holds gpu-t4's only slot; the one behind it waits on the queue.
    t4_ref, _ = own_model(live, "sleep-t4", EXAMPLES / "sleep", hardware="gpu-t4")
    blocker = create(api, t4_ref, {"seconds": 60}).json()
    await asyncio.to_thread(
        live.wait_for, blocker["id"], lambda p: p["status"] == "processing", 120
    )
    waiting = create(api, t4_ref, {"seconds": 1}).json()
    await async_wait_until(
        lambda: run_activity(temporal, waiting["id"]),
        is_queued,
        what=f"{waiting['id']} to wait for gpu-t4's slot",
    )
    assert api.get(f"/v1/predictions/{waiting['id']}").json()["status"] == "starting"
    queued = await cancel_and_wait(waiting["id"])
    assert queued["status"] == "canceled"
    assert "started_at" not in queued
    assert (await cancel_and_wait(blocker["id"]))["status"] == "canceled"

    # Booting: a coglet process of a new version is in its setup(), which takes seconds.
    slow_ref, slow = own_model(live, "slowboot", MODELS / "slowboot")
    booting = create(api, slow_ref, {"text": "never"}).json()
    await async_wait_until(
        lambda: run_activity(temporal, booting["id"]),
        lambda pending: pending is not None and pending.state == STARTED,
        what=f"{booting['id']}'s run activity to start",
    )
    await asyncio.to_thread(
        wait_until,
        lambda: processes_in(Path(slow.model_dir)),
        what=f"a coglet process booting {slow_ref}",
    )
    assert api.get(f"/v1/predictions/{booting['id']}").json()["status"] == "starting"
    booted = await cancel_and_wait(booting["id"])
    assert booted["status"] == "canceled"
    assert booted["output"] is None and "started_at" not in booted

    # Straight after create, whatever state it has reached by then.
    quick = create(api, SLEEP, {"seconds": 30}).json()
    assert (await cancel_and_wait(quick["id"]))["status"] == "canceled"
    # Cancelling a finished prediction changes nothing.
    again = api.post(f"/v1/predictions/{warm['id']}/cancel").json()
    assert again["status"] == "succeeded"


def test_prediction_running_past_the_timeout_fails(live: LiveStack, api: httpx.Client) -> None:
    body = create(api, SLEEP, {"seconds": TIMEOUT + 20}).json()
    final = live.wait_for(body["id"], timeout=TIMEOUT + 30)
    assert final["status"] == "failed"
    assert "timed out" in final["error"]


def test_model_error_fails_with_message_and_traceback(live: LiveStack) -> None:
    from replicant.versions import create_version, ensure_model

    model = ensure_model(live.engine, "replicant", "crash")
    create_version(live.settings, live.engine, model, Path(__file__).parent / "models" / "crash")
    with live.client() as api:
        response = create(api, "replicant/crash", {"message": "the model broke"}, Prefer="wait")
    body = response.json()
    assert body["status"] == "failed"
    assert "the model broke" in body["error"]
    # What the model printed, then the exception's traceback from the model's frame on.
    logs = body["logs"]
    assert logs.startswith("about to fail\nTraceback (most recent call last):\n"), logs
    assert '/predict.py", line 7, in predict\n    raise ValueError(message)\n' in logs
    assert logs.endswith("ValueError: the model broke\n")


def test_out_of_bounds_input_is_refused(api: httpx.Client) -> None:
    response = create(api, SLEEP, {"seconds": -1})
    assert response.status_code == 422
    fields = [f["field"] for f in response.json()["invalid_fields"]]
    assert fields == ["seconds"]


@pytest.mark.parametrize(
    ("payload", "field"),
    [
        ({"text": 3}, "text"),
        ({"txt": "x"}, "txt"),
        ({}, "text"),
    ],
)
def test_invalid_input_is_refused_with_the_field_named(
    api: httpx.Client, payload: dict[str, Any], field: str
) -> None:
    response = create(api, HELLO, payload)
    assert response.status_code == 422
    assert response.headers["content-type"].startswith("application/problem+json")
    body = response.json()
    assert body["status"] == 422
    assert body["title"] and body["detail"]
    assert field in [f["field"] for f in body["invalid_fields"]]


def test_bad_requests_get_problem_json(live: LiveStack, api: httpx.Client) -> None:
    cases = [
        (
            api.post(
                "/v1/predictions",
                content=b"{not json",
                headers={"content-type": "application/json"},
            ),
            400,
        ),
        (api.post("/v1/predictions", json={"version": "nope", "input": {}}), 422),
        (api.get("/v1/predictions/doesnotexist"), 404),
        (create(api, HELLO, {"text": "x"}, Prefer="wait=61"), 422),
        (create(api, HELLO, {"text": "x"}, Prefer="sometimes"), 422),
        (api.post("/v1/predictions", json={"input": {}}), 422),
        (httpx.get(f"{live.url}/v1/predictions"), 401),
        (httpx.get(f"{live.url}/v1/predictions", headers={"Authorization": "Bearer wrong"}), 401),
    ]
    for response, status in cases:
        assert response.status_code == status, (response.request.url, response.text)
        assert response.headers["content-type"].startswith("application/problem+json")
        body = response.json()
        assert body["status"] == status and body["title"] and body["detail"]


def test_an_unknown_version_is_replicates_422(api: httpx.Client) -> None:
    # Clients written for Replicate look for this status and title.
    response = api.post("/v1/predictions", json={"version": "0" * 64, "input": {"text": "x"}})
    assert response.status_code == 422, response.text
    body = response.json()
    assert body["title"] == "Invalid version or not permitted"
    assert body["detail"] == (
        f"The specified version {'0' * 64} does not exist (or perhaps you don't have "
        "permission to use it?)"
    )
    assert [f["field"] for f in body["invalid_fields"]] == ["version"]


def test_curl_without_content_type_is_read_as_json(api: httpx.Client) -> None:
    response = api.post(
        "/v1/models/replicate/hello-world/predictions",
        content=b'{"input": {"text": "curl"}}',
        headers={"Content-Type": "application/x-www-form-urlencoded", "Prefer": "wait"},
    )
    assert response.status_code == 201, response.text
    assert response.json()["output"] == "hello curl"


def test_token_scheme_is_accepted(live: LiveStack) -> None:
    response = httpx.get(
        f"{live.url}/v1/predictions", headers={"Authorization": f"Token {live.token}"}
    )
    assert response.status_code == 200


def test_other_accounts_cannot_see_a_prediction(live: LiveStack, api: httpx.Client) -> None:
    body = create(api, HELLO, {"text": "secret"}, Prefer="wait").json()
    other = live.new_account("other")
    with live.client(other) as client:
        assert client.get(f"/v1/predictions/{body['id']}").status_code == 404
        assert client.post(f"/v1/predictions/{body['id']}/cancel").status_code == 404
        listed = client.get("/v1/predictions").json()["results"]
        assert body["id"] not in [p["id"] for p in listed]


def test_retention_removes_input_and_output(live: LiveStack, api: httpx.Client) -> None:
    body = create(api, HELLO, {"text": "forget me"}, Prefer="wait").json()
    assert body["output"] == "hello forget me"
    final = live.wait_for(body["id"], lambda p: p["data_removed"], timeout=RETENTION + 30)
    assert final["data_removed"] is True
    assert final["output"] is None
    assert final["input"] == {}
    assert final["status"] == "succeeded"


def test_health_reports_ready(live: LiveStack) -> None:
    response = httpx.get(f"{live.url}/health")
    assert response.status_code == 200
    body = response.json()
    assert body["database"] == "ok" and body["temporal"] == "ok"
    assert all(count > 0 for count in body["workers"].values())
