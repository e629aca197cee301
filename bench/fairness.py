"""Fair hardware queues: B's wait behind A's backlog, fairness on and off, in one run.

Two embedded stacks run side by side, alike but for ``temporal_fairness`` (the Temporal
server's fairness settings, replicant/fairness.py); each has one ``cpu`` slot.

1. Latency: warm sync hello-world predictions (``Prefer: wait``), the two stacks taking
   turns in blocks, so any cost of fairness on an idle queue shows as a difference.
2. Backlog, one stack at a time: account A's long sleep holds the slot while A queues
   ``--backlog`` hello-world predictions; once every one's run activity waits in the queue,
   A's sleep is canceled and account B at once creates ``--b-predictions``, and so does A's
   deployment on shared hardware with priority 1 (docs/fairness.md). B's queue wait is its
   predictions' ``started_at - created_at``; also printed: A's backlog when B arrived, how
   many of A's predictions started before B's last one, and the deployment's queue wait.

Run: ``.venv/bin/python bench/fairness.py [--backlog 500] [--b-predictions 10]
[--requests 100]``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import statistics
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.stacks import bench_stack  # noqa: E402
from replicant.accounts import create_account  # noqa: E402
from replicant.contracts import prediction_workflow_id
from replicant.db import make_engine  # noqa: E402
from replicant.deployments import set_deployment_priority  # noqa: E402
from replicant.devstack import Stack  # noqa: E402
from replicant.temporal import connect  # noqa: E402

HELLO = "/v1/models/replicate/hello-world/predictions"
DEPLOYED = "/v1/deployments/bench-a/urgent/predictions"  # A's, on shared hardware
SLEEP = "/v1/models/replicant/sleep/predictions"
LATENCY_BLOCK = 10
CREATORS = 8  # concurrent clients that queue a backlog


@dataclass
class Bench:
    """One stack and an API client per account."""

    name: str
    stack: Stack
    url: str
    tokens: dict[str, str]

    def client(self, who: str, **headers: str) -> httpx.AsyncClient:
        return httpx.AsyncClient(
            base_url=self.url,
            headers={"Authorization": f"Bearer {self.tokens[who]}", **headers},
            timeout=120,
        )


@contextlib.contextmanager
def running(name: str, fairness: bool) -> Iterator[Bench]:
    with bench_stack(hardware={"cpu": 1}, temporal_fairness=fairness) as stack:
        stack.start()
        engine = make_engine(stack.settings.resolved_database_url)
        tokens = {who: create_account(engine, f"bench-{who.lower()}")[1] for who in "AB"}
        deploy_shared(stack.settings.resolved_public_url, tokens["A"])
        set_deployment_priority(engine, "bench-a/urgent", 1, shared_hardware=True)
        engine.dispose()
        yield Bench(name, stack, stack.settings.resolved_public_url, tokens)


def deploy_shared(url: str, token: str) -> None:
    """A's deployment of hello-world, ``bench-a/urgent`` (then put on shared hardware)."""
    with httpx.Client(base_url=url, headers={"Authorization": f"Bearer {token}"}) as client:
        model = client.get("/v1/models/replicate/hello-world").json()
        body = {"name": "urgent", "model": "replicate/hello-world", "hardware": "cpu"}
        body |= {"version": model["latest_version"]["id"], "min_instances": 0}
        response = client.post("/v1/deployments", json={**body, "max_instances": 1})
        assert response.status_code == 200, response.text


async def hello(client: httpx.AsyncClient) -> None:
    response = await client.post(HELLO, json={"input": {"text": "bench"}})
    assert response.json()["status"] == "succeeded", response.text


async def latency(benches: list[Bench], requests: int) -> dict[str, list[float]]:
    """Sequential warm hello-world latencies (ms) per stack, the stacks in turns."""
    clients = {b.name: b.client("A", Prefer="wait") for b in benches}
    for client in clients.values():
        for _ in range(5):
            await hello(client)
    results: dict[str, list[float]] = {name: [] for name in clients}
    for done in range(0, requests, LATENCY_BLOCK):
        for name, client in clients.items():
            for _ in range(min(LATENCY_BLOCK, requests - done)):
                started = time.perf_counter()
                await hello(client)
                results[name].append((time.perf_counter() - started) * 1000)
    for client in clients.values():
        await client.aclose()
    return results


