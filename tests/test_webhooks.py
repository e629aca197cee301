"""Webhooks on the real stack: signed, filtered, in order, durable; the SSRF guard."""

from __future__ import annotations

import asyncio
import signal
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from sqlalchemy import text
from standardwebhooks import Webhook
from temporalio.api.enums.v1 import EventType
from temporalio.client import WorkflowHandle

from api.errors import ProblemError
from api.runs import check_webhook
from replicant.contracts import PredictionRequest, RunOutcome, webhook_workflow_id
from replicant.ids import new_id
from replicant.netguard import BlockedURL, check_url
from replicant.sealing import SEALED_PREFIX
from replicant.temporal import connect
from replicant.timeutil import utcnow
from replicant.webhooks import DeliveryFailed, deliver, http_client
from tests.conformance import check
from tests.conftest import WEBHOOK_TIMEOUT, LiveStack
from tests.receiver import Delivery, Receiver, running_receiver
from tests.workflow_runs import all_events, start_prediction

SLEEP = "replicant/sleep"
NGRAM = "replicant/ngram"


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    with running_receiver() as r:
        yield r


def create(api: httpx.Client, model: str, body: dict[str, Any]) -> dict[str, Any]:
    response = api.post(f"/v1/models/{model}/predictions", json=body)
    assert response.status_code == 201, response.text
    result: dict[str, Any] = response.json()
    return result


def completed(deliveries: list[Delivery]) -> bool:
    return any(d.json()["status"] in ("succeeded", "failed", "canceled") for d in deliveries)


def delivered_completed(deliveries: list[Delivery]) -> bool:
    return any(
        d.answered == 200 and d.headers["webhook-id"].endswith("_completed_0") for d in deliveries
    )


def secret_of(api: httpx.Client) -> str:
    response = api.get("/v1/webhooks/default/secret")
    assert response.status_code == 200, response.text
    key: str = response.json()["key"]
    return key


def verify_all(secret: str, deliveries: list[Delivery]) -> list[dict[str, Any]]:
    """Every delivery verifies with the standardwebhooks library; their bodies, in order."""
    hook = Webhook(secret)
    return [hook.verify(d.body, d.headers) for d in deliveries]


def test_secret_is_a_standard_webhooks_key_per_account(live: LiveStack, api: httpx.Client) -> None:
    key = secret_of(api)
    assert key.startswith("whsec_")
    assert secret_of(api) == key
    Webhook(key)  # decodes
    with live.client(live.new_account("hooks")) as other:
        assert secret_of(other) != key
    assert httpx.get(f"{live.url}/v1/webhooks/default/secret").status_code == 401


def test_webhook_must_be_an_http_url(api: httpx.Client) -> None:
    for url in ("ftp://example.com/hook", "not a url", "http:///nohost", "file:///etc/passwd"):
        response = api.post(
            f"/v1/models/{SLEEP}/predictions", json={"input": {"seconds": 0}, "webhook": url}
        )
        assert response.status_code == 422, (url, response.text)
        problem = response.json()
        assert [f["field"] for f in problem["invalid_fields"]] == ["webhook"]
    response = api.post(
        f"/v1/models/{SLEEP}/predictions",
        json={
            "input": {"seconds": 0},
            "webhook": "https://example.com/h",
            "webhook_events_filter": ["finished"],
        },
    )
    assert response.status_code == 422


