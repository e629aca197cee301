"""Creates survive a crash between writing the row and starting the workflow.

A stack of its own, with a short start grace and a reconciler that runs every second: an API
process killed (SIGKILL) between the two steps, or mid-burst, leaves no row ``starting`` for
good; every create that got its 201 runs to the end.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
import time
from collections.abc import Iterator
from datetime import datetime, timedelta
from typing import Any

import httpx
import pytest
from sqlmodel import Session, col, select
from temporalio.client import Client, ScheduleActionExecutionStartWorkflow, WorkflowExecutionStatus
from temporalio.testing import ActivityEnvironment

from activities.reconcile import NEVER_STARTED, ReconcileActivities
from api.startguard import settle_start
from replicant import readmodel
from replicant.contracts import PredictionRequest, ReconcileStarts
from replicant.devstack import free_port
from replicant.ids import new_id
from replicant.storage import open_store
from replicant.tables import Prediction, Training
from replicant.temporal import connect, workflow_exists
from replicant.timeutil import utcnow
from tests import faultyapi
from tests.conftest import TERMINAL, LiveStack, own_stack
from tests.deploykit import new_deployment
from tests.test_operability import scrape
from tests.trainkit import data_uri
from tests.waiting import async_wait_until, wait_until
from workers.schedules import START_RECONCILE_SCHEDULE
from workflows.prediction import PredictionWorkflow

# Longer than api.startguard.START_RPC_TIMEOUT: a start still in flight is never settled.
GRACE = 12.0


@pytest.fixture(scope="module")
def crashy(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveStack]:
    with own_stack(tmp_path_factory, "crash", start_grace=GRACE, reconcile_interval=1.0) as live:
        yield live


def rows(live: LiveStack, owner: str) -> dict[str, str]:
    """Status of every prediction of ``owner``, by id, read from the database itself."""
    with Session(live.engine) as session:
        found = session.exec(
            select(Prediction.id, Prediction.status).where(col(Prediction.owner) == owner)
        ).all()
    return dict(found)


def settled(live: LiveStack, kind: type[Prediction] | type[Training], row_id: str) -> Any:
    """The row once it has left ``starting`` (grace plus a few reconcile passes at most)."""

    def read() -> Any:
        with Session(live.engine) as session:
            row = session.get(kind, row_id)
        assert row is not None
        return row

    return wait_until(
        read,
        lambda row: row.status != "starting",
        what=f"{kind.__name__} {row_id} to leave starting",
        timeout=GRACE + 60,
        interval=0.5,
    )


def account(live: LiveStack, name: str) -> tuple[str, str]:
    token = live.new_account(name)
    with live.client(token) as api:
        username: str = api.get("/v1/account").json()["username"]
    return username, token


def faulty_api(live: LiveStack, name: str) -> str:
    """A second API process that SIGKILLs itself after writing a row (tests/faultyapi.py)."""
    return live.stack.start_api(name, free_port(), command=faultyapi.command("kill"))


def post_to_dying_api(
    url: str, token: str, path: str, body: dict[str, Any], headers: dict[str, str] | None = None
) -> None:
    with pytest.raises(httpx.TransportError):
        httpx.post(
            f"{url}{path}",
            json=body,
            headers={"Authorization": f"Bearer {token}", **(headers or {})},
            timeout=60,
        )


def test_a_prediction_whose_api_died_before_its_workflow_started_is_failed_with_a_reason(
    crashy: LiveStack,
) -> None:
    username, token = account(crashy, "crash")
    url = faulty_api(crashy, "api-fault-prediction")
    post_to_dying_api(
        url, token, "/v1/models/replicate/hello-world/predictions", {"input": {"text": "x"}}
    )
    [(prediction_id, status)] = rows(crashy, username).items()
    assert status == "starting"
    row = settled(crashy, Prediction, prediction_id)
    assert row.status == "failed"
    assert row.error == NEVER_STARTED.format(kind="prediction")
    assert row.completed_at is not None
    with crashy.client(token) as api:
        shown = api.get(f"/v1/predictions/{prediction_id}").json()
    assert shown["status"] == "failed" and "never ran" in shown["error"]


def test_a_retry_with_the_key_of_a_prediction_failed_for_never_starting_creates_it_anew(
    crashy: LiveStack,
) -> None:
    """Past the grace the row is the reconciler's: it fails it and forgets its
    Idempotency-Key, so the client's retry with that key runs the prediction after all."""
    username, token = account(crashy, "crashkey")
    url = faulty_api(crashy, "api-fault-key")
    path = "/v1/models/replicate/hello-world/predictions"
    body, key = {"input": {"text": "again"}}, {"Idempotency-Key": f"key-{new_id()}"}
    post_to_dying_api(url, token, path, body, key)
    [(first_id, _)] = rows(crashy, username).items()
    assert settled(crashy, Prediction, first_id).status == "failed"
    with crashy.client(token) as api:
        retried = api.post(path, json=body, headers=key)
        assert retried.status_code == 201, retried.text
        assert retried.json()["id"] != first_id
        again = api.post(path, json=body, headers=key)
    assert again.json()["id"] == retried.json()["id"]
    final = crashy.wait_for(retried.json()["id"], token=token)
    assert (final["status"], final["output"]) == ("succeeded", "hello again")
    assert len(rows(crashy, username)) == 2


