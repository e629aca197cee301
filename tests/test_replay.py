"""Workflow code replays the histories it made: a change that breaks running workflows fails.

Histories saved in tests/histories/ (made by earlier code) are replayed too, one at least of
every workflow type the workers run; save new ones with ``REPLICANT_SAVE_HISTORIES=1`` only
when a change is guarded by ``workflow.patched`` (the saved ones of older code stay: they
prove the guard).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
from sqlmodel import Session, select
from temporalio.client import Client, WorkflowFailureError, WorkflowHistory
from temporalio.contrib.pydantic import pydantic_data_converter
from temporalio.worker import Replayer

from replicant.archives import pack_model
from replicant.ids import new_id
from replicant.tables import Deployment
from replicant.temporal import connect
from replicant.versions import create_version, ensure_model
from tests.conftest import TERMINAL, LiveStack
from tests.deploykit import new_deployment
from tests.modelkit import someone
from tests.receiver import running_receiver
from tests.trainkit import CorpusServer, corpus, data_uri, ngram_version
from tests.waiting import async_wait_until
from workers.main import WORKFLOW_RUNNER
from workers.schedules import (
    FILE_EXPIRY_SCHEDULE,
    RETENTION_SCHEDULE,
    START_RECONCILE_SCHEDULE,
    ensure_schedules,
)
from workflows.build import BuildVersionWorkflow
from workflows.deployment import DeploymentWorkflow
from workflows.prediction import PredictionWorkflow
from workflows.sweeps import FileExpiryWorkflow, RetentionSweepWorkflow, StartReconcileWorkflow
from workflows.training import TrainingWorkflow
from workflows.webhooks import WebhookDeliveryWorkflow

HISTORIES = Path(__file__).parent / "histories"
# Every workflow type the workers run (workers/main.py).
WORKFLOWS = [
    PredictionWorkflow,
    TrainingWorkflow,
    DeploymentWorkflow,
    BuildVersionWorkflow,
    FileExpiryWorkflow,
    RetentionSweepWorkflow,
    StartReconcileWorkflow,
    WebhookDeliveryWorkflow,
]


def replayer() -> Replayer:
    # The workers' own sandbox runner: the code replays as the workers run it.
    return Replayer(
        workflows=WORKFLOWS,
        data_converter=pydantic_data_converter,
        workflow_runner=WORKFLOW_RUNNER,
    )


def save(name: str, history: WorkflowHistory) -> None:
    if os.environ.get("REPLICANT_SAVE_HISTORIES"):
        HISTORIES.mkdir(exist_ok=True)
        (HISTORIES / f"{name}.json").write_text(history.to_json())


def has_completed_task(history: WorkflowHistory) -> bool:
    """A run just continued as new holds only its start event, which cannot be replayed."""
    return any(e.HasField("workflow_task_completed_event_attributes") for e in history.events)


def patch_markers(history: WorkflowHistory) -> list[str]:
    """The patch markers in a history, and the TemporalChangeVersion search attribute
    written with each (one more write to Temporal's visibility store)."""
    found = [
        e.marker_recorded_event_attributes.marker_name
        for e in history.events
        if e.marker_recorded_event_attributes.marker_name == "core_patch"
    ]
    found += [
        "TemporalChangeVersion"
        for e in history.events
        if e.HasField("upsert_workflow_search_attributes_event_attributes")
        and "TemporalChangeVersion"
        in e.upsert_workflow_search_attributes_event_attributes.search_attributes.indexed_fields
    ]
    return found


def workflow_type(history: WorkflowHistory) -> str:
    started = history.events[0].workflow_execution_started_event_attributes
    name: str = started.workflow_type.name
    return name


async def closed_history(client: Client, workflow_id: str) -> WorkflowHistory:
    """The history of a workflow once it has closed (however it closed)."""
    handle = client.get_workflow_handle(workflow_id)
    with contextlib.suppress(WorkflowFailureError):
        await handle.result(follow_runs=False)
    return await handle.fetch_history()


async def test_prediction_histories_replay_with_the_current_code(
    live: LiveStack, api: httpx.Client
) -> None:
    """A prediction's workflow closes as it ended: succeeded, canceled, and with a
    `completed` webhook, which a workflow of its own delivers, started by a local activity
    (patched webhook-started-locally; the saved prediction-succeeded-closed started it as a
    child workflow). The API starts it with PREDICTION_SHAPE: it takes the patches that shape
    names without a patch marker (the saved prediction-webhook-started-locally and
    prediction-canceled-closed, of shape 0, have them)."""
    with running_receiver() as receiver:
        made = [
            api.post(
                "/v1/models/replicate/hello-world/predictions",
                json={"input": {"text": "replay"}, "webhook": receiver.url},
                headers={"Prefer": "wait"},
            ).json(),
            api.post(
                "/v1/models/replicant/sleep/predictions", json={"input": {"seconds": 30}}
            ).json(),
        ]
        live.wait_for(made[1]["id"], lambda p: p["status"] == "processing", 30)
        api.post(f"/v1/predictions/{made[1]['id']}/cancel")
        assert live.wait_for(made[1]["id"])["status"] == "canceled"
        client = await connect(live.settings)
        histories = {
            "prediction-shape1-webhook": f"prediction-{made[0]['id']}",
            "prediction-shape1-canceled": f"prediction-{made[1]['id']}",
            "webhook-delivered": f"webhook-{made[0]['id']}",
        }
        for name, workflow_id in histories.items():
            history = await closed_history(client, workflow_id)
            save(name, history)
            await replayer().replay_workflow(history)
            if name.startswith("prediction-"):
                assert patch_markers(history) == [], name


async def test_a_deadline_canceled_prediction_history_replays_with_the_current_code(
    live: LiveStack, api: httpx.Client
) -> None:
    """A prediction past its deadline asks Temporal to cancel its workflow (patched
    deadline-cancels-workflow, taken without a marker at PREDICTION_SHAPE; the saved
    prediction-deadline-canceled-closed has the marker), which closes as Canceled."""
    made = api.post(
        "/v1/models/replicant/sleep/predictions",
        json={"input": {"seconds": 60}},
        headers={"Cancel-After": "5s"},
    ).json()
    assert live.wait_for(made["id"])["status"] == "canceled"
    client = await connect(live.settings)
    history = await closed_history(client, f"prediction-{made['id']}")
    save("prediction-shape1-deadline-canceled", history)
    await replayer().replay_workflow(history)
    assert patch_markers(history) == []


async def test_build_histories_replay_with_the_current_code(
    live: LiveStack, tmp_path: Path
) -> None:
    examples = Path(__file__).resolve().parent.parent / "examples"
    with (tmp_path / "model.tar.gz").open("w+b") as archive:
        pack_model(examples / "hello-world", archive)
        archive.seek(0)
        pushed = httpx.post(
            f"{live.url}/v1/models/{live.settings.default_account}/replayed/versions",
            params={"create": "true"},
            content=archive.read(),
            headers={"Authorization": f"Bearer {live.token}", "Content-Type": "application/gzip"},
            timeout=300,
        )
    assert pushed.status_code in (200, 201), pushed.text
    client = await connect(live.settings)
    handle = client.get_workflow_handle(f"build-{pushed.headers['Replicant-Build']}")
    history = await closed_history(client, handle.id)
    save("build-succeeded-closed", history)
    await replayer().replay_workflow(history)


def finished(api: httpx.Client, path: str, timeout: float = 300) -> dict[str, Any]:
    """Poll ``path`` until its status is terminal."""
    deadline = time.monotonic() + timeout
    while True:
        body: dict[str, Any] = api.get(path).json()
        if body["status"] in TERMINAL:
            return body
        assert time.monotonic() < deadline, body
        time.sleep(0.2)


async def test_training_and_deployment_histories_replay_with_the_current_code(
    live: LiveStack, api: httpx.Client
) -> None:
    owner = live.settings.default_account
    api.post("/v1/models", json={"owner": owner, "name": "replay-tuned", "visibility": "private"})
    created = api.post(
        f"/v1/models/replicant/ngram/versions/{ngram_version(live)}/trainings",
        json={"input": {"text": data_uri(corpus(3, 200))}, "destination": f"{owner}/replay-tuned"},
    )
    assert created.status_code == 201, created.text
    training = await asyncio.to_thread(finished, api, f"/v1/trainings/{created.json()['id']}")
    assert training["status"] == "succeeded", training
    version = api.get("/v1/models/replicate/hello-world").json()["latest_version"]["id"]
    deployment = api.post(
        "/v1/deployments",
        json={
            "name": "replayed",
            "model": "replicate/hello-world",
            "version": version,
            "hardware": "cpu",
            "min_instances": 0,
            "max_instances": 1,
        },
    )
    assert deployment.status_code == 200, deployment.text
    predicted = api.post(
        f"/v1/deployments/{owner}/replayed/predictions",
        json={"input": {"text": "deployed"}},
        headers={"Prefer": "wait"},
    ).json()
    predicted = await asyncio.to_thread(finished, api, f"/v1/predictions/{predicted['id']}")
    assert predicted["status"] == "succeeded", predicted
    client = await connect(live.settings)
    histories = {
        "training-succeeded-closed": await closed_history(client, f"training-{training['id']}"),
        "deployment-serving": await (await one_of(client, "DeploymentWorkflow")).fetch_history(),
        "prediction-deployment-closed": await closed_history(
            client, f"prediction-{predicted['id']}"
        ),
    }
    for name, history in histories.items():
        save(name, history)
        await replayer().replay_workflow(history)


async def test_a_deployment_that_cancels_its_stranded_predictions_replays(
    live: LiveStack,
) -> None:
    """A controller whose deployment stops serving (its model went private) cancels the
    predictions waiting on its queue (patched ends-stranded)."""
    author, deployer = someone(live, "replay-author"), someone(live, "replay-deployer")
    model = ensure_model(live.engine, author.username, f"replay-private-{new_id()[:6]}")
    hello = Path(__file__).resolve().parent.parent / "examples" / "hello-world"
    version = create_version(live.settings, live.engine, model, hello).id
    ref = f"{author.username}/{model.name}"
    with deployer.client(live) as theirs, author.client(live) as own:
        owner, name = new_deployment(theirs, ref, version, max_instances=0)
        created = theirs.post(
            f"/v1/deployments/{owner}/{name}/predictions", json={"input": {"text": "x"}}
        )
        assert created.status_code == 201, created.text
        assert own.patch(f"/v1/models/{ref}", json={"visibility": "private"}).status_code == 200
        ended = await asyncio.to_thread(finished, theirs, f"/v1/predictions/{created.json()['id']}")
    assert ended["status"] == "canceled", ended
    client = await connect(live.settings)
    row = await asyncio.to_thread(deployment_id, live, owner, name)
    history = await client.get_workflow_handle(f"deployment-{owner}/{name}-{row}").fetch_history()
    assert any(
        e.HasField("request_cancel_external_workflow_execution_initiated_event_attributes")
        for e in history.events
    )
    save("deployment-ends-stranded", history)
    await replayer().replay_workflow(history)


def deployment_id(live: LiveStack, owner: str, name: str) -> int:
    with Session(live.engine) as session:
        row = session.exec(
            select(Deployment).where(Deployment.owner == owner, Deployment.name == name)
        ).one()
    assert row.id is not None
    return row.id


async def test_a_canceled_training_history_replays_with_the_current_code(
    live: LiveStack, api: httpx.Client
) -> None:
    """A training canceled as it starts ends on the run ladder it shares with predictions
    (workflows/runs.py)."""
    owner = live.settings.default_account
    api.post(
        "/v1/models", json={"owner": owner, "name": "replay-canceled", "visibility": "private"}
    )
    # Its corpus is held back until the cancel is in: the training cannot end first.
    held = CorpusServer(held=True)
    try:
        created = api.post(
            f"/v1/models/replicant/ngram/versions/{ngram_version(live)}/trainings",
            json={
                "input": {"text": held.add("held.txt", corpus(3, 200))},
                "destination": f"{owner}/replay-canceled",
            },
        )
        assert created.status_code == 201, created.text
        training_id = created.json()["id"]
        assert api.post(f"/v1/trainings/{training_id}/cancel").status_code == 200
        held.release()
        training = await asyncio.to_thread(finished, api, f"/v1/trainings/{training_id}")
    finally:
        held.close()
    assert training["status"] == "canceled", training
    client = await connect(live.settings)
    history = await closed_history(client, f"training-{training_id}")
    save("training-canceled-closed", history)
    await replayer().replay_workflow(history)


async def one_of(client: Client, workflow_type: str, closed: bool = False) -> Any:
    """A handle of a workflow of this type (a closed one, with ``closed``), once listed."""
    query = f"WorkflowType = '{workflow_type}'"
    if closed:
        query += " AND ExecutionStatus = 'Completed'"
    deadline = time.monotonic() + 120
    while True:
        async for found in client.list_workflows(query):
            return client.get_workflow_handle(found.id, run_id=found.run_id)
        assert time.monotonic() < deadline, f"no {workflow_type} listed"
        await asyncio.sleep(0.2)


async def test_schedule_histories_replay_with_the_current_code(live: LiveStack) -> None:
    client = await connect(live.settings)
    sweeps = {
        FILE_EXPIRY_SCHEDULE: ("FileExpiryWorkflow", "file-expiry-sweep"),
        RETENTION_SCHEDULE: ("RetentionSweepWorkflow", "retention-sweep"),
    }
    for schedule, (workflow, name) in sweeps.items():
        await client.get_schedule_handle(schedule).trigger()
        history = await (await one_of(client, workflow, closed=True)).fetch_history()
        save(name, history)
        await replayer().replay_workflow(history)


async def test_a_reconcile_history_that_goes_on_from_the_last_pass_replays(
    live: LiveStack,
) -> None:
    """A reconcile run starts with the last run's result (where that pass stopped), which
    the Schedule hands it, also after a worker's start has updated the Schedule: a run that
    had one replays."""
    client = await connect(live.settings)
    schedule = client.get_schedule_handle(START_RECONCILE_SCHEDULE)
    await schedule.trigger()
    await one_of(client, "StartReconcileWorkflow", closed=True)
    updated = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
    await ensure_schedules(client, live.settings)  # as every worker's start does
    await schedule.trigger()

    async def after_a_pass() -> WorkflowHistory | None:
        query = (
            "WorkflowType = 'StartReconcileWorkflow' AND ExecutionStatus = 'Completed'"
            f" AND StartTime > '{updated}'"
        )
        async for found in client.list_workflows(query):
            handle = client.get_workflow_handle(found.id, run_id=found.run_id)
            history = await handle.fetch_history()
            started = history.events[0].workflow_execution_started_event_attributes
            if started.HasField("last_completion_result"):
                return history
        return None

    history = await async_wait_until(
        after_a_pass, what="a reconcile run started with the last one's result", timeout=120
    )
    assert history is not None
    save("start-reconcile-after-a-pass", history)
    await replayer().replay_workflow(history)


async def test_saved_histories_replay_with_the_current_code() -> None:
    saved = sorted(HISTORIES.glob("*.json"))
    assert saved, "tests/histories/ holds the histories of earlier code"
    types = set()
    for path in saved:
        history = WorkflowHistory.from_json(path.stem, path.read_text())
        types.add(workflow_type(history))
        await replayer().replay_workflow(history)
    assert types == {w.__temporal_workflow_definition.name for w in WORKFLOWS}  # type: ignore[attr-defined]