def test_all_events_signed_in_order_with_the_prediction_as_body(
    live: LiveStack, api: httpx.Client, receiver: Receiver
) -> None:
    secret = secret_of(api)
    created = create(api, SLEEP, {"input": {"seconds": 2.2}, "webhook": receiver.url})
    assert created["webhook"] == receiver.url
    deliveries = receiver.wait(completed, created["id"])
    bodies = verify_all(secret, deliveries)
    statuses = [b["status"] for b in bodies]
    assert statuses[0] == "processing" and statuses[-1] == "succeeded"
    assert statuses.count("succeeded") == 1
    ids = [d.headers["webhook-id"] for d in deliveries]
    assert ids[0].endswith("_start_0") and ids[-1].endswith("_completed_0")
    assert len(set(ids)) == len(ids)
    # Logs grow from one delivery to the next: the events arrive in order.
    logs = [b["logs"] for b in bodies]
    assert all(b.startswith(a) for a, b in zip(logs, logs[1:], strict=False))
    assert any("slept 1s" in b["logs"] and b["status"] == "processing" for b in bodies)
    # The completed body is the prediction exactly as GET returns it.
    got = api.get(f"/v1/predictions/{created['id']}")
    assert bodies[-1] == got.json()
    for d in deliveries:
        check(
            httpx.Response(
                200,
                content=d.body,
                headers={"content-type": "application/json"},
                request=httpx.Request("GET", got.json()["urls"]["get"]),
            ),
            live.url,
        )


def test_events_filter_is_respected(live: LiveStack, api: httpx.Client, receiver: Receiver) -> None:
    only_completed = create(
        api,
        SLEEP,
        {
            "input": {"seconds": 1.2},
            "webhook": receiver.url,
            "webhook_events_filter": ["completed"],
        },
    )
    start_and_end = create(
        api,
        SLEEP,
        {
            "input": {"seconds": 1.2},
            "webhook": receiver.url,
            "webhook_events_filter": ["start", "completed"],
        },
    )
    outputs = create(
        api,
        NGRAM,
        {
            "input": {"prompt": "the", "max_tokens": 20, "seed": 3},
            "webhook": receiver.url,
            "webhook_events_filter": ["output"],
        },
    )
    first = receiver.wait(completed, only_completed["id"])
    second = receiver.wait(completed, start_and_end["id"])
    # The `output` filter has no completed event: wait for the prediction, then the last output.
    final = live.wait_for(outputs["id"])
    assert final["status"] == "succeeded"
    tokens = final["output"]
    third = receiver.wait(lambda ds: bool(ds) and ds[-1].json()["output"] == tokens, outputs["id"])
    assert [d.headers["webhook-id"].split("_")[-2] for d in first] == ["completed"]
    assert [d.headers["webhook-id"].split("_")[-2] for d in second] == ["start", "completed"]
    kinds = {d.headers["webhook-id"].split("_")[-2] for d in third}
    assert kinds == {"output"}
    assert all(d.json()["status"] == "processing" for d in third)
    # The last state is always delivered; earlier ones are prefixes of it.
    assert third[-1].json()["output"] == tokens
    for d in third:
        partial = d.json()["output"]
        assert partial == tokens[: len(partial)]


async def _history_messages(live: LiveStack, prediction_id: str) -> tuple[list[str], list[Any]]:
    """The attempts of the prediction's `completed` delivery (its own workflow, once over)."""
    client = await connect(live.settings)
    failures: list[str] = []
    results: list[Any] = []
    await client.get_workflow_handle(webhook_workflow_id(prediction_id)).result()
    for event in await all_events(client, webhook_workflow_id(prediction_id)):
        if event.event_type == EventType.EVENT_TYPE_ACTIVITY_TASK_FAILED:
            failures.append(event.activity_task_failed_event_attributes.failure.message)
        if event.event_type == EventType.EVENT_TYPE_ACTIVITY_TASK_COMPLETED:
            payloads = event.activity_task_completed_event_attributes.result.payloads
            results += [p.data for p in payloads]
    return failures, results


def test_completed_is_retried_until_the_receiver_answers(
    live: LiveStack, api: httpx.Client, receiver: Receiver
) -> None:
    receiver.answers = [(500, 0.0), (503, 0.0), (500, 0.0)]
    created = create(
        api,
        SLEEP,
        {"input": {"seconds": 0}, "webhook": receiver.url, "webhook_events_filter": ["completed"]},
    )
    deliveries = receiver.wait(delivered_completed, created["id"])
    assert [d.answered for d in deliveries] == [500, 503, 500, 200]
    # One event: the same id on every attempt, each attempt signed afresh.
    assert len({d.headers["webhook-id"] for d in deliveries}) == 1
    verify_all(secret_of(api), deliveries)
    # A failing receiver never changes the prediction.
    assert api.get(f"/v1/predictions/{created['id']}").json()["status"] == "succeeded"
    failures, results = asyncio.run(_history_messages(live, created["id"]))
    assert failures == [
        "webhook receiver answer: HTTP 500",
        "webhook receiver answer: HTTP 503",
        "webhook receiver answer: HTTP 500",
    ]
    assert any(b'"status_code":200' in r.replace(b" ", b"") for r in results)