async def create_many(client: httpx.AsyncClient, count: int, path: str = HELLO) -> list[str]:
    ids: list[str] = []

    async def creator(share: int) -> None:
        for _ in range(share):
            response = await client.post(path, json={"input": {"text": "queued"}})
            assert response.status_code == 201, response.text
            ids.append(response.json()["id"])

    shares = [count // CREATORS + (i < count % CREATORS) for i in range(CREATORS)]
    await asyncio.gather(*(creator(n) for n in shares))
    return ids


async def wait_queued(bench: Bench, ids: list[str]) -> None:
    """Until every prediction's run activity is scheduled (waiting for the slot)."""
    temporal = await connect(bench.stack.settings)
    waiting = set(ids)
    while waiting:
        for prediction_id in list(waiting):
            handle = temporal.get_workflow_handle(prediction_workflow_id(prediction_id))
            if (await handle.describe()).raw_description.pending_activities:
                waiting.discard(prediction_id)
        await asyncio.sleep(0.2)


async def final(client: httpx.AsyncClient, prediction_id: str) -> dict[str, Any]:
    while True:
        body: dict[str, Any] = (await client.get(f"/v1/predictions/{prediction_id}")).json()
        if body["status"] in ("succeeded", "failed", "canceled"):
            return body
        await asyncio.sleep(0.5)


def at(value: str) -> datetime:
    return datetime.fromisoformat(value.replace("Z", "+00:00"))


async def backlog(bench: Bench, size: int, b_count: int) -> dict[str, float]:
    """B's queue waits (s) behind A's backlog of ``size``, A's predictions started before
    B's last, and the queue waits of A's deployment on shared hardware (priority 1)."""
    a, b = bench.client("A"), bench.client("B")
    blocker = (await a.post(SLEEP, json={"input": {"seconds": 3600}})).json()["id"]
    while (await a.get(f"/v1/predictions/{blocker}")).json()["status"] != "processing":
        await asyncio.sleep(0.2)
    a_ids = await create_many(a, size)
    await wait_queued(bench, a_ids)
    await a.post(f"/v1/predictions/{blocker}/cancel")
    b_ids, d_ids = await asyncio.gather(create_many(b, b_count), create_many(a, b_count, DEPLOYED))
    b_done = [await final(b, p) for p in b_ids]
    d_done = [await final(a, p) for p in d_ids]
    a_done = [await final(a, p) for p in a_ids]
    waits = queue_waits(b_done)
    d_waits = queue_waits(d_done)
    last_b = max(at(p["started_at"]) for p in b_done)
    first_b = min(at(p["created_at"]) for p in b_done)
    await a.aclose()
    await b.aclose()
    return {
        "p50": statistics.median(waits),
        "p95": percentile(waits, 0.95),
        "d_p50": statistics.median(d_waits),
        "d_p95": percentile(d_waits, 0.95),
        "a_before": sum(at(p["started_at"]) < last_b for p in a_done),
        "a_waiting": sum(at(p["started_at"]) > first_b for p in a_done),
    }


def queue_waits(done: list[dict[str, Any]]) -> list[float]:
    return sorted((at(p["started_at"]) - at(p["created_at"])).total_seconds() for p in done)


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[max(int(len(ordered) * q) - 1, 0)]


async def main(size: int, b_count: int, requests: int) -> None:
    with running("on", True) as on, running("off", False) as off:
        times = await latency([on, off], requests)
        waits = {bench.name: await backlog(bench, size, b_count) for bench in (on, off)}
    print(f"\nwarm sync hello-world, {requests} sequential requests per stack, one cpu slot")
    print(f"{'fairness':<10}{'p50 ms':>10}{'p95 ms':>10}")
    for name, values in times.items():
        print(f"{name:<10}{statistics.median(values):>10.1f}{percentile(values, 0.95):>10.1f}")
    print(f"\nB's {b_count} predictions queued behind A's backlog of {size} (one slot)")
    print(
        f"{'fairness':<10}{'B wait p50 s':>14}{'B wait p95 s':>14}{'A queued':>10}{'A first':>10}"
    )
    for name, w in waits.items():
        print(
            f"{name:<10}{w['p50']:>14.2f}{w['p95']:>14.2f}"
            f"{w['a_waiting']:>10.0f}{w['a_before']:>10.0f}"
        )
    print(f"\nA's deployment on shared hardware, priority 1: {b_count} created with B's")
    print(f"{'fairness':<10}{'wait p50 s':>14}{'wait p95 s':>14}")
    for name, w in waits.items():
        print(f"{name:<10}{w['d_p50']:>14.2f}{w['d_p95']:>14.2f}")
    cost = statistics.median(times["on"]) - statistics.median(times["off"])
    print(f"\ncost of fairness on hello-world p50: {cost:+.1f} ms (goal: none measurable)")
    print("A queued: A's predictions still waiting when B's arrived")
    print("A first: A's predictions that started before B's last one did")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--backlog", type=int, default=500)
    parser.add_argument("--b-predictions", type=int, default=10)
    parser.add_argument("--requests", type=int, default=100)
    args = parser.parse_args()
    asyncio.run(main(args.backlog, args.b_predictions, args.requests))
