"""A push's build is a Temporal workflow on the workers: it outlives the API that received it.

The model here waits, while its predictor is imported (the build's schema probe), until the
test opens a gate file: the build is held mid-way for as long as the test needs, without
sleeps. The probe runs in the model sandbox, which sees only its own /tmp: the model marks
itself waiting there, and the test opens the gate of every probe so marked (``Gate``).
"""

from __future__ import annotations

import asyncio
import contextlib
import glob
import json
import os
import signal
import tempfile
import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, cast

import httpx
import pytest
from fastapi.testclient import TestClient
from sqlalchemy.engine import Engine
from sqlmodel import Session, select
from temporalio.api.enums.v1 import EventType
from temporalio.client import WorkflowExecutionStatus

from activities.builds import BuildAbandoned, BuildLog
from api.app import create_app
from api.push import WAITING_FOR_A_WORKER
from replicant import builds
from replicant.accounts import create_account
from replicant.archives import pack_model
from replicant.cogmodel import CogConfigError
from replicant.devstack import free_port
from replicant.ids import new_id
from replicant.objectkeys import build_archive
from replicant.settings import Settings
from replicant.tables import Build
from replicant.temporal import connect
from replicant.timeutil import utcnow
from tests.conftest import LiveStack
from tests.observe import SCHEDULED, STARTED, build_activity
from tests.waiting import async_wait_until, wait_until
from tests.workflow_runs import all_events

GATED_MODEL = """\
import time
from pathlib import Path

from cog import BasePredictor

# The build's probe imports this module: it waits here until the test opens the gate.
Path("/tmp/{token}.waiting").touch()
while not Path("/tmp/{token}.open").exists():
    time.sleep(0.05)


class Predictor(BasePredictor):
    def predict(self, text: str = "gate") -> str:
        return "through the " + text
"""
COG_YAML = 'build:\n  python_version: "3.11"\npredict: "predict.py:Predictor"\n'
BUILD_TIMEOUT = 300


class Gate:
    """The gate of a gated model: ``touch`` opens it for every import of the model that waits
    now or later, its probe's and its model processes' (each in a sandbox with a /tmp of its
    own, a directory on this host)."""

    opened: set[str] = set()
    _watcher: threading.Thread | None = None

    def __init__(self, token: str) -> None:
        self.token = token

    def touch(self) -> None:
        Gate.opened.add(self.token)
        Gate._open_waiting()
        if Gate._watcher is None:
            Gate._watcher = threading.Thread(target=Gate._watch, daemon=True)
            Gate._watcher.start()

    @staticmethod
    def _open_waiting() -> None:
        tmp = tempfile.gettempdir()
        for token in list(Gate.opened):
            # The probe's /tmp is replicant-probe-*/, a model process's replicant-model-*/tmp/.
            markers = [*glob.glob(f"{tmp}/*/{token}.waiting")]
            markers += glob.glob(f"{tmp}/*/*/{token}.waiting")
            for marker in [*markers, f"{tmp}/{token}.waiting"]:
                waiting = Path(marker)
                if waiting.exists():
                    with contextlib.suppress(OSError):
                        waiting.with_name(f"{token}.open").touch()

    @staticmethod
    def _watch() -> None:
        while True:
            Gate._open_waiting()
            time.sleep(0.05)


def gated_model(root: Path) -> tuple[bytes, Gate]:
    """A packed model whose build waits for the returned gate."""
    token = f"gate-{os.urandom(6).hex()}"
    src = root / "model"
    src.mkdir(parents=True)
    (src / "cog.yaml").write_text(COG_YAML)
    (src / "predict.py").write_text(GATED_MODEL.format(token=token))
    with (root / "model.tar.gz").open("w+b") as archive:
        pack_model(src, archive)
        archive.seek(0)
        return archive.read(), Gate(token)


def events(lines: Iterator[str]) -> Iterator[dict[str, Any]]:
    for line in lines:
        if line.strip():
            yield json.loads(line)


