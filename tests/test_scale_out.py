"""Scale-out on one machine: one Temporal dev server, two API processes and two worker
processes over one PostgreSQL database, one S3 store (moto_server) and one Redis.

Both workers serve the same queues, so predictions spread over them; any API process answers
for any prediction; a worker killed with SIGKILL mid-prediction loses nothing.
"""

from __future__ import annotations

import base64
import io
import os
import signal
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import httpx
import pytest
import redis
from minio import Minio
from PIL import Image
from prometheus_client.parser import text_string_to_metric_families
from temporalio.api.enums.v1 import EventType
from temporalio.client import Client

from replicant.devstack import Stack, free_port, wait_for_health
from replicant.settings import Settings
from replicant.temporal import connect
from tests.conftest import TERMINAL, schemas_derived_once, stack_settings
from tests.pgdb import fresh_postgres_database
from tests.test_storage import moto_url  # noqa: F401  (the S3 endpoint fixture)
from tests.waiting import wait_until
from tests.workflow_runs import all_events

SLEEP = "replicant/sleep"
WORKERS = ("worker-a", "worker-b")


@dataclass
class Cluster:
    stack: Stack
    settings: Settings
    apis: list[str]
    token: str
    metrics_ports: dict[str, tuple[int, int]]  # worker -> (its own, Temporal SDK's)
    pids: dict[str, int]  # worker -> process id

    def client(self, api: int) -> httpx.Client:
        headers = {"Authorization": f"Bearer {self.token}"}
        return httpx.Client(base_url=self.apis[api], headers=headers, timeout=90)

    def worker_of(self, identity: str) -> str:
        """Which worker polled with ``identity`` (the SDK's default identity is pid@host)."""
        (name,) = [w for w, pid in self.pids.items() if identity.startswith(f"{pid}@")]
        return name


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory, moto_url: str) -> Iterator[Cluster]:  # noqa: F811
    data_dir = tmp_path_factory.mktemp("scale-out")
    prefix = f"replicant-test-{os.urandom(4).hex()}"
    with fresh_postgres_database() as database_url:
        settings = stack_settings(
            data_dir,
            database_url=database_url,
            storage="s3",
            s3_endpoint=moto_url.removeprefix("http://"),
            s3_bucket=f"scale-{os.urandom(4).hex()}",
            s3_access_key="testing",
            s3_secret_key="testing",
            redis_url="redis://127.0.0.1:6379/0",
            rate_limit_prefix=prefix,
        )
        stack = Stack(settings, ui=False, log_dir=data_dir / "logs")
        try:
            with schemas_derived_once():
                token = stack.prepare()
            stack.start_temporal()
            ports: dict[str, tuple[int, int]] = {}
            for name in WORKERS:
                ports[name] = (free_port(), free_port())
                env = {
                    "REPLICANT_WORKER_METRICS_PORT": str(ports[name][0]),
                    "REPLICANT_TEMPORAL_METRICS_PORT": str(ports[name][1]),
                }
                stack.start_worker(name, env=env)
            apis = [stack.start_api("api-a"), stack.start_api("api-b", free_port())]
            for url in apis:
                wait_for_health(url)
            pids = {name: stack.procs[name].pid for name in WORKERS}
            yield Cluster(stack, settings, apis, token, ports, pids)
        finally:
            stack.stop()
            store = redis.Redis.from_url("redis://127.0.0.1:6379/0")
            for key in store.scan_iter(f"{prefix}*"):
                store.delete(key)
            store.close()


def create(api: httpx.Client, model: str, input: dict[str, Any], **headers: str) -> dict[str, Any]:
    response = api.post(f"/v1/models/{model}/predictions", json={"input": input}, headers=headers)
    assert response.status_code == 201, response.text
    body: dict[str, Any] = response.json()
    return body


def wait_for(
    api: httpx.Client, prediction_id: str, until: Any, timeout: float = 90
) -> dict[str, Any]:
    """Poll one API process for a prediction until ``until`` holds; fail when it never does."""

    def fetch() -> dict[str, Any]:
        body: dict[str, Any] = api.get(f"/v1/predictions/{prediction_id}").json()
        return body

    return wait_until(
        fetch, until, what=f"prediction {prediction_id} at {api.base_url}", timeout=timeout
    )


async def run_attempts(client: Client, prediction_id: str) -> list[tuple[str, int]]:
    """(worker identity, attempt) of each finished run_prediction attempt, from the history."""
    scheduled: dict[int, str] = {}
    attempts: list[tuple[str, int]] = []
    for event in await all_events(client, f"prediction-{prediction_id}"):
        if event.event_type == EventType.EVENT_TYPE_ACTIVITY_TASK_SCHEDULED:
            attrs = event.activity_task_scheduled_event_attributes
            scheduled[event.event_id] = attrs.activity_type.name
        elif event.event_type == EventType.EVENT_TYPE_ACTIVITY_TASK_STARTED:
            started = event.activity_task_started_event_attributes
            if scheduled.get(started.scheduled_event_id) == "run_prediction":
                attempts.append((started.identity, started.attempt))
    return attempts