def test_a_deployment_prediction_whose_api_died_is_failed_with_a_reason(
    crashy: LiveStack,
) -> None:
    username, token = account(crashy, "crashdep")
    with crashy.client(token) as api:
        new_deployment(api, name="dep")
    url = faulty_api(crashy, "api-fault-deployment")
    post_to_dying_api(
        url, token, f"/v1/deployments/{username}/dep/predictions", {"input": {"text": "x"}}
    )
    [(prediction_id, _)] = rows(crashy, username).items()
    row = settled(crashy, Prediction, prediction_id)
    assert (row.status, row.deployment) == ("failed", f"{username}/dep")
    assert row.error == NEVER_STARTED.format(kind="prediction")


def test_a_waiting_deployment_create_answers_by_its_deadline_while_its_wake_hangs(
    crashy: LiveStack,
) -> None:
    """The wake of the deployment's controller after the start never answers: a create with
    ``Prefer: wait`` answers all the same, by its deadline, with the prediction waiting."""
    _, token = account(crashy, "stallwake")
    with crashy.client(token) as api:
        owner, name = new_deployment(api)
    url = crashy.stack.start_api(
        "api-stall-wake", free_port(), command=faultyapi.command("stall-wake")
    )
    try:
        response = httpx.post(
            f"{url}/v1/deployments/{owner}/{name}/predictions",
            json={"input": {"text": "stalled"}},
            headers={"Authorization": f"Bearer {token}", "Prefer": "wait=1"},
            timeout=60,
        )
    finally:
        crashy.stack.stop("api-stall-wake")
    assert response.status_code == 201, response.text
    created = response.json()
    assert created["status"] == "starting"
    with crashy.client(token) as api:
        assert api.post(f"/v1/predictions/{created['id']}/cancel").status_code == 200
    assert crashy.wait_for(created["id"], token=token)["status"] == "canceled"


def test_a_training_whose_api_died_before_its_workflow_started_is_failed_with_a_reason(
    crashy: LiveStack,
) -> None:
    username, token = account(crashy, "crashtrain")
    with crashy.client(token) as api:
        version = api.get("/v1/models/replicant/ngram").json()["latest_version"]["id"]
        created = api.post(
            "/v1/models", json={"owner": username, "name": "tuned", "visibility": "private"}
        )
        assert created.status_code == 201, created.text
    url = faulty_api(crashy, "api-fault-training")
    post_to_dying_api(
        url,
        token,
        f"/v1/models/replicant/ngram/versions/{version}/trainings",
        {"destination": f"{username}/tuned", "input": {"text": data_uri("a b c d")}},
    )
    with Session(crashy.engine) as session:
        [training_id] = session.exec(
            select(Training.id).where(col(Training.owner) == username)
        ).all()
    row = settled(crashy, Training, training_id)
    assert row.status == "failed"
    assert row.error == NEVER_STARTED.format(kind="training")


