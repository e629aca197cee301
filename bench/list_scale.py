"""GET and list of predictions at 1,000 and 100,000 stored rows on PostgreSQL, and how many
predictions per second one and two workers complete.

1. A fresh database on the local PostgreSQL (``--admin-url``; dropped at the end), migrated;
   an API process on it; predictions bulk-inserted straight into the read model (one owner:
   the worst case for its list). ``GET /v1/predictions/{id}`` of random ids and
   ``GET /v1/predictions`` (first page, and a page deep in the cursor chain) are timed at
   1,000 rows, then at 100,000, with PostgreSQL's query plans for both queries; then the list
   filtered (status, model, version, deployment, source, creation time, and combined), first
   page and a page deep in the filtered cursor chain, at 100,000 rows.
2. A Temporal dev server and one worker, then two: a burst of async ``replicant/sleep``
   predictions of 1 s through the API, timed until all succeed (predictions/s).

Run: ``.venv/bin/python bench/list_scale.py [--requests 300] [--burst 40]``.
"""

from __future__ import annotations

import argparse
import random
import statistics
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import timedelta
from pathlib import Path
from typing import Any

import httpx
from sqlalchemy import insert, text
from sqlalchemy.engine import Engine

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.stacks import ADMIN_URL, postgres_bench_stack  # noqa: E402
from replicant.accounts import add_token, ensure_account  # noqa: E402
from replicant.db import init_db, make_engine  # noqa: E402
from replicant.devstack import Stack, wait_for_health  # noqa: E402
from replicant.ids import new_id  # noqa: E402
from replicant.tables import Prediction  # noqa: E402
from replicant.timeutil import utcnow  # noqa: E402

OWNER = "bench"
SIZES = (1_000, 100_000)
# Long enough that slots, not this machine's two cores, limit the throughput.
RUN_SECONDS = 1.0


def percentiles(samples: list[float]) -> str:
    samples = sorted(samples)
    p95 = samples[min(len(samples) - 1, int(len(samples) * 0.95))]
    return f"p50 {statistics.median(samples):6.2f} ms  p95 {p95:6.2f} ms"


def insert_predictions(engine: Engine, count: int, start: int) -> list[str]:
    """``count`` succeeded predictions of OWNER, one a second apart, newest last."""
    base = utcnow() - timedelta(days=30)
    ids: list[str] = []
    rows: list[dict[str, Any]] = []
    for i in range(start, start + count):
        pid = new_id()
        ids.append(pid)
        # Every 10th row is of another model, version and deployment; every 7th failed,
        # every 5th from the web: filters select from a mixed table, as in real use.
        other = i % 10 == 0
        rows.append(
            {
                "id": pid,
                "owner": OWNER,
                "model": "bench/other" if other else "replicate/hello-world",
                "version": "bench-other" if other else "bench",
                "deployment": f"{OWNER}/dep" if other else None,
                "source": "web" if i % 5 == 0 else "api",
                "status": "failed" if i % 7 == 0 else "succeeded",
                "input": {"text": f"row {i}"},
                "output": f"hello row {i}",
                "logs": "",
                "stream": False,
                "hardware": "cpu",
                "data_removed": False,
                "shared": False,
                "created_at": base + timedelta(seconds=i),
                "started_at": base + timedelta(seconds=i),
                "completed_at": base + timedelta(seconds=i, milliseconds=5),
            }
        )
        if len(rows) == 5000:
            with engine.begin() as conn:
                conn.execute(insert(Prediction), rows)
            rows = []
    if rows:
        with engine.begin() as conn:
            conn.execute(insert(Prediction), rows)
    # As a long-lived table is: statistics current, visibility map set (index-only checks).
    postgres = engine.dialect.name == "postgresql"
    with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
        conn.execute(text("VACUUM ANALYZE prediction" if postgres else "ANALYZE prediction"))
    return ids


def time_calls(client: httpx.Client, paths: list[str]) -> list[float]:
    for path in paths[:10]:  # warm connections and caches
        client.get(path).raise_for_status()
    samples = []
    for path in paths:
        started = time.perf_counter()
        client.get(path).raise_for_status()
        samples.append((time.perf_counter() - started) * 1000)
    return samples


def deep_cursor(client: httpx.Client, pages: int, path: str = "/v1/predictions") -> str:
    """The path of the list page ``pages`` pages down the cursor chain from ``path``."""
    for _ in range(pages):
        path = client.get(path).json()["next"].split("/v1", 1)[1]
        path = "/v1" + path
    return path


def explain(engine: Engine, sql: str, **params: Any) -> str:
    with engine.connect() as conn:
        plan = conn.execute(text(f"EXPLAIN {sql}"), params).scalars().all()
    return "\n      ".join(plan)


