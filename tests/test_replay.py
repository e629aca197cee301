"""Workflow code replays the histories it made: a change that breaks running workflows fails.

Histories saved in tests/histories/ (made by earlier code) are replayed too; refresh them
with ``REPLICANT_SAVE_HISTORIES=1`` only when a change is guarded by ``workflow.patched``.
"""

from __future__ import annotations

import os
from pathlib import Path

import httpx
from temporalio.client import WorkflowHistory
from temporalio.contrib.pydantic import pydantic_data_converter
from temporalio.worker import Replayer

from replicant.archives import pack_model
from replicant.temporal import connect
from tests.conftest import LiveStack
from workers.main import WORKFLOW_RUNNER
from workflows.build import BuildVersionWorkflow
from workflows.deployment import DeploymentWorkflow
from workflows.prediction import PredictionWorkflow
from workflows.training import TrainingWorkflow

HISTORIES = Path(__file__).parent / "histories"


def replayer() -> Replayer:
    # The workers' own sandbox runner: the code replays as the workers run it.
    return Replayer(
        workflows=[PredictionWorkflow, TrainingWorkflow, DeploymentWorkflow, BuildVersionWorkflow],
        data_converter=pydantic_data_converter,
        workflow_runner=WORKFLOW_RUNNER,
    )


async def test_prediction_histories_replay_with_the_current_code(
    live: LiveStack, api: httpx.Client
) -> None:
    made = [
        api.post(
            "/v1/models/replicate/hello-world/predictions",
            json={"input": {"text": "replay"}},
            headers={"Prefer": "wait"},
        ).json(),
        api.post("/v1/models/replicant/sleep/predictions", json={"input": {"seconds": 30}}).json(),
    ]
    live.wait_for(made[1]["id"], lambda p: p["status"] == "processing", 30)
    api.post(f"/v1/predictions/{made[1]['id']}/cancel")
    assert live.wait_for(made[1]["id"])["status"] == "canceled"
    client = await connect(live.settings)
    histories = []
    for prediction in made:
        handle = client.get_workflow_handle(f"prediction-{prediction['id']}")
        histories.append(await handle.fetch_history())
    if os.environ.get("REPLICANT_SAVE_HISTORIES"):
        HISTORIES.mkdir(exist_ok=True)
        for name, history in zip(("succeeded", "canceled"), histories, strict=True):
            (HISTORIES / f"prediction-{name}.json").write_text(history.to_json())
    for history in histories:
        await replayer().replay_workflow(history)


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
    history = await handle.fetch_history()
    if os.environ.get("REPLICANT_SAVE_HISTORIES"):
        (HISTORIES / "build-succeeded.json").write_text(history.to_json())
    await replayer().replay_workflow(history)


async def test_saved_histories_replay_with_the_current_code() -> None:
    saved = sorted(HISTORIES.glob("*.json"))
    assert saved, "tests/histories/ holds the histories of earlier code"
    for path in saved:
        history = WorkflowHistory.from_json(path.stem, path.read_text())
        await replayer().replay_workflow(history)