async def test_every_create_of_a_burst_that_got_201_finishes_when_the_api_is_killed_mid_burst(
    crashy: LiveStack,
) -> None:
    username, token = account(crashy, "burst")
    url = crashy.stack.start_api("api-burst", free_port())
    path = "/v1/models/replicate/hello-world/predictions"
    created: list[str] = []
    enough = asyncio.Event()

    async def create(client: httpx.AsyncClient, n: int) -> None:
        with contextlib.suppress(httpx.TransportError):
            response = await client.post(path, json={"input": {"text": f"burst {n}"}})
            if response.status_code == 201:
                created.append(response.json()["id"])
                if len(created) >= 3:
                    enough.set()

    headers = {"Authorization": f"Bearer {token}"}
    async with httpx.AsyncClient(base_url=url, headers=headers, timeout=60) as client:
        burst = [asyncio.create_task(create(client, n)) for n in range(20)]
        await asyncio.wait_for(enough.wait(), 60)
        crashy.stack.stop("api-burst", sig=signal.SIGKILL)
        await asyncio.gather(*burst)
    assert len(created) >= 3
    for prediction_id in created:
        final = await asyncio.to_thread(crashy.wait_for, prediction_id, token=token)
        assert final["status"] == "succeeded", final
    # The rest never got a 201: each ran (its workflow had started) or failed with a reason.
    deadline = time.monotonic() + GRACE + 60
    while "starting" in rows(crashy, username).values() and time.monotonic() < deadline:
        await asyncio.sleep(0.5)
    statuses = rows(crashy, username)
    assert set(statuses.values()) <= TERMINAL, statuses
    with Session(crashy.engine) as session:
        for row in session.exec(select(Prediction).where(col(Prediction.owner) == username)):
            if row.status == "failed":
                assert row.error == NEVER_STARTED.format(kind="prediction")
                assert row.id not in created


async def parked(live: LiveStack, prediction_id: str) -> Any:
    """A prediction recorded ``starting`` whose workflow waits on a queue nobody polls."""
    with live.client() as api:
        version = api.get("/v1/models/replicate/hello-world").json()["latest_version"]["id"]
    req = PredictionRequest(
        id=prediction_id,
        owner=live.settings.default_account,
        model="replicate/hello-world",
        version=version,
        input={"text": "parked"},
        created_at=utcnow(),
        recorded=True,
    )
    readmodel.insert_prediction(live.engine, req)
    client = await connect(live.settings)
    return await client.start_workflow(
        PredictionWorkflow.run, req, id=f"prediction-{req.id}", task_queue="nobody-polls-this"
    )


async def test_an_uncertain_start_is_settled_by_asking_temporal_not_by_starting_twice(
    crashy: LiveStack,
) -> None:
    client = await connect(crashy.settings)
    attempts: list[str] = []

    async def start_again() -> None:
        attempts.append("start")

    # Nothing under this id: the second try is made.
    assert await settle_start(client, f"prediction-{new_id()}", start_again)
    assert attempts == ["start"]
    # A workflow Temporal took (the first call's answer was lost): no second try.
    handle = await parked(crashy, new_id())
    assert await workflow_exists(client, handle.id)
    assert await settle_start(client, handle.id, start_again)
    assert attempts == ["start"]
    # Nothing under this id and the grace nearly over: no second try (the reconciler's turn).
    assert not await settle_start(
        client, f"prediction-{new_id()}", start_again, retry_before=utcnow()
    )
    assert attempts == ["start"]
    await handle.terminate()