async def test_deliveries_take_no_hardware_slot(
    live: LiveStack, api: httpx.Client, receiver: Receiver
) -> None:
    # The workflow runs on the model's hardware queue; its webhook attempts run on the
    # orchestration queue, so a slow receiver never holds a hardware slot.
    created = create(api, NGRAM, {"input": {"max_tokens": 3}, "webhook": receiver.url})
    receiver.wait(delivered_completed, created["id"])
    client = await connect(live.settings)
    queues: dict[str, set[str]] = {}
    # The prediction's workflow, then the workflow that delivers its `completed` webhook.
    delivery = webhook_workflow_id(created["id"])
    await client.get_workflow_handle(delivery).result()
    events = await all_events(client, f"prediction-{created['id']}")
    for event in events + await all_events(client, delivery):
        if event.event_type == EventType.EVENT_TYPE_WORKFLOW_EXECUTION_STARTED:
            started = event.workflow_execution_started_event_attributes
            queues.setdefault("workflow", set()).add(started.task_queue.name)
        if event.event_type == EventType.EVENT_TYPE_ACTIVITY_TASK_SCHEDULED:
            attrs = event.activity_task_scheduled_event_attributes
            queues.setdefault(attrs.activity_type.name, set()).add(attrs.task_queue.name)
    # The delivery's workflow runs on the orchestration queue.
    assert queues == {
        "workflow": {"replicant-hw-cpu", live.settings.orchestration_queue},
        "run_prediction": {"replicant-hw-cpu"},
        "send_webhook": {live.settings.orchestration_queue},
    }


async def start_without_retention(
    live: LiveStack, api: httpx.Client, receiver: Receiver, **fields: Any
) -> tuple[PredictionRequest, WorkflowHandle[Any, RunOutcome]]:
    """A hello-world prediction whose `completed` webhook goes to ``receiver``, started
    through Temporal with no retention timer (its webhook is delivered by a workflow of
    its own, ``webhook-<id>``)."""
    req = PredictionRequest(
        id=new_id(),
        owner=live.settings.default_account,
        model="replicate/hello-world",
        version=api.get("/v1/models/replicate/hello-world").json()["latest_version"]["id"],
        input={"text": "x"},
        source="web",
        webhook=receiver.url,
        webhook_events_filter=["completed"],
        created_at=utcnow(),
        **fields,
    )
    return req, await start_prediction(live.settings, req)


@pytest.mark.parametrize("redirect", [301, 307])
async def test_a_redirect_is_not_followed_nor_retried(
    live: LiveStack, api: httpx.Client, receiver: Receiver, redirect: int
) -> None:
    receiver.default = redirect
    req, handle = await start_without_retention(live, api, receiver)
    assert (await asyncio.wait_for(handle.result(), 60)).status == "succeeded"
    # Retried as a 5xx is, the delivery would live on for the hour of the retry period.
    failures, _ = await asyncio.wait_for(_history_messages(live, req.id), 60)
    deliveries = receiver.for_prediction(req.id)
    assert [(d.answered, d.path) for d in deliveries] == [(redirect, "/hook/")]
    assert failures == [f"webhook receiver redirect (not followed, not retried): HTTP {redirect}"]


