"""API latency and memory with a deep queue, then how fast a worker drains it.

1. A stack (Temporal dev server, one worker with 2 cpu slots, the API) on a fresh PostgreSQL
   database (``--admin-url``; dropped at the end), or on SQLite (``--database sqlite``).
   A full list page (110) of sync hello-world predictions warms it, so the idle list renders
   as many rows as the queued one.
2. Idle: ``GET /v1/predictions/{id}`` (random finished ids) and ``GET /v1/predictions`` (first
   page), the two taking turns in blocks; resident memory of the API, the worker and Temporal.
3. The worker is stopped and ``--queued`` async hello-world predictions (10,000 by default)
   are created on its hardware queue (``cpu``). Once the Temporal server has written the
   burst away (its CPU use back near idle; the wait is printed), the same calls are timed
   again (GET of random queued ids) and memory is read again, per 1,000 queued.
4. The worker is started: drain throughput from its start to the last completion, and the
   worker's peak memory meanwhile; every 10 s the completions, the load, and from the
   worker's SDK metrics the workflows it caches, those it evicted and its workflow tasks.
   Then the calls are timed once more, idle again with the drained rows in the table: this
   tells rows in the read model from work queued in Temporal.
5. With ``--short N``, N predictions are queued and drained the same way just before step 3
   and just after step 4: a short queue's drain at the load of the deep one's.

Beside each timed phase: the CPU share of the API, Temporal and the worker, and the machine's
load average (the machine is shared; a busy neighbour shows there).

Goal, printed beside the figures: API p95 within 1.2x of idle at 10,000 queued.

Run: ``.venv/bin/python bench/queue_scale.py [--queued 10000] [--requests 300] [--short 200]
[--database postgres|sqlite]``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import random
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import httpx
import psutil
from sqlalchemy import create_engine, text
from sqlalchemy.engine import Engine
from sqlmodel import Session, col, select

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.stacks import ADMIN_URL, bench_stack, postgres_bench_stack  # noqa: E402
from replicant.devstack import Stack, free_port  # noqa: E402
from replicant.tables import Prediction  # noqa: E402
from replicant.timeutil import as_utc  # noqa: E402
from workers.runners.memory import process_tree, tree_rss  # noqa: E402

HELLO = "/v1/models/replicate/hello-world/predictions"
CREATORS = 8  # concurrent clients that queue the backlog
LATENCY_BLOCK = 10
WARMUP = 5  # unmeasured calls of each path before a phase's timed ones
# Finished predictions made before anything is timed: more than a list page (100), so the
# idle list renders a full page as the queued one does.
WARM = 110
MB = 1024 * 1024
# The Temporal server has settled after the create burst when it uses less than this share
# of one core over SETTLE_WINDOW seconds (or after SETTLE_MAX seconds: printed either way).
SETTLE_CPU = 0.10
SETTLE_WINDOW = 2.0
SETTLE_MAX = 300.0
INTERVAL = 10.0  # seconds between the drain's counts


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, int(len(ordered) * q) - 1))]


def memory(stack: Stack) -> dict[str, int]:
    """Resident set (bytes) of each running process tree of the stack."""
    return {name: tree_rss(proc.pid) for name, proc in stack.procs.items() if proc.poll() is None}


def tree_cpu(pid: int) -> float:
    """CPU seconds (user and system) used so far by a process and its live descendants."""
    total = 0.0
    for member in process_tree(pid):
        with contextlib.suppress(psutil.Error):
            times = member.cpu_times()
            total += times.user + times.system
    return total


def cpu_now(stack: Stack) -> dict[str, float]:
    return {name: tree_cpu(proc.pid) for name, proc in stack.procs.items() if proc.poll() is None}


@dataclass
class Phase:
    """One timed phase: latencies (ms) by call, the CPU share (of one core) each process
    used meanwhile, the API's CPU time per request (ms; what the machine's load does not
    stretch), and the machine's 1-minute load average at its end."""

    samples: dict[str, list[float]]
    cpu: dict[str, float]
    api_cpu_ms: float
    load: float


async def timed_phase(
    stack: Stack, client: httpx.AsyncClient, ids: list[str], requests: int
) -> Phase:
    before, started = cpu_now(stack), time.perf_counter()
    samples = await time_reads(client, ids, requests)
    after, elapsed = cpu_now(stack), time.perf_counter() - started
    used = {name: after[name] - before.get(name, 0.0) for name in after}
    cpu = {name: seconds / elapsed for name, seconds in used.items()}
    # time_reads also makes WARMUP unmeasured calls per path.
    calls = sum(len(v) for v in samples.values()) + WARMUP * len(samples)
    return Phase(samples, cpu, used["api"] * 1000 / calls, os.getloadavg()[0])


