"""Why a prediction waits: a one-slot hardware queue with several accounts waiting, each
prediction's reason, its place in the fair order and its estimated start, held against when
it really started (docs/usage.md, "Why it waits")."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
from sqlalchemy.engine import Engine
from sqlmodel import Session

from api.queueboard import QueueBoard
from replicant.db import init_db, make_engine
from replicant.queueing import QueuedRun, estimated_wait, fair_order
from replicant.settings import Settings
from replicant.tables import Prediction
from tests.conftest import LiveStack
from tests.fairkit import account, predict, sleep_model_on_one_slot
from tests.trainkit import CorpusServer, corpus, new_destination, ngram_version
from tests.waiting import wait_until

SECONDS = 2.0  # every run of the scenario sleeps this long
NOW = datetime(2026, 12, 7, 12, 0, tzinfo=UTC)


def _at(stamp: str) -> datetime:
    return datetime.fromisoformat(stamp.replace("Z", "+00:00"))


def _create(client: httpx.Client, model: str) -> dict[str, Any]:
    """The create answer of a prediction of the sleep model ``model``."""
    response = client.post(f"/v1/models/{model}/predictions", json={"input": {"seconds": SECONDS}})
    assert response.status_code == 201, response.text
    body: dict[str, Any] = response.json()
    return body


def _get(client: httpx.Client, prediction_id: str) -> dict[str, Any]:
    body: dict[str, Any] = client.get(f"/v1/predictions/{prediction_id}").json()
    return body


def test_a_queued_prediction_says_why_where_and_when_it_starts(live: LiveStack) -> None:
    model = sleep_model_on_one_slot(live, "queue-sleep")
    _, token_a = account(live, "qa")
    _, token_b = account(live, "qb")
    _, token_c = account(live, "qc")
    with (
        live.client(token_a) as a,
        live.client(token_b) as b,
        live.client(token_c) as c,
    ):
        # A fresh version's first run boots its model process while it holds the slot.
        first = predict(a, model, SECONDS)
        booting = wait_until(
            lambda: _get(a, first),
            lambda p: p["status"] != "starting" or p["queue"]["reason"] != "queued for gpu-t4",
            what="the first run to hold the slot",
        )
        assert booting["status"] == "starting", booting
        assert booting["queue"] == {"reason": "booting the model", "hardware": "gpu-t4"}
        live.wait_for(first, token=token_a)

        # A holds the slot; B queues two, then C one: C's comes second (accounts take turns).
        blocker = predict(a, model, SECONDS)
        live.wait_for(blocker, lambda p: p["status"] != "starting", token=token_a)
        answers = [_create(b, model), _create(b, model), _create(c, model)]
        b1, b2, c1 = (answer["id"] for answer in answers)
        seen = {pid: _get(client, pid) for pid, client in ((b1, b), (b2, b), (c1, c))}
        listed = {
            p["id"]: p
            for client in (b, c)
            for p in client.get("/v1/predictions").json()["results"]
            if p["status"] == "starting"
        }
        done = {
            pid: live.wait_for(pid, token=token, timeout=120)
            for pid, token in ((b1, token_b), (b2, token_b), (c1, token_c))
        }
        metrics = httpx.get(f"{live.url}/metrics").text

    # The create answers say it too: each its place when it was created (C's turn comes
    # before B's second run).
    for answer in answers:
        assert answer["status"] == "starting", answer
        assert answer["queue"]["reason"] == "queued for gpu-t4", answer
    assert [answer["queue"]["position"] for answer in answers] == [1, 2, 2]
    # So do the lists: each waiting prediction in its account's list as its GET shows it.
    assert set(listed) == {b1, b2, c1}
    for pid, shown in seen.items():
        assert {**listed[pid]["queue"], "estimated_start": None} == {
            **shown["queue"],
            "estimated_start": None,
        }
    for shown in seen.values():
        assert shown["status"] == "starting", shown
        assert shown["queue"]["reason"] == "queued for gpu-t4"
        assert shown["queue"]["hardware"] == "gpu-t4"
    assert [seen[pid]["queue"]["position"] for pid in (b1, c1, b2)] == [1, 2, 3]
    # The order the fair queue served them in is the order their places said.
    assert sorted(done, key=lambda pid: _at(done[pid]["started_at"])) == [b1, c1, b2]
    for pid, shown in seen.items():
        ended = done[pid]
        assert ended["status"] == "succeeded", ended
        created = _at(shown["created_at"])
        estimated = (_at(shown["queue"]["estimated_start"]) - created).total_seconds()
        real = (_at(ended["started_at"]) - created).total_seconds()
        assert real / 2 <= estimated <= real * 2, (pid, estimated, real)
        # Once started, it no longer says it waits.
        assert "queue" not in ended
    # /metrics has each run's wait, by hardware.
    count = next(
        line
        for line in metrics.splitlines()
        if line.startswith('replicant_queue_wait_seconds_count{hardware="gpu-t4"}')
    )
    assert float(count.split()[-1]) >= 5


def test_a_waiting_training_says_why_in_its_create_answer_and_the_list(live: LiveStack) -> None:
    _, token = account(live, "qt")
    destination = new_destination(live, token, "queued-ngram")
    server = CorpusServer(held=True)  # the training waits until its corpus is served
    try:
        url = server.add("corpus.txt", corpus(31, 64))
        with live.client(token) as client:
            response = client.post(
                f"/v1/models/replicant/ngram/versions/{ngram_version(live)}/trainings",
                json={"input": {"text": url}, "destination": destination},
            )
            assert response.status_code == 201, response.text
            created = response.json()
            listed = client.get("/v1/trainings").json()["results"]
            shown = _training(client, created["id"])
            server.release()
            ended = wait_until(
                lambda: _training(client, created["id"]),
                lambda t: t["status"] not in ("starting", "processing"),
                what="the training to end",
                timeout=180,
            )
            relisted = client.get("/v1/trainings").json()["results"]
    finally:
        server.close()
    assert created["status"] == "starting", created
    for waiting in (created, listed[0], shown):
        assert waiting["id"] == created["id"]
        assert waiting["queue"]["reason"] == "queued for cpu", waiting
        assert waiting["queue"]["hardware"] == "cpu"
        assert waiting["queue"]["position"] >= 1
    assert ended["status"] == "succeeded", ended
    assert "queue" not in ended and "queue" not in relisted[0]


def _training(client: httpx.Client, training_id: str) -> dict[str, Any]:
    body: dict[str, Any] = client.get(f"/v1/trainings/{training_id}").json()
    return body


def _run(run_id: str, owner: str, at: int, version: str = "v") -> QueuedRun:
    return QueuedRun(run_id, owner, version, NOW + timedelta(seconds=at))


def test_fair_order_takes_accounts_in_turns_by_weight() -> None:
    waiting = [_run(f"a{i}", "a", i) for i in range(4)] + [_run("b0", "b", 10), _run("b1", "b", 11)]
    assert [r.id for r in fair_order(waiting, {})] == ["a0", "b0", "a1", "b1", "a2", "a3"]
    # Weight 2: two of a's runs for each of b's.
    assert [r.id for r in fair_order(waiting, {"a": 2.0})] == ["a0", "a1", "b0", "a2", "a3", "b1"]


def test_estimated_wait_plays_the_queue_out_on_the_slots() -> None:
    running = [QueuedRun("r", "a", "slow", NOW, started_at=NOW - timedelta(seconds=1))]
    ahead = [_run("x", "b", 0, "fast"), _run("y", "c", 0, "fast")]
    seconds = {"slow": 5.0, "fast": 2.0}
    # One slot: the running run's last 4 s, then two runs of 2 s.
    assert estimated_wait(ahead, running, 1, seconds, NOW) == 8.0
    # Two slots: x takes the free one (0-2 s), y the same slot after it (2-4 s).
    assert estimated_wait(ahead, running, 2, seconds, NOW) == 4.0
    assert estimated_wait([], [], 1, seconds, NOW) == 0.0


def _waiting(engine: Engine, run_id: str, owner: str, at: int) -> Prediction:
    row = Prediction(
        id=run_id,
        owner=owner,
        model="m/m",
        version="v",
        hardware="gpu-t4",
        created_at=NOW + timedelta(seconds=at),
    )
    with Session(engine, expire_on_commit=False) as session:
        session.add(row)
        session.commit()
    return row


async def test_concurrent_requests_share_one_read_of_the_queue_and_a_new_run_gets_a_new_one(
    tmp_path: Path,
) -> None:
    settings = Settings(data_dir=tmp_path)
    engine = make_engine(settings.resolved_database_url)
    init_db(engine)
    rows = [_waiting(engine, f"a{i}", "a", i) for i in range(5)]
    rows += [_waiting(engine, f"b{i}", "b", 10 + i) for i in range(5)]
    board = QueueBoard(engine, settings)

    places = await asyncio.gather(*(board.place(row) for row in rows * 4))

    # Forty requests, one read; each place in the fair order (accounts take turns).
    assert board.reads == 1
    fair = ["a0", "b0", "a1", "b1", "a2", "b2", "a3", "b3", "a4", "b4"]
    for row, place in zip(rows * 4, places, strict=True):
        assert place is not None
        assert place.position == fair.index(row.id) + 1, (row.id, place)
    # A run created since the last read is never guessed at: it is read anew, in its place.
    newer = _waiting(engine, "c0", "c", 20)
    place = await board.place(newer)
    assert board.reads == 2
    # c's first run takes the first turn after a's and b's first runs.
    assert place is not None and place.position == 3
    engine.dispose()


async def test_a_request_that_asks_during_a_read_of_an_older_queue_gets_a_newer_read(
    tmp_path: Path,
) -> None:
    settings = Settings(data_dir=tmp_path)
    engine = make_engine(settings.resolved_database_url)
    init_db(engine)
    first = _waiting(engine, "a0", "a", 0)
    board = QueueBoard(engine, settings)
    earlier = asyncio.create_task(board.place(first))
    while not board.flights:  # until the first read is under way
        await asyncio.sleep(0)
    # A run the read under way cannot list (never stored, as one that left the queue).
    unseen = Prediction(id="x0", owner="x", model="m/m", version="v", hardware="gpu-t4")
    later = await board.place(unseen)
    assert (await earlier) is not None
    assert board.reads == 2
    assert later is not None and later.position == 2
    engine.dispose()