def bench_reads(engine: Engine, client: httpx.Client, requests: int) -> None:
    ids: list[str] = []
    for size in SIZES:
        ids += insert_predictions(engine, size - len(ids), len(ids))
        gets = [f"/v1/predictions/{random.choice(ids)}" for _ in range(requests)]
        get = time_calls(client, gets)
        first = time_calls(client, ["/v1/predictions"] * requests)
        deep = time_calls(client, [deep_cursor(client, 5)] * requests)
        print(f"{size:>7} predictions stored")
        print(f"  GET /v1/predictions/{{id}}          {percentiles(get)}")
        print(f"  GET /v1/predictions (first page)   {percentiles(first)}")
        print(f"  GET /v1/predictions (page 6)       {percentiles(deep)}")
    print("  plans at 100,000 rows:")
    print("    get:  " + explain(engine, "SELECT * FROM prediction WHERE id = :id", id=ids[0]))
    list_sql = (
        "SELECT * FROM prediction WHERE owner = :owner ORDER BY created_at DESC, id DESC LIMIT 101"
    )
    print("    list: " + explain(engine, list_sql, owner=OWNER))
    bench_filters(engine, client, requests)


FILTERS = {
    "status=failed": "SELECT * FROM prediction WHERE owner = :owner AND status = 'failed'",
    "model=bench/other": "SELECT * FROM prediction WHERE owner = :owner AND model = 'bench/other'",
    "version=bench-other": (
        "SELECT * FROM prediction WHERE owner = :owner AND version = 'bench-other'"
    ),
    "deployment=bench/dep": (
        "SELECT * FROM prediction WHERE owner = :owner AND deployment = 'bench/dep'"
    ),
    "source=web": "SELECT * FROM prediction WHERE owner = :owner AND source = 'web'",
    "created_before=<10 days ago>": None,
    "model=bench/other&status=failed": None,
}


def bench_filters(engine: Engine, client: httpx.Client, requests: int) -> None:
    """Filtered list pages at 100,000 rows: first page and page 6 of the filtered chain."""
    before = (utcnow() - timedelta(days=10)).isoformat().replace("+00:00", "Z")
    print("  filtered lists at 100,000 rows:")
    for query, sql in FILTERS.items():
        query = query.replace("<10 days ago>", before)
        path = f"/v1/predictions?{query}"
        first = time_calls(client, [path] * requests)
        deep = time_calls(client, [deep_cursor(client, 5, path)] * requests)
        print(f"    {query:<34} first {percentiles(first)}")
        print(f"    {'':<34} p6    {percentiles(deep)}")
        if sql is not None:
            order = " ORDER BY created_at DESC, id DESC LIMIT 101"
            print(f"      plan: {explain(engine, sql + order, owner=OWNER)}")


def bench_workers(stack: Stack, client: httpx.Client, burst: int) -> None:
    stack.start_temporal()
    stack.start_worker("worker-1")
    wait_for_health(stack.settings.resolved_public_url)

    def run_burst() -> float:
        body = {"input": {"seconds": RUN_SECONDS}}
        started = time.perf_counter()
        # Created by 8 clients at once, so creating them does not bound the rate measured.
        with ThreadPoolExecutor(8) as pool:
            created = pool.map(
                lambda _: client.post("/v1/models/replicant/sleep/predictions", json=body),
                range(burst),
            )
            ids = [response.json()["id"] for response in created]
        for pid in ids:
            while client.get(f"/v1/predictions/{pid}").json()["status"] != "succeeded":
                time.sleep(0.05)
        return burst / (time.perf_counter() - started)

    run_burst()  # boot the model processes
    one = run_burst()
    stack.start_worker("worker-2")
    run_burst()  # the second worker boots its model processes
    two = run_burst()
    print(f"throughput of {burst} async {RUN_SECONDS:g} s predictions of one version")
    print(f"  one worker   {one:6.2f} predictions/s")
    print(f"  two workers  {two:6.2f} predictions/s  ({two / one:.2f}x)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--requests", type=int, default=300)
    parser.add_argument("--burst", type=int, default=24)
    parser.add_argument("--admin-url", default=ADMIN_URL)
    args = parser.parse_args()
    with postgres_bench_stack(args.admin_url, hardware={"cpu": 2}) as stack:
        engine = make_engine(stack.settings.resolved_database_url)
        init_db(engine)
        token = add_token(engine, ensure_account(engine, OWNER))
        stack.prepare()
        stack.start_api()
        headers = {"Authorization": f"Bearer {token}"}
        url = stack.settings.resolved_public_url
        with httpx.Client(base_url=url, headers=headers, timeout=60) as client:
            bench_reads(engine, client, args.requests)
            bench_workers(stack, client, args.burst)
        engine.dispose()


if __name__ == "__main__":
    main()
