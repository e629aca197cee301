"""API latency and memory with a deep queue, then how fast a worker drains it.

1. A stack (Temporal dev server, one worker with 2 cpu slots, the API) on a fresh PostgreSQL
   database (``--admin-url``; dropped at the end). A few sync hello-world predictions warm it.
2. Idle: ``GET /v1/predictions/{id}`` (random finished ids) and ``GET /v1/predictions`` (first
   page), the two taking turns in blocks; resident memory of the API, the worker and Temporal.
3. The worker is stopped and ``--queued`` async hello-world predictions (10,000 by default)
   are created on its hardware queue (``cpu``); the same calls are timed again (GET of random
   queued ids) and memory is read again, per 1,000 queued.
4. The worker is started: drain throughput from its start to the last completion, and the
   worker's peak memory meanwhile.

Goal, printed beside the figures: API p95 within 1.2x of idle at 10,000 queued.

Run: ``.venv/bin/python bench/queue_scale.py [--queued 10000] [--requests 300]``.
"""

from __future__ import annotations

import argparse
import asyncio
import random
import statistics
import sys
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

import httpx
from sqlalchemy import create_engine, text
from sqlalchemy.engine import Engine

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.stacks import ADMIN_URL, postgres_bench_stack  # noqa: E402
from replicant.devstack import Stack  # noqa: E402
from workers.runners.memory import tree_rss  # noqa: E402

HELLO = "/v1/models/replicate/hello-world/predictions"
CREATORS = 8  # concurrent clients that queue the backlog
LATENCY_BLOCK = 10
WARM = 20  # finished predictions made before anything is timed
MB = 1024 * 1024


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, int(len(ordered) * q) - 1))]


def memory(stack: Stack) -> dict[str, int]:
    """Resident set (bytes) of each running process tree of the stack."""
    return {name: tree_rss(proc.pid) for name, proc in stack.procs.items() if proc.poll() is None}


async def time_reads(
    client: httpx.AsyncClient, ids: list[str], requests: int
) -> dict[str, list[float]]:
    """Latencies (ms) of GET one prediction and GET the list, taking turns in blocks."""
    paths: dict[str, Callable[[], str]] = {
        "get": lambda: f"/v1/predictions/{random.choice(ids)}",
        "list": lambda: "/v1/predictions",
    }
    for path in paths.values():  # warm connections and caches
        for _ in range(5):
            (await client.get(path())).raise_for_status()
    samples: dict[str, list[float]] = {name: [] for name in paths}
    for done in range(0, requests, LATENCY_BLOCK):
        for name, path in paths.items():
            for _ in range(min(LATENCY_BLOCK, requests - done)):
                url = path()
                started = time.perf_counter()
                (await client.get(url)).raise_for_status()
                samples[name].append((time.perf_counter() - started) * 1000)
    return samples