async def test_predictions_spread_over_both_workers_and_any_api_answers(cluster: Cluster) -> None:
    temporal = await connect(cluster.settings)
    with cluster.client(0) as api_a, cluster.client(1) as api_b:
        # More runs than one worker has slots: the other worker must take some.
        ids = [create(api_a if i % 2 else api_b, SLEEP, {"seconds": 1})["id"] for i in range(8)]
        done = [wait_for(api_a, pid, lambda p: p["status"] in TERMINAL) for pid in ids]
        assert [p["status"] for p in done] == ["succeeded"] * 8, done
        for prediction in done:  # each API process answers for every prediction, the same way
            other = api_b.get(f"/v1/predictions/{prediction['id']}").json()
            assert {k: other[k] for k in ("status", "output", "logs")} == {
                k: prediction[k] for k in ("status", "output", "logs")
            }
        listed = {p["id"] for p in api_b.get("/v1/predictions").json()["results"]}
        assert set(ids) <= listed
    ran_on = set()
    for pid in ids:
        attempts = await run_attempts(temporal, pid)
        assert len(attempts) == 1, attempts
        ran_on.add(cluster.worker_of(attempts[0][0]))
    assert ran_on == set(WORKERS)


def scrape(port: int) -> dict[str, float]:
    text = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=10).text
    return {
        f"{s.name}{sorted(s.labels.items())}": s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def test_files_go_to_the_shared_store_and_limits_to_redis(cluster: Cluster) -> None:
    image = io.BytesIO()
    Image.new("RGB", (64, 32), "red").save(image, format="PNG")
    data_uri = "data:image/png;base64," + base64.b64encode(image.getvalue()).decode()
    with cluster.client(1) as api_b:
        done = create(api_b, "replicant/thumbnail", {"image": data_uri, "width": 8}, Prefer="wait")
    assert done["status"] == "succeeded", done
    output = httpx.get(done["output"], timeout=30)
    assert output.status_code == 200, (done["output"], output.text)
    assert output.content.startswith(b"\x89PNG")
    assert Image.open(io.BytesIO(output.content)).size == (8, 4)
    # The bytes live in the shared S3 bucket (the URL is its presigned GET URL).
    s3 = Minio(cluster.settings.s3_endpoint, "testing", "testing", secure=False)
    prefix = f"predictions/{done['id']}/outputs/"
    stored = [o.object_name for o in s3.list_objects(cluster.settings.s3_bucket, prefix, True)]
    assert [str(name).rsplit("/", 1)[-1] for name in stored] == ["thumbnail.png"]

    store = redis.Redis.from_url("redis://127.0.0.1:6379/0")
    try:
        assert any(store.scan_iter(f"{cluster.settings.rate_limit_prefix}*"))
    finally:
        store.close()


def test_each_worker_exports_its_metrics_and_temporal_sdk_metrics(cluster: Cluster) -> None:
    for name in WORKERS:
        own, sdk = cluster.metrics_ports[name]
        samples = scrape(own)
        assert samples["replicant_worker_slots[('hardware', 'cpu')]"] == 2
        sdk_samples = scrape(sdk)
        assert any(key.startswith("temporal_activity_execution_latency") for key in sdk_samples)
        assert any(key.startswith("temporal_workflow_task") for key in sdk_samples)


async def test_killing_a_worker_mid_prediction_loses_nothing(cluster: Cluster) -> None:
    temporal = await connect(cluster.settings)
    with cluster.client(0) as api_a, cluster.client(1) as api_b:
        prediction = create(api_a, SLEEP, {"seconds": 4})
        running = wait_for(api_b, prediction["id"], lambda p: p["status"] != "starting")
        assert running["status"] == "processing", running
        handle = temporal.get_workflow_handle(f"prediction-{prediction['id']}")
        description = await handle.describe()
        (pending,) = [
            a
            for a in description.raw_description.pending_activities
            if a.activity_type.name == "run_prediction"
        ]
        victim = cluster.worker_of(pending.last_worker_identity)
        (survivor,) = set(WORKERS) - {victim}
        cluster.stack.stop(victim, signal.SIGKILL)

        done = wait_for(api_b, prediction["id"], lambda p: p["status"] in TERMINAL)
        assert done["status"] == "succeeded", done
        assert api_a.get(f"/v1/predictions/{prediction['id']}").json()["status"] == "succeeded"
    attempts = await run_attempts(temporal, prediction["id"])
    # The attempt on the dead worker never finished; the retry ran on the other worker.
    assert [(cluster.worker_of(identity), n) for identity, n in attempts] == [(survivor, 2)]