def headers(live: LiveStack, **extra: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {live.token}", **extra}


def build_status(client: httpx.Client, live: LiveStack, build_id: str) -> dict[str, Any]:
    """``GET /v1/builds/{id}`` as JSON."""
    response = client.get(f"{live.url}/v1/builds/{build_id}", headers=headers(live))
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    return body


async def test_a_push_survives_a_restart_of_the_api_that_received_it(
    live: LiveStack, tmp_path: Path
) -> None:
    body, gate = gated_model(tmp_path)
    ref = f"{live.settings.default_account}/gated-{tmp_path.name[-6:].lower()}"
    # An API process of its own, so the stack's other API stays up for the rest of the suite.
    port = free_port()
    url = live.stack.start_api("api-push", port)
    ndjson = headers(live, Accept="application/x-ndjson", **{"Content-Type": "application/gzip"})
    timeout = httpx.Timeout(30.0, read=BUILD_TIMEOUT)
    with httpx.stream(
        "POST",
        f"{url}/v1/models/{ref}/versions",
        params={"create": "true"},
        content=body,
        headers=ndjson,
        timeout=timeout,
    ) as response:
        assert response.status_code == 200
        build_id = response.headers["Replicant-Build"]
        seen = []
        for event in events(response.iter_lines()):
            assert event["event"] == "log", event
            seen.append(event["message"])
            if "deriving the schema" in event["message"]:
                break  # the build now waits in the predictor's import
        else:
            raise AssertionError(f"the stream ended before the probe: {seen}")
        live.stack.stop("api-push", sig=signal.SIGKILL)

    url = live.stack.start_api("api-push", port)
    try:
        with httpx.Client(base_url=url, headers=headers(live), timeout=timeout) as client:
            during = client.get(f"/v1/builds/{build_id}").json()
            assert during["status"] == "processing"
            assert "deriving the schema from the predictor" in during["logs"]
            assert client.get(f"/v1/models/{ref}").status_code == 404  # no version yet
            gate.touch()
            with client.stream(
                "GET", f"/v1/builds/{build_id}", headers={"Accept": "application/x-ndjson"}
            ) as follow:
                followed = list(events(follow.iter_lines()))
            assert [e["event"] for e in followed[:-1]] == ["log"] * (len(followed) - 1)
            assert followed[0]["message"] == seen[0]  # following replays the log from the start
            last = followed[-1]
            assert last["event"] == "version" and last["status"] == 201, last
            version = last["version"]["id"]
            assert client.get(f"/v1/models/{ref}").json()["latest_version"]["id"] == version
            done = client.get(f"/v1/builds/{build_id}").json()
            assert done["status"] == "succeeded" and done["version"]["id"] == version
            times = [datetime.fromisoformat(done[k]) for k in ("created_at", "started_at")]
            times.append(datetime.fromisoformat(done["completed_at"]))
            assert times == sorted(times), done
            assert done["started_at"] == during["started_at"] is not None
            ran = client.post(
                f"/v1/models/{ref}/predictions",
                json={"input": {"text": "restart"}},
                headers={"Prefer": "wait"},
            ).json()
            assert ran["output"] == "through the restart"
    finally:
        live.stack.stop("api-push")

    # The build ran as a workflow on the build queue, findable in the Temporal UI.
    temporal = await connect(live.settings)
    described = await temporal.get_workflow_handle(f"build-{build_id}").describe()
    assert described.workflow_type == "BuildVersionWorkflow"
    assert described.task_queue == live.settings.build_queue
    assert described.status == WorkflowExecutionStatus.COMPLETED
    query = f"ReplicantModel = '{ref}' AND ReplicantStatus = 'succeeded'"
    deadline = time.monotonic() + 30  # visibility records are written after the history
    while f"build-{build_id}" not in [w.id async for w in temporal.list_workflows(query)]:
        assert time.monotonic() < deadline, f"build-{build_id} not found by {query!r}"
        await asyncio.sleep(0.2)


def test_a_build_is_visible_only_to_the_account_that_pushed(
    live: LiveStack, tmp_path: Path
) -> None:
    ref = f"{live.settings.default_account}/hello-{tmp_path.name[-6:].lower()}"
    examples = Path(__file__).resolve().parent.parent / "examples"
    with (tmp_path / "hello.tar.gz").open("w+b") as archive:
        pack_model(examples / "hello-world", archive)
        archive.seek(0)
        body = archive.read()
    pushed = httpx.post(
        f"{live.url}/v1/models/{ref}/versions",
        params={"create": "true"},
        content=body,
        headers=headers(live, **{"Content-Type": "application/gzip"}),
        timeout=BUILD_TIMEOUT,
    )
    assert pushed.status_code == 201, pushed.text
    build_id = pushed.headers["Replicant-Build"]
    with live.client() as owner:
        build = owner.get(f"/v1/builds/{build_id}").json()
    assert build["status"] == "succeeded"
    assert build["version"]["id"] == pushed.json()["id"]
    assert "recording the version" in build["logs"]
    with live.client(live.new_account("stranger")) as stranger:
        hidden = stranger.get(f"/v1/builds/{build_id}")
    assert hidden.status_code == 404
    assert hidden.headers["content-type"].startswith("application/problem+json")


def leftovers(live: LiveStack) -> list[str]:
    """Scratch and staging directories of builds: a finished build leaves none."""
    data = live.settings.data_dir.resolve()
    found = [*(data / "versions").glob(".staging-*"), *(data / "uploads").glob("*")]
    return sorted(p.name for p in found)


def test_a_build_whose_worker_dies_is_built_again_on_another(
    live: LiveStack, tmp_path: Path
) -> None:
    body, gate = gated_model(tmp_path)
    ref = f"{live.settings.default_account}/regated-{tmp_path.name[-6:].lower()}"
    ndjson = headers(live, Accept="application/x-ndjson", **{"Content-Type": "application/gzip"})
    with httpx.stream(
        "POST",
        f"{live.url}/v1/models/{ref}/versions",
        params={"create": "true"},
        content=body,
        headers=ndjson,
        timeout=httpx.Timeout(30.0, read=BUILD_TIMEOUT),
    ) as response:
        assert response.status_code == 200
        stream = events(response.iter_lines())
        for event in stream:
            if "deriving the schema" in event.get("message", ""):
                break
        # SIGKILL the worker (and the build's probe with it), as a lost machine would.
        live.stack.stop("worker", sig=signal.SIGKILL)
        live.stack.start_worker()
        gate.touch()
        rest = list(stream)  # the pusher's stream goes on, through the second attempt
    messages = [e["message"] for e in rest[:-1]]
    assert any("building again (attempt 2)" in m for m in messages), messages
    assert rest[-1]["event"] == "version" and rest[-1]["status"] == 201, rest[-1]
    with live.client() as client:
        latest = client.get(f"/v1/models/{ref}").json()["latest_version"]
    assert latest["id"] == rest[-1]["version"]["id"]
    assert leftovers(live) == []


async def test_following_a_build_whose_workflow_was_terminated_ends_with_the_reason(
    live: LiveStack, tmp_path: Path
) -> None:
    body, gate = gated_model(tmp_path)
    ref = f"{live.settings.default_account}/ended-{tmp_path.name[-6:].lower()}"
    ndjson = headers(live, Accept="application/x-ndjson", **{"Content-Type": "application/gzip"})
    temporal = await connect(live.settings)
    try:
        with httpx.stream(
            "POST",
            f"{live.url}/v1/models/{ref}/versions",
            params={"create": "true"},
            content=body,
            headers=ndjson,
            timeout=httpx.Timeout(30.0, read=BUILD_TIMEOUT),
        ) as response:
            build_id = response.headers["Replicant-Build"]
            stream = events(response.iter_lines())
            for event in stream:
                if "deriving the schema" in event.get("message", ""):
                    break
            # An operator ends the build from the Temporal UI.
            await temporal.get_workflow_handle(f"build-{build_id}").terminate("stuck")
            last = list(stream)[-1]
    finally:
        gate.touch()  # lets the abandoned probe end
    assert last["event"] == "error" and last["status"] == 500, last
    assert "terminated" in last["detail"]
    with live.client() as client:
        assert client.get(f"/v1/builds/{build_id}").json()["status"] == "failed"


def test_a_build_becomes_processing_when_a_worker_takes_it_never_once_it_ended(
    live: LiveStack,
) -> None:
    """The build activity marks its build ``processing`` as it starts; a build that ended
    meanwhile (the orphan settler failed it) stays ended."""
    statuses = {new_id(): "starting", new_id(): "failed"}
    owner = live.settings.default_account
    with Session(live.engine) as session:
        for build_id, status in statuses.items():
            session.add(Build(id=build_id, owner=owner, model=f"{owner}/taken", status=status))
        session.commit()
    taken_at = utcnow()
    for build_id in statuses:
        builds.mark_processing(live.engine, build_id, taken_at)
    with Session(live.engine) as session:
        after = [session.get_one(Build, build_id) for build_id in statuses]
    assert [b.status for b in after] == ["processing", "failed"]
    assert [b.started_at for b in after] == [taken_at, None]
    # A later attempt of the build activity keeps the first one's start.
    builds.mark_processing(live.engine, next(iter(statuses)), utcnow())
    with Session(live.engine) as session:
        assert session.get_one(Build, next(iter(statuses))).started_at == taken_at


def test_an_abandoned_build_stops_at_its_next_step() -> None:
    log = BuildLog(cast(Engine, None), "b1")
    log.say("copying the model files")
    log.abandoned.set()
    with pytest.raises(BuildAbandoned):
        log.say("recording the version")
    assert log.take() == "copying the model files\n"


def test_a_cog_yaml_error_names_cog_yaml_once() -> None:
    named = builds.failure_problem(CogConfigError("cog.yaml: weights[0].name is required"))
    assert named is not None and named["detail"] == "cog.yaml: weights[0].name is required"
    unnamed = builds.failure_problem(CogConfigError("environment variable 'X' is not KEY=VALUE"))
    assert unnamed is not None
    assert unnamed["detail"] == "cog.yaml: environment variable 'X' is not KEY=VALUE"


def test_health_counts_the_build_queue_among_the_queues_that_need_a_worker(
    live: LiveStack,
) -> None:
    health = httpx.get(f"{live.url}/health", timeout=30).json()
    assert health["workers"][live.settings.build_queue] > 0


def test_a_push_that_cannot_start_its_build_is_refused_with_503(tmp_path: Path) -> None:
    """On an app of its own whose Temporal address answers nothing."""
    settings = Settings(data_dir=tmp_path / "data", temporal_address=f"127.0.0.1:{free_port()}")
    app = create_app(settings)
    _, token = create_account(app.state.replicant.engine, "unstarted")
    examples = Path(__file__).resolve().parent.parent / "examples"
    with (tmp_path / "hello.tar.gz").open("w+b") as archive:
        pack_model(examples / "hello-world", archive)
        archive.seek(0)
        body = archive.read()
    with TestClient(app) as client:
        refused = client.post(
            "/v1/models/unstarted/hello/versions?create=true",
            content=body,
            headers={"Authorization": f"Bearer {token}", "Content-Type": "application/gzip"},
        )
    assert refused.status_code == 503, refused.text
    assert refused.headers["content-type"].startswith("application/problem+json")
    with Session(app.state.replicant.engine) as session:
        (build,) = session.exec(select(Build)).all()
    assert build.status == "failed" and build.error is not None
    assert build.error["status"] == 503
    store = app.state.replicant.object_store
    assert store.stat(build_archive(build.id)) is None  # the archive went with it
    assert list((settings.data_dir / "uploads").iterdir()) == []


async def test_pushes_beyond_the_build_slots_wait_queued_until_a_slot_frees(
    live: LiveStack, tmp_path: Path
) -> None:
    """A worker runs ``max_concurrent_builds`` builds at once (each a pip run); a push
    beyond them is accepted and its build waits in the build queue, not refused. Its status
    says so: ``starting`` while it waits for a slot, ``processing`` once a worker took it."""
    slots = live.settings.max_concurrent_builds
    temporal = await connect(live.settings)
    ndjson = headers(live, Accept="application/x-ndjson", **{"Content-Type": "application/gzip"})
    timeout = httpx.Timeout(30.0, read=BUILD_TIMEOUT)
    gates: list[Gate] = []
    with contextlib.ExitStack() as pushes, httpx.Client(timeout=timeout) as client:

        def push(name: str) -> tuple[str, httpx.Response]:
            body, gate = gated_model(tmp_path / name)
            gates.append(gate)
            ref = f"{live.settings.default_account}/{name}-{tmp_path.name[-6:].lower()}"
            response = pushes.enter_context(
                client.stream(
                    "POST",
                    f"{live.url}/v1/models/{ref}/versions",
                    params={"create": "true"},
                    content=body,
                    headers=ndjson,
                )
            )
            assert response.status_code == 200
            return response.headers["Replicant-Build"], response

        held = [push(f"held{i}") for i in range(slots)]
        for build_id, _ in held:  # each waits at its gate, in a slot
            await async_wait_until(
                lambda b=build_id: build_activity(temporal, b),
                lambda pending: pending is not None and pending.state == STARTED,
                what=f"build {build_id} running",
                timeout=BUILD_TIMEOUT,
            )
        queued_id, queued = push("queued")
        queued_events = events(queued.iter_lines())
        assert next(queued_events)["message"] == WAITING_FOR_A_WORKER  # said at once
        await async_wait_until(
            lambda: build_activity(temporal, queued_id),
            lambda pending: pending is not None and pending.state == SCHEDULED,
            what="the third build scheduled on the build queue",
        )
        waiting = build_status(client, live, queued_id)
        assert waiting["status"] == "starting", waiting
        assert waiting["logs"] == f"{WAITING_FOR_A_WORKER}\n"
        released_at = datetime.now(UTC)
        gates[0].touch()
        # A worker took it; its own gate holds it there until the status says so.
        await async_wait_until(
            lambda: build_activity(temporal, queued_id),
            lambda pending: pending is not None and pending.state == STARTED,
            what="the third build's activity started",
            timeout=BUILD_TIMEOUT,
        )
        taken = wait_until(
            lambda: build_status(client, live, queued_id),
            lambda build: build["status"] != "starting",
            what="the third build to leave starting once its activity started",
        )
        assert taken["status"] == "processing" and taken["completed_at"] is None, taken
        assert datetime.fromisoformat(taken["started_at"]) >= released_at, taken
        gates[-1].touch()
        last = list(queued_events)[-1]
        assert last["event"] == "version" and last["status"] == 201, last
        # It started only once a held build ended, which only the open gate allowed.
        started = [
            e.event_time.ToDatetime(tzinfo=UTC)
            for e in await all_events(temporal, f"build-{queued_id}")
            if e.event_type == EventType.EVENT_TYPE_ACTIVITY_TASK_STARTED
        ]
        assert started and started[0] >= released_at, (started, released_at)
        done = build_status(client, live, queued_id)
        assert done["status"] == "succeeded" and done["version"]["id"] == last["version"]["id"]
        for gate in gates:
            gate.touch()
        for _, response in held:
            assert list(events(response.iter_lines()))[-1]["event"] == "version"