async def settle(stack: Stack) -> float:
    """Wait until the Temporal server has written the create burst away (see SETTLE_CPU);
    the seconds waited."""
    pid = stack.procs["temporal"].pid
    started = time.perf_counter()
    while time.perf_counter() - started < SETTLE_MAX:
        before = tree_cpu(pid)
        await asyncio.sleep(SETTLE_WINDOW)
        if (tree_cpu(pid) - before) / SETTLE_WINDOW < SETTLE_CPU:
            break
    return time.perf_counter() - started


async def time_reads(
    client: httpx.AsyncClient, ids: list[str], requests: int
) -> dict[str, list[float]]:
    """Latencies (ms) of GET one prediction and GET the list, taking turns in blocks."""
    paths: dict[str, Callable[[], str]] = {
        "get": lambda: f"/v1/predictions/{random.choice(ids)}",
        "list": lambda: "/v1/predictions",
    }
    for path in paths.values():  # warm connections and caches
        for _ in range(WARMUP):
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


async def create_many(client: httpx.AsyncClient, count: int, wait: bool = False) -> list[str]:
    """``count`` hello-world predictions created by CREATORS clients at once: async, or
    with ``wait`` sync (each checked to succeed)."""
    ids: list[str] = []
    headers = {"Prefer": "wait"} if wait else {}

    async def creator(share: int) -> None:
        for _ in range(share):
            response = await client.post(HELLO, json={"input": {"text": "q"}}, headers=headers)
            assert response.status_code == 201, response.text
            assert not wait or response.json()["status"] == "succeeded", response.text
            ids.append(response.json()["id"])

    shares = [count // CREATORS + (i < count % CREATORS) for i in range(CREATORS)]
    await asyncio.gather(*(creator(n) for n in shares))
    return ids


def list_plan(engine: Engine, owner: str) -> list[str]:
    """The database's plan of the list route's first page (EXPLAIN, or SQLite's EXPLAIN
    QUERY PLAN)."""
    stmt = (
        select(Prediction)
        .where(Prediction.owner == owner)
        .order_by(col(Prediction.created_at).desc(), col(Prediction.id).desc())
        .limit(101)
    )
    sql = str(stmt.compile(engine, compile_kwargs={"literal_binds": True}))
    explain = "EXPLAIN QUERY PLAN " if engine.dialect.name == "sqlite" else "EXPLAIN "
    with engine.connect() as conn:
        return [str(row[-1]) for row in conn.execute(text(explain + sql))]


def analyze(engine: Engine) -> None:
    """Refresh PostgreSQL's statistics of the read model, as autovacuum does after a tenth of
    a table changed (the test server runs with autovacuum off)."""
    if engine.dialect.name == "postgresql":
        with engine.connect() as conn:
            conn.execute(text("ANALYZE prediction"))
            conn.commit()


def unfinished(engine: Engine) -> int:
    with engine.connect() as conn:
        query = text("SELECT count(*) FROM prediction WHERE status IN ('starting', 'processing')")
        return int(conn.execute(query).scalar_one())


# The worker's Temporal SDK metrics read at each interval of a drain (hardware queue only).
SDK_METRICS = {
    "cached": "temporal_sticky_cache_size",
    "evicted": "temporal_sticky_cache_total_forced_eviction",
    "tasks": "temporal_workflow_task_execution_latency_count",
}


async def sdk_metrics(client: httpx.AsyncClient, url: str) -> dict[str, float]:
    """The SDK_METRICS of the hardware queue ``cpu`` from a worker's Prometheus page."""
    found = dict.fromkeys(SDK_METRICS, 0.0)
    with contextlib.suppress(httpx.HTTPError):
        page = (await client.get(url)).text
        for line in page.splitlines():
            name, _, rest = line.partition("{")
            for key, metric in SDK_METRICS.items():
                if name == metric and 'task_queue="replicant-hw-cpu"' in rest:
                    found[key] += float(line.rsplit(" ", 1)[1])
    return found


async def drain(stack: Stack, engine: Engine, ids: list[str], limit: float) -> dict[str, float]:
    """Start the worker and wait until every queued prediction ended (or ``limit`` seconds
    passed); throughput and the worker's peak memory. Every INTERVAL it prints the
    completions, the load, and from the worker's SDK metrics the workflows it caches, those
    it evicted to make room, and the workflow tasks it handled so far."""
    port = free_port()
    started = datetime.now(UTC)
    worker = stack.start_worker(env={"REPLICANT_TEMPORAL_METRICS_PORT": str(port)})
    peak = 0
    begun = time.monotonic()
    until = begun + limit
    left, mark = len(ids), begun
    print(f"\ndrain of {len(ids):,}, every {INTERVAL:.0f} s since the worker's start:")
    print(f"{'s':>6}{'ended':>8}{'load':>7}{'cached':>8}{'evicted':>9}{'wf tasks':>10}")
    async with httpx.AsyncClient(timeout=5) as client:
        while (now_left := unfinished(engine)) and time.monotonic() < until:
            if worker.poll() is not None:
                raise RuntimeError(f"the worker exited with {worker.returncode}")
            peak = max(peak, tree_rss(worker.pid))
            if time.monotonic() - mark >= INTERVAL:
                mark = time.monotonic()
                sdk = await sdk_metrics(client, f"http://127.0.0.1:{port}/metrics")
                print(
                    f"{mark - begun:>6.0f}{left - now_left:>8}{os.getloadavg()[0]:>7.1f}"
                    f"{sdk['cached']:>8.0f}{sdk['evicted']:>9.0f}{sdk['tasks']:>10.0f}",
                    flush=True,
                )
                left = now_left
            await asyncio.sleep(0.5)
    peak = max(peak, tree_rss(worker.pid))
    wanted = set(ids)
    with Session(engine) as session:
        rows = [
            r
            for r in session.exec(
                select(Prediction.id, Prediction.status, Prediction.completed_at)
            ).all()
            if r[0] in wanted
        ]
    ended = [as_utc(r[2]) for r in rows if r[2] is not None]
    first, last = min(ended), max(ended)
    succeeded = sum(1 for r in rows if r[1] == "succeeded")
    return {
        "ended": len(ended),
        "boot_s": (first - started).total_seconds(),
        "total_s": (last - started).total_seconds(),
        "running_s": (last - first).total_seconds(),
        "succeeded": succeeded,
        "worker_peak": peak,
        "load": os.getloadavg()[0],
    }


def print_drain(drained: dict[str, float], queued: int, limit: float) -> None:
    print(
        f"\ndrain: {drained['succeeded']:,} of {queued:,} succeeded (of {drained['ended']:,} "
        f"ended within the {limit:.0f} s allowed); worker start to first completion "
        f"{drained['boot_s']:.1f} s, to last {drained['total_s']:.1f} s: "
        f"{drained['ended'] / drained['total_s']:.1f} predictions/s "
        f"({drained['ended'] / max(drained['running_s'], 1e-9):.1f}/s from the first "
        f"completion), load {drained['load']:.1f} at its end",
        flush=True,
    )


async def short_drain(
    stack: Stack, engine: Engine, client: httpx.AsyncClient, count: int, limit: float
) -> None:
    """A short queue's drain at the same load as the deep one, for comparison."""
    stack.stop("worker")
    ids = await create_many(client, count)
    await settle(stack)
    print_drain(await drain(stack, engine, ids, limit), count, limit)


CALLS = (("get", "GET /v1/predictions/{id}"), ("list", "GET /v1/predictions"))


def print_reads(phases: dict[str, Phase], n: int) -> None:
    idle = phases["idle"].samples
    print(f"\n{'call':<28}{'phase':<10}{'p50 ms':>9}{'p95 ms':>9}{'p95 / idle':>12}")
    for name, label in CALLS:
        for phase_name, phase in phases.items():
            values = phase.samples[name]
            ratio = percentile(values, 0.95) / percentile(idle[name], 0.95)
            print(
                f"{label:<28}{phase_name:<10}{statistics.median(values):>9.2f}"
                f"{percentile(values, 0.95):>9.2f}{ratio:>11.2f}x"
            )
        ratio = percentile(phases["queued"].samples[name], 0.95) / percentile(idle[name], 0.95)
        verdict = "met" if ratio <= 1.2 else "NOT met"
        print(f"{'':<28}p95 queued {ratio:.2f}x of idle at {n:,} (goal <= 1.2x): {verdict}")
    print(f"\n{'CPU share (of one core)':<28}" + "".join(f"{p:>10}" for p in phases))
    for proc in ("api", "temporal", "worker"):
        shares = [phase.cpu.get(proc) for phase in phases.values()]
        cells = "".join(f"{'-':>10}" if v is None else f"{v:>10.2f}" for v in shares)
        print(f"{proc:<28}{cells}")
    print(
        f"{'API CPU ms per request':<28}"
        + "".join(f"{p.api_cpu_ms:>10.2f}" for p in phases.values())
    )
    print(f"{'load average (1 min)':<28}" + "".join(f"{p.load:>10.1f}" for p in phases.values()))


async def run(
    stack: Stack,
    engine: Engine,
    token: str,
    queued: int,
    requests: int,
    drain_limit: float,
    short: int,
) -> None:
    settings = stack.settings
    headers = {"Authorization": f"Bearer {token}"}
    async with httpx.AsyncClient(
        base_url=settings.resolved_public_url, headers=headers, timeout=120
    ) as client:
        finished = await create_many(client, WARM, wait=True)
        phases = {"idle": await timed_phase(stack, client, finished, requests)}
        idle_memory = memory(stack)
        idle_db = (settings.data_dir / "temporal.db").stat().st_size

        if short:  # a short queue drained just before the deep one is queued
            await short_drain(stack, engine, client, short, drain_limit)
        stack.stop("worker")
        started = time.perf_counter()
        ids = await create_many(client, queued)
        create_rate = queued / (time.perf_counter() - started)
        settled = await settle(stack)
        owner = settings.default_account
        plans = {"": list_plan(engine, owner)}
        if engine.dialect.name == "postgresql":
            plans = {", before ANALYZE": plans[""]}
            analyze(engine)
            plans[", after ANALYZE"] = list_plan(engine, owner)
        phases["queued"] = await timed_phase(stack, client, ids, requests)
        queued_memory = memory(stack)
        queued_db = (settings.data_dir / "temporal.db").stat().st_size
        print(f"\n{queued:,} hello-world predictions queued on the cpu queue, worker stopped")
        print(f"created at {create_rate:.1f} predictions/s by {CREATORS} clients; Temporal")
        print(
            f"settled {settled:.1f} s after the last create (CPU under {SETTLE_CPU:.0%} of a core)"
        )
        print_reads(phases, queued)
        for when, plan in plans.items():
            print(f"\nplan of the list's first page at {queued:,} queued{when}:")
            print("\n".join(f"  {line}" for line in plan), flush=True)

        drained = await drain(stack, engine, ids, drain_limit)
        print_drain(drained, queued, drain_limit)
        if short and drained["ended"] == queued:  # the short queue again, after the deep one
            await short_drain(stack, engine, client, short, drain_limit)
        if drained["ended"] == queued:
            await settle(stack)
            phases["drained"] = await timed_phase(stack, client, ids, requests)
            print_reads(phases, queued)

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
    print_drain(drained, queued, drain_limit)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--queued", type=int, default=10_000, help="predictions to queue")
    parser.add_argument("--requests", type=int, default=300, help="timed GETs per call and state")
    parser.add_argument("--admin-url", default=ADMIN_URL)
    parser.add_argument("--database", choices=("postgres", "sqlite"), default="postgres")
    parser.add_argument(
        "--drain-seconds",
        type=float,
        default=3600.0,
        help="stop waiting for the drain after this long (throughput of what ended by then)",
    )
    parser.add_argument(
        "--short",
        type=int,
        default=0,
        help="also drain a queue this short just before and just after the deep one",
    )
    args = parser.parse_args()
    # A database of its own on the local server, dropped after the stack has stopped; or
    # the stack's own SQLite file.
    stacked: contextlib.AbstractContextManager[Stack] = (
        postgres_bench_stack(args.admin_url, hardware={"cpu": 2}, prebuild_envs=False)
        if args.database == "postgres"
        else bench_stack(hardware={"cpu": 2}, prebuild_envs=False)
    )
    with stacked as stack:
        token = stack.start()
        engine = create_engine(stack.settings.resolved_database_url)
        try:
            drain_args = (args.drain_seconds, args.short)
            asyncio.run(run(stack, engine, token, args.queued, args.requests, *drain_args))
        finally:
            engine.dispose()


if __name__ == "__main__":
    main()