async def passes_done_since(client: Client, since: datetime) -> int:
    """Reconcile passes (runs of the Schedule) started at or after ``since`` that completed."""
    described = await client.get_schedule_handle(START_RECONCILE_SCHEDULE).describe()
    done = 0
    for action in described.info.recent_actions:
        started = action.action
        if action.started_at < since or not isinstance(
            started, ScheduleActionExecutionStartWorkflow
        ):
            continue
        run = client.get_workflow_handle(started.workflow_id, run_id=started.first_execution_run_id)
        if (await run.describe()).status == WorkflowExecutionStatus.COMPLETED:
            done += 1
    return done


async def test_the_reconciler_leaves_a_row_whose_workflow_waits_in_its_queue(
    crashy: LiveStack,
) -> None:
    prediction_id = new_id()
    handle = await parked(crashy, prediction_id)
    # Past the grace, and two whole reconcile passes later, the row is as it was.
    client = await connect(crashy.settings)
    past_grace = utcnow() + timedelta(seconds=GRACE)
    await async_wait_until(
        lambda: passes_done_since(client, past_grace),
        lambda done: done >= 2,
        what="two reconcile passes started after the grace to complete",
        timeout=GRACE + 60,
        interval=0.5,
    )
    with Session(crashy.engine) as session:
        row = session.get(Prediction, prediction_id)
    assert row is not None and row.status == "starting"
    await handle.terminate()


class CountingPasses(ReconcileActivities):
    """Reconcile passes that remember every workflow id they asked Temporal about."""

    asked: list[str]

    async def _missing(self, workflow_ids: list[str]) -> list[str]:
        self.asked.extend(workflow_ids)
        return await super()._missing(workflow_ids)


async def counting_passes(live: LiveStack) -> CountingPasses:
    passes = CountingPasses(live.engine, await connect(live.settings), open_store(live.settings))
    passes.asked = []
    return passes