def test_a_slow_receiver_times_out_and_is_retried(
    live: LiveStack, api: httpx.Client, receiver: Receiver
) -> None:
    receiver.answers = [(200, WEBHOOK_TIMEOUT + 1.5)]
    created = create(
        api,
        SLEEP,
        {"input": {"seconds": 0}, "webhook": receiver.url, "webhook_events_filter": ["completed"]},
    )
    deliveries = receiver.wait(lambda ds: len(ds) >= 2, created["id"])
    assert len(deliveries) == 2
    failures, _ = asyncio.run(_history_messages(live, created["id"]))
    assert failures == [f"webhook receiver timed out after {WEBHOOK_TIMEOUT:g}s"]


def test_completed_survives_a_killed_worker(
    live: LiveStack, api: httpx.Client, receiver: Receiver
) -> None:
    receiver.default = 503  # down
    created = create(
        api,
        SLEEP,
        {"input": {"seconds": 0}, "webhook": receiver.url, "webhook_events_filter": ["completed"]},
    )
    receiver.wait(lambda ds: len(ds) >= 2, created["id"])
    live.stack.stop("worker", sig=signal.SIGKILL)
    try:
        receiver.default = 200  # back up while no worker runs
        live.wait_for(created["id"])  # the read model still answers
    finally:
        live.stack.start_worker()
    deliveries = receiver.wait(delivered_completed, created["id"], timeout=120)
    assert deliveries[-1].answered == 200
    assert deliveries[-1].json()["status"] == "succeeded"
    assert len({d.headers["webhook-id"] for d in deliveries}) == 1
    verify_all(secret_of(api), deliveries)


async def test_retries_stop_when_the_retry_period_is_over(
    live: LiveStack, api: httpx.Client, receiver: Receiver
) -> None:
    receiver.default = 500
    req, handle = await start_without_retention(live, api, receiver, webhook_retry_period=2.5)
    outcome = await asyncio.wait_for(handle.result(), 60)
    assert outcome.status == "succeeded"
    await asyncio.wait_for(_history_messages(live, req.id), 60)  # the delivery is over
    # Attempts at 0, 1 and 3 s would pass 2.5 s: two attempts, then the delivery gives up.
    assert [d.answered for d in receiver.for_prediction(req.id)] == [500, 500]


async def test_guard_refuses_private_addresses_unless_allowed(receiver: Receiver) -> None:
    for url in (
        "http://127.0.0.1/x",
        "http://localhost:8000/x",
        "http://10.1.2.3/x",
        "http://192.168.0.1/x",
        "http://169.254.169.254/latest/meta-data",
        "http://[::1]/x",
        "http://[::ffff:127.0.0.1]/x",
        "http://100.64.0.1/x",
        "http://0.0.0.0/x",
    ):
        with pytest.raises(BlockedURL):
            await check_url(url, allow_private=False)
        with pytest.raises(ProblemError) as err:
            check_webhook(url, allow_private=False)
        assert err.value.status == 422
    await check_url("http://8.8.8.8/x", allow_private=False)
    await check_url("http://127.0.0.1/x", allow_private=True)
    check_webhook("https://8.8.8.8/hook", allow_private=False)
    # A delivery to a refused address is a permanent failure and sends nothing.
    async with http_client() as client:
        with pytest.raises(DeliveryFailed) as failed:
            await deliver(
                client,
                receiver.url,
                secret="whsec_" + "A" * 32,
                msg_id="msg_x",
                body={"id": "x"},
                time_limit=2,
                allow_private=False,
            )
    assert failed.value.permanent
    assert receiver.deliveries == []


def test_the_signing_secret_is_stored_sealed(live: LiveStack) -> None:
    token = live.new_account("sealed")
    with live.client(token) as api:
        secret = api.get("/v1/webhooks/default/secret").json()["key"]
        username = api.get("/v1/account").json()["username"]
    assert secret.startswith("whsec_")
    with live.engine.connect() as connection:
        stored = connection.execute(
            text("SELECT webhook_secret FROM account WHERE username = :u"), {"u": username}
        ).scalar_one()
    assert stored.startswith(SEALED_PREFIX)
    assert secret not in stored and secret.removeprefix("whsec_") not in stored
