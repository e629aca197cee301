"""A Cog ``Secret`` input reaches the model, and no store of the platform keeps it in plain
text: not Temporal's history, not the Idempotency-Key claim, not the prediction's row, nor
what the API and the webhooks show (replicant/sealing.py)."""

from __future__ import annotations

import asyncio
import json
import os
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlmodel import Session, select

from replicant.accounts import create_account
from replicant.contracts import PredictionRequest
from replicant.ids import new_id
from replicant.sealing import SEALED_PREFIX
from replicant.tables import IdempotencyKey, Prediction
from replicant.temporal import connect
from replicant.timeutil import utcnow
from tests.conftest import LiveStack
from tests.receiver import Receiver, running_receiver
from workflows.prediction import PredictionWorkflow

MODEL_DIR = Path(__file__).parent / "models" / "cog-types"
SECRET = "r8_sealed_not_stored_4711"
# What the cog-types model asks for besides its secret.
EMPTY = {"words": [], "numbers": [], "files": []}


@pytest.fixture(scope="module")
def pushed(live: LiveStack) -> tuple[str, str, str]:
    """The cog-types model pushed by a fresh account: (account, token, version id)."""
    username = f"sealed-{os.urandom(3).hex()}"
    _, token = create_account(live.engine, username)
    done = subprocess.run(
        [sys.executable, "-m", "replicant.cli", "push", str(MODEL_DIR), f"{username}/types"]
        + ["--create", "--url", live.url, "--token", token],
        capture_output=True,
        text=True,
        env={**os.environ, "COLUMNS": "300"},
        timeout=900,
        check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    match = re.search(rf"Pushed {username}/types:([0-9a-f]{{64}})", done.stdout)
    assert match, done.stdout
    return username, token, match[1]


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    with running_receiver() as r:
        yield r


async def history_bytes(live: LiveStack, prediction_id: str) -> bytes:
    """The workflow's whole history as Temporal stores it (payloads are JSON bytes inside)."""
    client = await connect(live.settings)
    history = await client.get_workflow_handle(f"prediction-{prediction_id}").fetch_history()
    return b"".join(event.SerializeToString() for event in history.events)


async def test_a_secret_reaches_the_model_but_no_store_keeps_it_plain(
    live: LiveStack, pushed: tuple[str, str, str], receiver: Receiver
) -> None:
    _, token, version = pushed
    with live.client(token) as api:
        created = api.post(
            "/v1/predictions",
            json={
                "version": version,
                "input": {**EMPTY, "token": SECRET},
                "webhook": receiver.url,
            },
            headers={"Idempotency-Key": f"secret-{new_id()}"},
        )
        assert created.status_code == 201, created.text
        prediction_id = created.json()["id"]
        body = live.wait_for(prediction_id, token=token)
        assert body["status"] == "succeeded", body
        # The model got the plain value.
        assert body["output"]["token_length"] == len(SECRET)
        shown = [
            created.text,
            api.get(f"/v1/predictions/{prediction_id}").text,
            api.get("/v1/predictions").text,
        ]
    deliveries = receiver.wait(
        lambda ds: any(d.json()["status"] == "succeeded" for d in ds), prediction_id
    )
    shown += [d.body.decode() for d in deliveries]
    for text in shown:
        assert prediction_id in text
        assert SECRET not in text
    assert json.loads(shown[1])["input"]["token"] == "**********"

    with Session(live.engine) as session:
        claim = session.exec(
            select(IdempotencyKey).where(IdempotencyKey.object_id == prediction_id)
        ).one()
        row = session.get(Prediction, prediction_id)
    assert row is not None
    assert SECRET not in json.dumps(row.input)
    kept = json.dumps(claim.request)
    assert SECRET not in kept
    assert SEALED_PREFIX in kept  # the claim keeps it sealed, for a retry to start with

    history = await history_bytes(live, prediction_id)
    assert SEALED_PREFIX.encode() in history
    assert SECRET.encode() not in history


async def start_directly(live: LiveStack, owner: str, version: str, token: str) -> str:
    """A prediction a program starts through Temporal, as docs/api.md shows it."""
    req = PredictionRequest(
        id=new_id(),
        owner=owner,
        model=f"{owner}/types",
        version=version,
        input={**EMPTY, "token": token},
        created_at=utcnow(),
    )
    client = await connect(live.settings)
    await client.start_workflow(
        PredictionWorkflow.run,
        req,
        id=f"prediction-{req.id}",
        task_queue=live.settings.orchestration_queue,
    )
    return req.id


async def test_a_prediction_started_through_temporal_keeps_its_plain_secret_out_of_its_row(
    live: LiveStack, pushed: tuple[str, str, str]
) -> None:
    owner, token, version = pushed
    prediction_id = await start_directly(live, owner, version, SECRET)
    body = await asyncio.to_thread(live.wait_for, prediction_id, token=token)
    assert body["status"] == "succeeded", body
    assert body["output"]["token_length"] == len(SECRET)
    assert body["input"]["token"] == "**********"
    with Session(live.engine) as session:
        row = session.get(Prediction, prediction_id)
    assert row is not None
    assert SECRET not in json.dumps(row.input)


async def test_a_sealed_secret_copied_into_another_prediction_does_not_unseal(
    live: LiveStack, pushed: tuple[str, str, str]
) -> None:
    owner, token, version = pushed
    with live.client(token) as api:
        created = api.post(
            "/v1/predictions", json={"version": version, "input": {**EMPTY, "token": SECRET}}
        )
        assert created.status_code == 201, created.text
    first = created.json()["id"]
    assert (await asyncio.to_thread(live.wait_for, first, token=token))["status"] == "succeeded"
    history = (await history_bytes(live, first)).decode("utf-8", "replace")
    match = re.search(re.escape(SEALED_PREFIX) + r"[A-Za-z0-9_=-]+", history)
    assert match, "the first prediction's history holds no sealed value"

    copied = await start_directly(live, owner, version, match[0])
    body = await asyncio.to_thread(live.wait_for, copied, token=token)
    assert body["status"] == "failed", body
    assert body["error"] == "A Secret input could not be unsealed: it was sealed for another run"
