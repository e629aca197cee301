"""Idempotent creates (beyond Replicate): ``Idempotency-Key`` on prediction creates answers the
first request's prediction for retries within 24 hours, never a second run: for sequential
and concurrent retries, and after the API process that took the first request was killed."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import timedelta
from typing import Any

import httpx
import pytest
import replicate
from sqlalchemy import update
from sqlmodel import Session, col, func, select
from temporalio.service import RPCError, RPCStatusCode

from replicant.devstack import free_port
from replicant.tables import IdempotencyKey, Prediction, Training
from replicant.temporal import connect
from replicant.timeutil import utcnow
from tests.conftest import LiveStack
from tests.trainkit import (
    corpus,
    data_uri,
    new_destination,
    ngram_version,
    versions_of,
    wait_training,
)
from tests.waiting import wait_until


def count_predictions(live: LiveStack, owner: str) -> int:
    with Session(live.engine) as session:
        return session.exec(
            select(func.count()).select_from(Prediction).where(Prediction.owner == owner)
        ).one()


@pytest.fixture
def account(live: LiveStack) -> Iterator[tuple[str, str, httpx.Client]]:
    """A fresh account (username, token, client), so counts of its predictions are exact."""
    token = live.new_account("idem")
    with live.client(token) as client:
        yield client.get("/v1/account").json()["username"], token, client


def key() -> str:
    return f"key-{os.urandom(6).hex()}"


def test_a_retry_with_the_key_answers_the_first_prediction(
    live: LiveStack, account: tuple[str, str, httpx.Client]
) -> None:
    username, token, api = account
    the_key = key()
    official = replicate.Client(
        api_token=token, base_url=live.url, headers={"Idempotency-Key": the_key}
    )
    first = official.models.predictions.create(
        model="replicate/hello-world", input={"text": "once"}
    )
    first.wait()
    again = official.models.predictions.create(
        model="replicate/hello-world", input={"text": "once"}
    )
    assert again.id == first.id and again.status == "succeeded" and again.output == "hello once"
    raw = api.post(
        "/v1/models/replicate/hello-world/predictions",
        json={"input": {"text": "once"}},
        headers={"Idempotency-Key": the_key, "Prefer": "wait"},
    )
    assert raw.status_code == 201 and raw.headers["Location"].endswith(first.id)
    assert raw.json()["id"] == first.id
    assert count_predictions(live, username) == 1
    # Another body with the key is refused, naming the header; nothing is created.
    other = api.post(
        "/v1/models/replicate/hello-world/predictions",
        json={"input": {"text": "twice"}},
        headers={"Idempotency-Key": the_key},
    )
    assert other.status_code == 422, other.text
    assert [f["field"] for f in other.json()["invalid_fields"]] == ["Idempotency-Key"]
    assert count_predictions(live, username) == 1
    # Keys belong to an account: the same key elsewhere is a new prediction.
    with live.client() as stranger:
        theirs = stranger.post(
            "/v1/models/replicate/hello-world/predictions",
            json={"input": {"text": "once"}},
            headers={"Idempotency-Key": the_key},
        ).json()
    assert theirs["id"] != first.id


def test_concurrent_requests_with_one_key_make_one_prediction(
    live: LiveStack, account: tuple[str, str, httpx.Client]
) -> None:
    username, token, _ = account
    the_key = key()
    version = live.client(token).get("/v1/models/replicate/hello-world").json()
    body = {"version": version["latest_version"]["id"], "input": {"text": "race"}}
    start = threading.Barrier(8)

    def create(_: int) -> httpx.Response:
        with live.client(token) as client:
            start.wait()
            return client.post("/v1/predictions", json=body, headers={"Idempotency-Key": the_key})

    with ThreadPoolExecutor(8) as pool:
        answers = list(pool.map(create, range(8)))
    assert [a.status_code for a in answers] == [201] * 8, [a.text for a in answers]
    assert len({a.json()["id"] for a in answers}) == 1
    assert count_predictions(live, username) == 1
    assert live.wait_for(answers[0].json()["id"], token=token)["status"] == "succeeded"


def test_a_key_older_than_a_day_starts_a_new_prediction(
    live: LiveStack, account: tuple[str, str, httpx.Client]
) -> None:
    username, _, api = account
    the_key = key()
    post: dict[str, Any] = {
        "json": {"input": {"text": "daily"}},
        "headers": {"Idempotency-Key": the_key},
    }
    first = api.post("/v1/models/replicate/hello-world/predictions", **post).json()
    with live.engine.begin() as conn:
        conn.execute(
            update(IdempotencyKey)
            .where(col(IdempotencyKey.key) == the_key)
            .values(created_at=utcnow() - timedelta(hours=25))
        )
    second = api.post("/v1/models/replicate/hello-world/predictions", **post)
    assert second.status_code == 201 and second.json()["id"] != first["id"]
    assert (
        api.post("/v1/models/replicate/hello-world/predictions", **post).json()["id"]
        == (second.json()["id"])
    )
    assert count_predictions(live, username) == 2


async def workflow_exists(live: LiveStack, prediction_id: str) -> bool:
    client = await connect(live.settings)
    try:
        await client.get_workflow_handle(f"prediction-{prediction_id}").describe()
    except RPCError as err:
        assert err.status == RPCStatusCode.NOT_FOUND, err
        return False
    return True


class Blackhole:
    """A port that accepts connections and never answers: an API pointed at it for Temporal
    records a prediction and then hangs before its workflow starts."""

    def __init__(self) -> None:
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(64)
        self.port = self.sock.getsockname()[1]

    def close(self) -> None:
        self.sock.close()


def test_a_retry_after_the_api_died_between_record_and_start_runs_it_once(
    live: LiveStack, account: tuple[str, str, httpx.Client]
) -> None:
    username, token, api = account
    the_key = key()
    hole = Blackhole()
    name = f"api-doomed-{os.urandom(2).hex()}"
    try:
        doomed = live.stack.start_api(
            name,
            free_port(),
            env={"REPLICANT_TEMPORAL_ADDRESS": f"127.0.0.1:{hole.port}"},
        )
        post = {
            "json": {"input": {"text": "survivor"}},
            "headers": {"Authorization": f"Bearer {token}", "Idempotency-Key": the_key},
        }
        outcome: list[object] = []

        def send() -> None:
            try:
                outcome.append(
                    httpx.post(
                        f"{doomed}/v1/models/replicate/hello-world/predictions",
                        timeout=120,
                        **post,  # type: ignore[arg-type]
                    )
                )
            except httpx.HTTPError as err:
                outcome.append(err)

        sender = threading.Thread(target=send)
        sender.start()
        # The doomed API has recorded the prediction and hangs on its way to Temporal.
        wait_until(
            lambda: count_predictions(live, username),
            what="the doomed API to record the prediction",
            interval=0.05,
        )
        assert count_predictions(live, username) == 1
        live.stack.stop(name, sig=signal.SIGKILL)
        sender.join(30)
        assert len(outcome) == 1 and isinstance(outcome[0], httpx.HTTPError)
    finally:
        live.stack.stop(name, sig=signal.SIGKILL)
        hole.close()
    with Session(live.engine) as session:
        recorded = session.exec(select(Prediction).where(Prediction.owner == username)).one()
    # It died before starting the workflow: only the retry can start it.
    assert asyncio.run(workflow_exists(live, recorded.id)) is False
    retried = api.post(
        "/v1/models/replicate/hello-world/predictions",
        json=post["json"],
        headers={"Idempotency-Key": the_key},
    )
    assert retried.status_code == 201, retried.text
    assert retried.json()["id"] == recorded.id
    final = live.wait_for(retried.json()["id"], token=token)
    assert final["status"] == "succeeded" and final["output"] == "hello survivor"
    assert count_predictions(live, username) == 1
    again = api.post(
        "/v1/models/replicate/hello-world/predictions",
        json=post["json"],
        headers={"Idempotency-Key": the_key},
    )
    assert again.json()["id"] == final["id"] and again.json()["status"] == "succeeded"
    assert count_predictions(live, username) == 1


def test_a_training_create_retried_with_the_key_trains_once(
    live: LiveStack, account: tuple[str, str, httpx.Client]
) -> None:
    username, token, api = account
    destination = new_destination(live, token, "idem-tuned")
    the_key = key()
    official = replicate.Client(
        api_token=token, base_url=live.url, headers={"Idempotency-Key": the_key}
    )
    create: dict[str, Any] = {
        "model": "replicant/ngram",
        "version": ngram_version(live),
        "input": {"text": data_uri(corpus(7, 300))},
        "destination": destination,
    }
    first = official.trainings.create(**create)
    again = official.trainings.create(**create)
    assert again.id == first.id
    assert wait_training(first).status == "succeeded", first.error
    assert official.trainings.create(**create).status == "succeeded"
    with Session(live.engine) as session:
        made = session.exec(select(Training).where(Training.owner == username)).all()
    assert [t.id for t in made] == [first.id]
    assert versions_of(live, token, destination) == [first.output["version"].split(":")[1]]
    other = api.post(
        f"/v1/models/replicant/ngram/versions/{create['version']}/trainings",
        json={"input": {"text": data_uri(corpus(8, 300))}, "destination": destination},
        headers={"Idempotency-Key": the_key},
    )
    assert other.status_code == 422, other.text
    assert [f["field"] for f in other.json()["invalid_fields"]] == ["Idempotency-Key"]
