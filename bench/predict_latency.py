"""Latency and throughput of a warm sync prediction, side by side in one run.

1. Replicant: ``POST /v1/models/replicate/hello-world/predictions`` with ``Prefer: wait``.
2. coglet direct: the same input POSTed straight to a coglet process of that version.
3. The floor: a bare Temporal update-with-start whose one activity calls that coglet process,
   on the same Temporal dev server with the same settings as ``make dev``.

Run: ``.venv/bin/python bench/predict_latency.py [--requests 400] [--concurrency 8]
[--webhook]``. Prints percentiles (ms) and throughput (predictions/s), and the ratios that
matter. With ``--webhook`` every Replicant prediction has a ``completed`` webhook to a local
receiver (its delivery runs after the response), and the run reports when the last one
arrived. The
paths take turns in blocks of requests rather than one after the other, so that the machine's
drift over the run weighs on each alike.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

import httpx
from temporalio.client import Client, WithStartWorkflowOperation, WorkflowUpdateStage
from temporalio.common import WorkflowIDConflictPolicy
from temporalio.worker import Worker

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.floor import INPUT, FloorWorkflow, call_coglet, post_with_retry  # noqa: E402
from replicant.devstack import Stack, free_port, wait_for_port  # noqa: E402
from replicant.settings import Settings  # noqa: E402
from replicant.temporal import connect  # noqa: E402
from tests.receiver import Receiver, running_receiver  # noqa: E402

FLOOR_QUEUE = "bench-floor"


Call = Callable[[], Awaitable[None]]
# The paths take turns in blocks, so slow drift on a shared machine (other work, the dev
# server's SQLite file growing and checkpointing) falls on all of them alike.
LATENCY_BLOCK = 10
THROUGHPUT_ROUNDS = 4


async def warm_up(call: Call, concurrency: int) -> None:
    """Warm-up includes concurrent rounds: every process a concurrent run needs (Replicant
    boots one model process per concurrent run of a version) is up before timing starts."""
    for _ in range(5):
        await call()
    for _ in range(3):
        await asyncio.gather(*(call() for _ in range(concurrency)))


async def burst(call: Call, requests: int, concurrency: int) -> float:
    """Seconds for ``requests`` calls made by ``concurrency`` clients at once."""
    left = requests
    started = time.perf_counter()

    async def client() -> None:
        nonlocal left
        while left > 0:
            left -= 1
            await call()

    await asyncio.gather(*(client() for _ in range(concurrency)))
    return time.perf_counter() - started


async def measure(
    calls: dict[str, Call], requests: int, concurrency: int
) -> dict[str, dict[str, float]]:
    """Per path: sequential latency percentiles (ms) and throughput (calls/s) with
    ``concurrency`` clients, the paths interleaved (LATENCY_BLOCK, THROUGHPUT_ROUNDS)."""
    for call in calls.values():
        await warm_up(call, concurrency)
    latencies: dict[str, list[float]] = {name: [] for name in calls}
    for done in range(0, requests, LATENCY_BLOCK):
        for name, call in calls.items():
            for _ in range(min(LATENCY_BLOCK, requests - done)):
                started = time.perf_counter()
                await call()
                latencies[name].append((time.perf_counter() - started) * 1000)
    elapsed = dict.fromkeys(calls, 0.0)
    per_round = max(concurrency, requests // THROUGHPUT_ROUNDS)
    for _ in range(THROUGHPUT_ROUNDS):
        for name, call in calls.items():
            elapsed[name] += await burst(call, per_round, concurrency)
    results = {}
    for name, values in latencies.items():
        values.sort()
        results[name] = {
            "p50": statistics.median(values),
            "p95": values[int(len(values) * 0.95) - 1],
            "throughput": per_round * THROUGHPUT_ROUNDS / elapsed[name],
        }
    return results


def start_coglet(model_dir: Path, port: int) -> subprocess.Popen[bytes]:
    env = dict(os.environ)
    env.update(
        PORT=str(port),
        COG_PREDICT_TYPE_STUB="predict.py:Predictor",
        PATH=f"{Path(sys.executable).parent}:{env.get('PATH', '')}",
    )
    return subprocess.Popen(
        [sys.executable, "-m", "cog.server.http", "--host", "127.0.0.1"],
        cwd=model_dir,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )


async def wait_ready(url: str) -> None:
    async with httpx.AsyncClient() as client:
        for _ in range(600):
            try:
                body = (await client.get(f"{url}/health-check")).json()
                if body.get("status") == "READY":
                    return
            except httpx.HTTPError:
                pass
            await asyncio.sleep(0.05)
    raise TimeoutError(url)


async def main(requests: int, concurrency: int, webhook: bool) -> None:
    if not webhook:
        await bench(requests, concurrency, None)
        return
    with running_receiver() as receiver:
        await bench(requests, concurrency, receiver)


async def all_delivered(receiver: Receiver, made: int, timeout: float = 300) -> float:
    """Seconds until the receiver holds ``made`` deliveries (the last webhooks are still on
    their way when the last response is read)."""
    started = time.perf_counter()
    while len(receiver.deliveries) < made:
        if time.perf_counter() - started > timeout:
            raise TimeoutError(f"{len(receiver.deliveries)} of {made} webhooks delivered")
        await asyncio.sleep(0.05)
    return time.perf_counter() - started


async def bench(requests: int, concurrency: int, receiver: Receiver | None) -> None:
    data_dir = Path(tempfile.mkdtemp(prefix="replicant-bench-"))
    settings = Settings(
        data_dir=data_dir,
        api_port=free_port(),
        temporal_port=free_port(),
        ui_port=free_port(),
        hardware={"cpu": concurrency},
        log_level="WARNING",
        # The benchmark makes more predictions a minute than an account may by default.
        rate_limit_create="1000000/minute",
        # The webhook receiver listens on 127.0.0.1.
        allow_private_urls=receiver is not None,
    )
    stack = Stack(settings, ui=False, log_dir=data_dir / "logs")
    coglet: subprocess.Popen[bytes] | None = None
    try:
        token = stack.start()
        api = httpx.AsyncClient(
            base_url=settings.resolved_public_url,
            headers={"Authorization": f"Bearer {token}", "Prefer": "wait"},
            timeout=60,
            # Shorter than uvicorn's keep-alive (5 s): while the other paths take their turn,
            # a loaded machine leaves a connection idle that long, and the server closes it.
            limits=httpx.Limits(keepalive_expiry=2),
        )
        model = (await api.get("/v1/models/replicate/hello-world")).json()
        version = model["latest_version"]["id"]
        model_dir = data_dir.resolve() / "versions" / version
        body: dict[str, object] = {"input": INPUT}
        if receiver is not None:
            body.update(webhook=receiver.url, webhook_events_filter=["completed"])
        made = 0

        async def replicant_call() -> None:
            nonlocal made
            made += 1
            response = await api.post("/v1/models/replicate/hello-world/predictions", json=body)
            assert response.json()["status"] == "succeeded", response.text

        port = free_port()
        coglet = start_coglet(model_dir, port)
        wait_for_port(port, coglet)
        coglet_url = f"http://127.0.0.1:{port}"
        await wait_ready(coglet_url)
        direct = httpx.AsyncClient(timeout=30)

        async def coglet_call() -> None:
            await post_with_retry(direct, f"{coglet_url}/predictions")

        client: Client = await connect(settings)
        counter = 0

        async def floor_call() -> None:
            nonlocal counter
            counter += 1
            start = WithStartWorkflowOperation(
                FloorWorkflow.run,
                f"{coglet_url}/predictions",
                id=f"bench-floor-{os.getpid()}-{counter}",
                task_queue=FLOOR_QUEUE,
                id_conflict_policy=WorkflowIDConflictPolicy.FAIL,
            )
            handle = await client.start_update_with_start_workflow(
                FloorWorkflow.wait,
                start_workflow_operation=start,
                wait_for_stage=WorkflowUpdateStage.ACCEPTED,
            )
            await handle.result()

        worker = Worker(
            client,
            task_queue=FLOOR_QUEUE,
            workflows=[FloorWorkflow],
            activities=[call_coglet],
            max_concurrent_activities=concurrency,
        )
        async with worker:
            paths = {
                "coglet direct": coglet_call,
                "temporal floor": floor_call,
                "replicant": replicant_call,
            }
            results = await measure(paths, requests, concurrency)
        hooks = "" if receiver is None else ", each with a completed webhook"
        print(
            f"\nwarm sync hello-world{hooks}, {requests} requests, {concurrency} concurrent clients"
        )
        print(f"{'path':<16}{'p50 ms':>10}{'p95 ms':>10}{'pred/s':>10}")
        for name, r in results.items():
            print(f"{name:<16}{r['p50']:>10.1f}{r['p95']:>10.1f}{r['throughput']:>10.1f}")
        rep, floor, cog = results["replicant"], results["temporal floor"], results["coglet direct"]
        print(
            f"\nreplicant / floor: p50 {rep['p50'] / floor['p50']:.2f}x (goal <= 1.3x), "
            f"throughput {rep['throughput'] / floor['throughput']:.2f}x (goal >= 0.8x)"
        )
        print(
            f"replicant / coglet: p50 {rep['p50'] / cog['p50']:.1f}x, "
            f"throughput {rep['throughput'] / cog['throughput']:.2f}x"
        )
        if receiver is not None:
            lag = await all_delivered(receiver, made)
            print(f"all {made} completed webhooks delivered {lag:.1f} s after the last response")
        await api.aclose()
        await direct.aclose()
    finally:
        if coglet is not None:
            coglet.terminate()
            coglet.wait()
        stack.stop()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--requests", type=int, default=400)
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--webhook", action="store_true", help="a completed webhook on each")
    args = parser.parse_args()
    asyncio.run(main(args.requests, args.concurrency, args.webhook))