async def create_many(client: httpx.AsyncClient, count: int) -> list[str]:
    """``count`` async hello-world predictions created by CREATORS clients at once."""
    ids: list[str] = []

    async def creator(share: int) -> None:
        for _ in range(share):
            response = await client.post(HELLO, json={"input": {"text": "queued"}})
            assert response.status_code == 201, response.text
            ids.append(response.json()["id"])

    shares = [count // CREATORS + (i < count % CREATORS) for i in range(CREATORS)]
    await asyncio.gather(*(creator(n) for n in shares))
    return ids


def unfinished(engine: Engine) -> int:
    with engine.connect() as conn:
        query = text("SELECT count(*) FROM prediction WHERE status IN ('starting', 'processing')")
        return int(conn.execute(query).scalar_one())


async def drain(stack: Stack, engine: Engine, ids: list[str]) -> dict[str, float]:
    """Start the worker and wait until every queued prediction ended; throughput and the
    worker's peak memory."""
    started = datetime.now(UTC)
    worker = stack.start_worker()
    peak = 0
    while unfinished(engine):
        if worker.poll() is not None:
            raise RuntimeError(f"the worker exited with {worker.returncode}")
        peak = max(peak, tree_rss(worker.pid))
        await asyncio.sleep(0.5)
    peak = max(peak, tree_rss(worker.pid))
    with engine.connect() as conn:
        row = conn.execute(
            text(
                "SELECT min(completed_at), max(completed_at), "
                "count(*) FILTER (WHERE status = 'succeeded') "
                "FROM prediction WHERE id = ANY(:ids)"
            ),
            {"ids": ids},
        ).one()
    # The read model stores UTC; a driver may hand it back without the zone.
    first, last = (t if t.tzinfo else t.replace(tzinfo=UTC) for t in row[:2])
    succeeded = row[2]
    return {
        "boot_s": (first - started).total_seconds(),
        "total_s": (last - started).total_seconds(),
        "running_s": (last - first).total_seconds(),
        "succeeded": succeeded,
        "worker_peak": peak,
    }


def print_reads(idle: dict[str, list[float]], queued: dict[str, list[float]], n: int) -> None:
    print(f"\n{'call':<28}{'idle p50':>10}{'idle p95':>10}{'queued p50':>12}{'queued p95':>12}")
    for name, label in (("get", "GET /v1/predictions/{id}"), ("list", "GET /v1/predictions")):
        a, b = idle[name], queued[name]
        ratio = percentile(b, 0.95) / percentile(a, 0.95)
        verdict = "met" if ratio <= 1.2 else "NOT met"
        print(
            f"{label:<28}{statistics.median(a):>10.2f}{percentile(a, 0.95):>10.2f}"
            f"{statistics.median(b):>12.2f}{percentile(b, 0.95):>12.2f}"
            f"   p95 {ratio:.2f}x of idle at {n:,} queued (goal <= 1.2x at 10,000): {verdict}"
        )


async def run(stack: Stack, engine: Engine, token: str, queued: int, requests: int) -> None:
    settings = stack.settings
    headers = {"Authorization": f"Bearer {token}"}
    async with httpx.AsyncClient(
        base_url=settings.resolved_public_url, headers=headers, timeout=120
    ) as client:
        finished = []
        for _ in range(WARM):
            response = await client.post(
                HELLO, json={"input": {"text": "warm"}}, headers={"Prefer": "wait"}
            )
            assert response.json()["status"] == "succeeded", response.text
            finished.append(response.json()["id"])
        idle_reads = await time_reads(client, finished, requests)
        idle_memory = memory(stack)
        idle_db = (settings.data_dir / "temporal.db").stat().st_size

        stack.stop("worker")
        started = time.perf_counter()
        ids = await create_many(client, queued)
        create_rate = queued / (time.perf_counter() - started)
        queued_reads = await time_reads(client, ids, requests)
        queued_memory = memory(stack)
        queued_db = (settings.data_dir / "temporal.db").stat().st_size

        drained = await drain(stack, engine, ids)

    print(f"\n{queued:,} hello-world predictions queued on the cpu queue, worker stopped")
    print(f"created at {create_rate:.1f} predictions/s by {CREATORS} clients")
    print_reads(idle_reads, queued_reads, queued)
    per = 1000 / queued
    print(f"\n{'memory (RSS)':<28}{'idle MB':>10}{'queued MB':>12}{'per 1,000 MB':>14}")
    for name in ("api", "temporal"):
        a, b = idle_memory[name] / MB, queued_memory[name] / MB
        print(f"{name:<28}{a:>10.1f}{b:>12.1f}{(b - a) * per:>14.2f}")
    worker_idle = idle_memory["worker"] / MB
    worker_peak = drained["worker_peak"] / MB
    print(
        f"{'worker (peak while draining)':<28}{worker_idle:>10.1f}{worker_peak:>12.1f}"
        f"{(worker_peak - worker_idle) * per:>14.2f}"
    )
    db_idle, db_queued = idle_db / MB, queued_db / MB
    print(
        f"{'temporal.db size':<28}{db_idle:>10.1f}{db_queued:>12.1f}"
        f"{(db_queued - db_idle) * per:>14.2f}"
    )
    print(
        f"\ndrain: {drained['succeeded']:,} of {queued:,} succeeded; worker start to first "
        f"completion {drained['boot_s']:.1f} s, to last {drained['total_s']:.1f} s: "
        f"{queued / drained['total_s']:.1f} predictions/s "
        f"({queued / max(drained['running_s'], 1e-9):.1f}/s from the first completion)"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--queued", type=int, default=10_000, help="predictions to queue")
    parser.add_argument("--requests", type=int, default=300, help="timed GETs per call and state")
    parser.add_argument("--admin-url", default=ADMIN_URL)
    args = parser.parse_args()
    with postgres_bench_stack(args.admin_url, hardware={"cpu": 2}, prebuild_envs=False) as stack:
        token = stack.start()
        engine = create_engine(stack.settings.resolved_database_url)
        try:
            asyncio.run(run(stack, engine, token, args.queued, args.requests))
        finally:
            engine.dispose()


if __name__ == "__main__":
    main()