async def test_a_reconcile_pass_asks_temporal_about_its_budget_of_rows_at_most(
    crashy: LiveStack,
) -> None:
    """A deep queue is gone over a slice a pass, not all at once beside its drain: each pass
    asks about ``asks`` workflows at most, and the passes together reach every queued row,
    once each."""
    handles = [await parked(crashy, new_id()) for _ in range(3)]
    wanted = {handle.id for handle in handles}
    with Session(crashy.engine) as session:
        starting = len(
            session.exec(select(Prediction.id).where(Prediction.status == "starting")).all()
        )
    passes = await counting_passes(crashy)
    per_pass: list[int] = []
    # Enough passes of 2 for every row `starting` now, and one more.
    for _ in range(starting // 2 + 2):
        job = ReconcileStarts(grace=0, asks=2)
        result = await ActivityEnvironment().run(passes.reconcile_starts, job)
        per_pass.append(result.asked)
        if wanted <= set(passes.asked):
            break
    assert sum(per_pass) == len(passes.asked)
    assert max(per_pass) == 2, per_pass
    assert {w: passes.asked.count(w) for w in wanted} == dict.fromkeys(wanted, 1)
    with Session(crashy.engine) as session:
        rows = [session.get(Prediction, w.removeprefix("prediction-")) for w in wanted]
    assert [row.status if row else None for row in rows] == ["starting"] * 3
    for handle in handles:
        await handle.terminate()


async def test_the_reconciler_asks_temporal_about_a_queued_row_once(crashy: LiveStack) -> None:
    """A deep queue costs Temporal one question per prediction, not one on every pass."""
    prediction_id = new_id()
    handle = await parked(crashy, prediction_id)
    passes = await counting_passes(crashy)
    # Grace 0: every row `starting` now is the pass's to check.
    for _ in range(2):
        await ActivityEnvironment().run(passes.reconcile_starts, ReconcileStarts(grace=0))
    assert passes.asked.count(f"prediction-{prediction_id}") == 1
    with Session(crashy.engine) as session:
        row = session.get(Prediction, prediction_id)
    assert row is not None and row.status == "starting"
    await handle.terminate()


async def test_queue_backlog_counts_predictions_waiting_for_a_worker(crashy: LiveStack) -> None:
    """With the hardware's workers gone (scaled to zero), each queued prediction counts once;
    the worker back, they all run."""
    _, token = account(crashy, "backlog")
    key = ("replicant_queue_backlog", frozenset({("hardware", "cpu")}))
    crashy.stack.stop("worker")
    try:
        with crashy.client(token) as api:
            created = [
                api.post(
                    "/v1/models/replicate/hello-world/predictions",
                    json={"input": {"text": f"queued {n}"}},
                )
                for n in range(3)
            ]
        assert [r.status_code for r in created] == [201] * 3
        deadline = time.monotonic() + 60
        while True:
            backlog = scrape(f"{crashy.url}/metrics").get(key, 0.0)
            if backlog >= 3 or time.monotonic() > deadline:
                break
            await asyncio.sleep(0.5)
        assert backlog >= 3
    finally:
        crashy.stack.start_worker()
    for response in created:
        final = await asyncio.to_thread(crashy.wait_for, response.json()["id"], token=token)
        assert final["status"] == "succeeded", final


async def runs_of(live: LiveStack, workflow_id: str) -> list[str]:
    """The closed runs under ``workflow_id``, once visibility lists at least one."""
    client = await connect(live.settings)
    query = f"WorkflowId = '{workflow_id}' AND ExecutionStatus != 'Running'"
    deadline = time.monotonic() + 60
    while True:
        runs = [w.run_id async for w in client.list_workflows(query)]
        if runs or time.monotonic() > deadline:
            return runs
        await asyncio.sleep(0.5)


async def test_a_start_whose_answer_was_lost_is_settled_by_asking_temporal(
    crashy: LiveStack,
) -> None:
    """Temporal took the start but the API never heard so: the create still answers 201, and
    the prediction (and a training) runs once."""
    username, token = account(crashy, "lost")
    url = crashy.stack.start_api("api-lost-answer", free_port(), command=faultyapi.command("lose"))
    headers = {"Authorization": f"Bearer {token}"}
    async with httpx.AsyncClient(base_url=url, headers=headers, timeout=60) as client:
        response = await client.post(
            "/v1/models/replicate/hello-world/predictions", json={"input": {"text": "lost"}}
        )
        assert response.status_code == 201, response.text
        prediction_id = response.json()["id"]
        waited = await client.post(
            "/v1/models/replicate/hello-world/predictions",
            json={"input": {"text": "lost wait"}},
            headers={"Prefer": "wait"},
        )
        assert waited.status_code == 201, waited.text
        # Checked at once: the stack's retention removes outputs within seconds.
        for created_id, text in ((prediction_id, "lost"), (waited.json()["id"], "lost wait")):
            final = await asyncio.to_thread(crashy.wait_for, created_id, token=token)
            assert (final["status"], final["output"]) == ("succeeded", f"hello {text}")
        version = (await client.get("/v1/models/replicant/ngram")).json()["latest_version"]["id"]
        created = await client.post(
            "/v1/models", json={"owner": username, "name": "tuned", "visibility": "private"}
        )
        assert created.status_code == 201, created.text
        training = await client.post(
            f"/v1/models/replicant/ngram/versions/{version}/trainings",
            json={
                "destination": f"{username}/tuned",
                "input": {"text": data_uri("alpha beta gamma delta. " * 20)},
            },
        )
        assert training.status_code == 201, training.text
    crashy.stack.stop("api-lost-answer")
    for created_id in (prediction_id, waited.json()["id"]):
        assert len(await runs_of(crashy, f"prediction-{created_id}")) == 1
    training_id = training.json()["id"]
    assert len(await runs_of(crashy, f"training-{training_id}")) == 1
    with Session(crashy.engine) as session:
        row = session.get(Training, training_id)
    assert row is not None and row.status == "succeeded", row
