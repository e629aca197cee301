"""A run's workflow closes when the run ends, as it ended, and says what it is.

Through Temporal's own client: once a prediction, a training or a build has ended, its
workflow is closed (Completed, Failed with the run's error, Canceled), its `status` query and
``ReplicantStatus`` say the end, and it carries a summary naming its model; a `completed`
webhook is delivered by a ``webhook-<id>`` workflow of its own, which closes once delivered
and is started (once) in the workflow task that closes the run's workflow.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import httpx
from temporalio.api.enums.v1 import EventType
from temporalio.client import (
    Client,
    WorkflowExecutionDescription,
    WorkflowExecutionStatus,
    WorkflowFailureError,
)
from temporalio.common import SearchAttributeKey
from temporalio.exceptions import ApplicationError, CancelledError
from temporalio.testing import ActivityEnvironment

from activities.webhooks import start_webhook_delivery
from replicant.contracts import CompletedWebhook, WebhookStart, webhook_workflow_id
from replicant.ids import new_id
from replicant.readmodel import DEADLINE_ABORTED, DEADLINE_CANCELED
from replicant.temporal import connect
from replicant.versions import create_version, ensure_model
from tests.conftest import LiveStack
from tests.modelkit import COG_YAML, EXAMPLES, pack, push, someone, write_model
from tests.receiver import running_receiver
from tests.test_webhooks import delivered_completed
from tests.trainkit import CorpusServer, corpus, data_uri, ngram_version
from tests.workflow_runs import all_events

STATUS = SearchAttributeKey.for_keyword("ReplicantStatus")
MODEL = SearchAttributeKey.for_keyword("ReplicantModel")


async def closed(client: Client, workflow_id: str) -> tuple[WorkflowExecutionDescription, Any]:
    """Once the workflow has closed (its close event, not a timer): how Temporal describes it,
    and what its result raised (None when it completed)."""
    handle = client.get_workflow_handle(workflow_id)
    raised: BaseException | None = None
    try:
        await handle.result(follow_runs=False)
    except WorkflowFailureError as err:
        raised = err.cause
    return await handle.describe(), raised


async def assert_closed(
    client: Client, workflow_id: str, status: str, model: str
) -> tuple[WorkflowExecutionDescription, Any]:
    described, raised = await closed(client, workflow_id)
    expected = {
        "succeeded": WorkflowExecutionStatus.COMPLETED,
        "failed": WorkflowExecutionStatus.FAILED,
        "canceled": WorkflowExecutionStatus.CANCELED,
    }[status]
    assert described.status == expected, (workflow_id, described.status)
    assert described.typed_search_attributes.get(STATUS) == status
    assert described.typed_search_attributes.get(MODEL) == model
    summary = await described.static_summary()
    assert summary is not None and model in summary, summary
    return described, raised


def create(api: httpx.Client, model: str, body: dict[str, Any], **headers: str) -> Any:
    response = api.post(f"/v1/models/{model}/predictions", json=body, headers=headers)
    assert response.status_code in (200, 201), response.text
    return response.json()


async def test_a_prediction_closes_as_it_ended(live: LiveStack, api: httpx.Client) -> None:
    client = await connect(live.settings)
    # Succeeded: Completed, its summary and details naming model, hardware and input.
    done = create(api, "replicate/hello-world", {"input": {"text": "closes"}}, Prefer="wait")
    assert done["status"] == "succeeded"
    described, _ = await assert_closed(
        client, f"prediction-{done['id']}", "succeeded", "replicate/hello-world"
    )
    details = await described.static_details()
    assert details is not None and "closes" in details and "cpu" in details
    handle = client.get_workflow_handle(f"prediction-{done['id']}")
    assert await handle.query("status") == "succeeded"

    # Failed: Failed, not retried, with the prediction's error as its message.
    model = ensure_model(live.engine, "replicant", "crash")
    create_version(live.settings, live.engine, model, Path(__file__).parent / "models" / "crash")
    failed = create(api, "replicant/crash", {"input": {"message": "it broke"}}, Prefer="wait")
    failed = live.wait_for(failed["id"])
    assert failed["status"] == "failed"
    _, raised = await assert_closed(
        client, f"prediction-{failed['id']}", "failed", "replicant/crash"
    )
    assert isinstance(raised, ApplicationError) and raised.non_retryable
    assert raised.message == failed["error"]

    # Canceled while it runs: Canceled, after the status query said processing.
    sleeping = create(api, "replicant/sleep", {"input": {"seconds": 60}})
    live.wait_for(sleeping["id"], lambda p: p["status"] == "processing", 300)
    running = client.get_workflow_handle(f"prediction-{sleeping['id']}")
    assert await running.query("status") == "processing"
    assert api.post(f"/v1/predictions/{sleeping['id']}/cancel").status_code == 200
    assert live.wait_for(sleeping["id"])["status"] == "canceled"
    _, raised = await assert_closed(
        client, f"prediction-{sleeping['id']}", "canceled", "replicant/sleep"
    )
    assert isinstance(raised, CancelledError)


async def test_a_prediction_past_its_deadline_closes_as_canceled(
    live: LiveStack, api: httpx.Client
) -> None:
    """The deadline (Cancel-After) ends the prediction `canceled` (`aborted` had it not
    started yet): its workflow closes as Canceled, as one a user canceled."""
    client = await connect(live.settings)
    made = create(api, "replicant/sleep", {"input": {"seconds": 60}}, **{"Cancel-After": "5s"})
    final = live.wait_for(made["id"])
    assert final["status"] == "canceled", final
    ended = {DEADLINE_CANCELED: "canceled", DEADLINE_ABORTED: "aborted"}[final["error"]]
    described, raised = await closed(client, f"prediction-{made['id']}")
    assert described.status == WorkflowExecutionStatus.CANCELED, described.status
    assert isinstance(raised, CancelledError)
    assert described.typed_search_attributes.get(STATUS) == ended
    handle = client.get_workflow_handle(f"prediction-{made['id']}")
    assert await handle.query("status") == ended


async def test_a_completed_webhook_is_delivered_by_a_workflow_of_its_own(
    live: LiveStack, api: httpx.Client
) -> None:
    client = await connect(live.settings)
    with running_receiver() as receiver:
        body = {"input": {"text": "hook"}, "webhook": receiver.url}
        made = create(api, "replicate/hello-world", body, Prefer="wait")
        await assert_closed(
            client, f"prediction-{made['id']}", "succeeded", "replicate/hello-world"
        )
        deliveries = await asyncio.to_thread(receiver.wait, delivered_completed, made["id"])
        assert deliveries[-1].json()["output"] == "hello hook"
    described, raised = await closed(client, f"webhook-{made['id']}")
    assert described.status == WorkflowExecutionStatus.COMPLETED and raised is None
    assert "127.0.0.1" in (await described.static_summary() or "")
    # No child workflow: a local activity started it in the task that closed the run's
    # workflow (no further workflow task between the run's end and the close).
    events = await all_events(client, f"prediction-{made['id']}")
    kinds = [event.event_type for event in events]
    assert EventType.EVENT_TYPE_START_CHILD_WORKFLOW_EXECUTION_INITIATED not in kinds
    last_task = max(i for i, kind in enumerate(kinds) if kind == TASK_COMPLETED)
    closing = events[last_task + 1 :]
    assert closing[-1].event_type == EventType.EVENT_TYPE_WORKFLOW_EXECUTION_COMPLETED
    markers = [
        event.marker_recorded_event_attributes.SerializeToString()
        for event in closing
        if event.event_type == EventType.EVENT_TYPE_MARKER_RECORDED
    ]
    assert any(b"start_webhook_delivery" in marker for marker in markers), kinds


TASK_COMPLETED = EventType.EVENT_TYPE_WORKFLOW_TASK_COMPLETED


async def test_a_webhook_workflow_is_started_once_however_often_its_start_is_tried(
    live: LiveStack,
) -> None:
    """The start of a `completed` webhook's workflow is tried again when the worker that
    tried it died before the run's workflow closed: a workflow of that id, running or
    closed, is that delivery."""
    client = await connect(live.settings)
    environment = ActivityEnvironment(client=client)
    job = CompletedWebhook(kind="prediction", id=new_id(), host="example.com")
    # A queue no worker polls: the delivery stays as it was started.
    start = WebhookStart(job=job, task_queue="replicant-nobody", summary="started once")
    await environment.run(start_webhook_delivery, start)
    handle = client.get_workflow_handle(webhook_workflow_id(job.id))
    first = (await handle.describe()).run_id
    await environment.run(start_webhook_delivery, start)  # while it runs
    assert (await handle.describe()).run_id == first
    await handle.terminate("delivered")
    await environment.run(start_webhook_delivery, start)  # once it has closed
    described = await handle.describe()
    assert described.run_id == first
    assert described.status == WorkflowExecutionStatus.TERMINATED


async def test_a_training_closes_as_it_ended(live: LiveStack, api: httpx.Client) -> None:
    client = await connect(live.settings)
    owner = live.settings.default_account
    api.post("/v1/models", json={"owner": owner, "name": "closing", "visibility": "private"})
    path = f"/v1/models/replicant/ngram/versions/{ngram_version(live)}/trainings"

    def train(text: str) -> str:
        created = api.post(path, json={"input": {"text": text}, "destination": f"{owner}/closing"})
        assert created.status_code == 201, created.text
        training_id: str = created.json()["id"]
        return training_id

    succeeded = train(data_uri(corpus(5, 200)))
    await assert_closed(client, f"training-{succeeded}", "succeeded", "replicant/ngram")
    # An input file that cannot be fetched fails the training before it runs.
    failed = train("http://127.0.0.1:9/nothing.txt")
    _, raised = await assert_closed(client, f"training-{failed}", "failed", "replicant/ngram")
    assert isinstance(raised, ApplicationError) and "Input file error" in raised.message
    # Canceled as it starts (as the replayed canceled training is): its corpus is held back
    # until the cancel is in, so the training cannot end first.
    held = CorpusServer(held=True)
    try:
        canceled = train(held.add("held.txt", corpus(6, 200)))
        assert api.post(f"/v1/trainings/{canceled}/cancel").status_code == 200
        held.release()
        _, raised = await assert_closed(
            client, f"training-{canceled}", "canceled", "replicant/ngram"
        )
    finally:
        held.close()
    assert isinstance(raised, CancelledError)
    assert api.get(f"/v1/trainings/{canceled}").json()["status"] == "canceled"


async def test_a_build_closes_as_it_ended(live: LiveStack, tmp_path: Path) -> None:
    client = await connect(live.settings)
    alice = someone(live, "closer")
    good = push(live, alice, f"{alice.username}/closing", EXAMPLES / "hello-world", create=True)
    assert good.status_code == 201, good.text
    await assert_closed(
        client, f"build-{good.headers['Replicant-Build']}", "succeeded", f"{alice.username}/closing"
    )
    broken = write_model(
        tmp_path / "broken", {"cog.yaml": COG_YAML, "predict.py": "raise RuntimeError('kaput')\n"}
    )
    bad = push(live, alice, f"{alice.username}/closing", pack(broken))
    assert bad.status_code == 422, bad.text
    _, raised = await assert_closed(
        client, f"build-{bad.headers['Replicant-Build']}", "failed", f"{alice.username}/closing"
    )
    assert isinstance(raised, ApplicationError) and "kaput" in raised.message
