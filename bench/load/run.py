"""Many clients at once on a whole stack, with locust (headless): the mix of
``bench/load/locustfile.py`` at each client count in turn, closed loop, client timeout 60 s.

Prints, per client count and request kind: requests, throughput, p50/p95/p99 and failures
(by kind and message); over the whole run, ``/health``'s slowest answer and the resident
memory and open file descriptors of the API, worker and Temporal processes over time
(the worker's model processes apart) beside the fill of Temporal's workflow cache, and their
growth after the warm-up (a minute of load, and until that cache is full); at the end,
whether every created prediction reached a terminal state in the database and in Temporal
(its ``ReplicantStatus``), and whether every webhook arrived.

With ``--scale-out`` the stack is two API processes (the clients split evenly over them) and
two workers on PostgreSQL, Redis (rate limits) and S3 (moto_server).

Run: ``.venv/bin/python bench/load/run.py [--clients 16 64 256] [--duration 60]
[--postgres | --scale-out] [--held 256]`` (needs the ``bench`` extra:
``pip install -e '.[bench]'``). A 10-minute soak: ``--clients 256 --duration 600``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import csv
import json
import os
import random
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from statistics import mean
from typing import Any

ROOT = Path(__file__).resolve().parent.parent.parent
sys.path.insert(0, str(ROOT))

import httpx  # noqa: E402
import psutil  # noqa: E402
from sqlmodel import Session, col, select  # noqa: E402
from temporalio.service import RPCError  # noqa: E402

from bench.stacks import bench_stack, postgres_bench_stack  # noqa: E402
from replicant.db import make_engine  # noqa: E402
from replicant.devstack import (  # noqa: E402
    Stack,
    free_port,
    moto_server,
    wait_for_health,
)
from replicant.tables import TERMINAL_STATUSES, Prediction  # noqa: E402
from replicant.temporal import connect  # noqa: E402

LOCUSTFILE = Path(__file__).with_name("locustfile.py")
SAMPLE_EVERY = 5.0
STALL = 120.0  # seconds without progress after which what is not terminal counts as stuck
WARM_UP = 60.0  # seconds of load before the growth of RSS and fds is measured
GROWTH_WINDOW = 60.0  # seconds averaged at each end of the growth measured
PAGE = "status=succeeded&model=replicate/hello-world"


class Receiver(ThreadingHTTPServer):
    """Counts the webhook deliveries it receives, by prediction id."""

    daemon_threads = True

    def __init__(self) -> None:
        self.delivered: set[str] = set()
        super().__init__(("127.0.0.1", free_port()), _Hook)


class _Hook(BaseHTTPRequestHandler):
    server: Receiver

    def do_POST(self) -> None:  # noqa: N802 (http.server's name)
        body = self.rfile.read(int(self.headers.get("content-length") or 0))
        with contextlib.suppress(ValueError, KeyError):
            self.server.delivered.add(json.loads(body)["id"])
        self.send_response(204)
        self.end_headers()

    def log_message(self, *_: Any) -> None:
        pass


@dataclass
class Watch:
    """Samples the stack's processes and probes ``/health`` while the load runs."""

    stack: Stack
    url: str
    samples: list[dict[str, Any]] = field(default_factory=list)
    health: list[tuple[float, float, int]] = field(default_factory=list)  # (at, seconds, status)
    stop: threading.Event = field(default_factory=threading.Event)
    started: float = field(default_factory=time.monotonic)
    processes: dict[str, psutil.Process] = field(default_factory=dict)
    caches: list[tuple[int, int] | None] = field(default_factory=list)  # one per sample
    probed: threading.Event = field(default_factory=threading.Event)  # a first /health answered

    def sample(self) -> None:
        row: dict[str, Any] = {"at": time.monotonic() - self.started}
        for name, proc in self.stack.procs.items():
            with contextlib.suppress(psutil.Error):
                if self.processes.get(name, psutil.Process()).pid != proc.pid:
                    self.processes[name] = psutil.Process(proc.pid)
                p = self.processes[name]
                row[name] = (p.memory_info().rss, p.num_fds(), p.cpu_percent())
                if name.startswith("worker"):
                    kids = [k for k in p.children(recursive=True) if k.is_running()]
                    row[f"{name} models"] = (
                        sum(k.memory_info().rss for k in kids),
                        sum(k.num_fds() for k in kids),
                        None,
                    )
        self.samples.append(row)
        self.caches.append(self.stack.temporal_cache())

    def run_sampler(self) -> None:
        while not self.stop.wait(SAMPLE_EVERY):
            self.sample()

    def run_health(self) -> None:
        # A monitor's probe every second, from before the load starts (as a load balancer
        # polls): the API checks its parts in the background while /health is asked, and the
        # first /health after a quiet spell waits for a first check (api/healthwatch.py).
        with httpx.Client(timeout=60) as client:
            while True:
                began = time.monotonic()
                try:
                    status = client.get(f"{self.url}/health").status_code
                except httpx.HTTPError:
                    status = 0
                self.health.append((began - self.started, time.monotonic() - began, status))
                self.probed.set()
                if self.stop.wait(1.0):
                    return

    @contextlib.contextmanager
    def running(self) -> Iterator[None]:
        self.sample()
        threads = [
            threading.Thread(target=t, daemon=True) for t in (self.run_sampler, self.run_health)
        ]
        for t in threads:
            t.start()
        if not self.probed.wait(60):
            raise TimeoutError("/health gave no answer within 60 s before the load")
        try:
            yield
        finally:
            self.stop.set()
            for t in threads:
                t.join()
            self.sample()


def run_locust(url: str, token: str, hook: str, clients: int, duration: int, out: Path) -> Path:
    """One locust run; returns its CSV prefix."""
    prefix = out / f"c{clients}"
    env = {
        **os.environ,
        "LOAD_TOKEN": token,
        "LOAD_WEBHOOK": hook,
        "LOAD_IDS": str(prefix) + "_ids.txt",
    }
    cmd = [
        sys.executable, "-m", "locust", "-f", str(LOCUSTFILE), "--headless",
        "-u", str(clients), "-r", str(clients), "-t", f"{duration}s", "--host", url,
        "--csv", str(prefix), "--only-summary", "--stop-timeout", "65", "--loglevel", "ERROR",
    ]  # fmt: skip
    with open(f"{prefix}_locust.log", "wb") as log:  # locust's own summary: the CSVs say it
        subprocess.run(cmd, env=env, check=False, stdout=log, stderr=subprocess.STDOUT)
    return prefix


def report(prefix: Path, label: str) -> None:
    with open(f"{prefix}_stats.csv") as f:
        rows = list(csv.DictReader(f))
    print(f"\n## {label}")
    print(f"{'kind':28} {'requests':>8} {'fail':>5} {'req/s':>7} {'p50':>7} {'p95':>7} {'p99':>7}")
    for r in rows:
        print(
            f"{r['Name'][:28]:28} {r['Request Count']:>8} {r['Failure Count']:>5} "
            f"{float(r['Requests/s']):7.1f} {r['50%']:>6}ms {r['95%']:>6}ms {r['99%']:>6}ms"
        )
    with open(f"{prefix}_failures.csv") as f:
        failures = list(csv.DictReader(f))
    for r in failures:
        print(f"  failed: {r['Name']}: {r['Occurrences']}x {r['Error'][:150]}")


def report_watch(watch: Watch) -> None:
    worst = max(watch.health, key=lambda h: h[1], default=(0.0, 0.0, 0))
    slow = sum(1 for h in watch.health if h[1] >= 1.0)
    bad = sum(1 for h in watch.health if h[2] != 200)
    print(
        f"\n/health: {len(watch.health)} probes, slowest {worst[1]:.2f}s at {worst[0]:.0f}s, "
        f"{slow} at 1 s or more, {bad} not 200"
    )
    names = [k for k in watch.samples[-1] if k != "at"]
    print(
        "\nprocess RSS (MB) / open fds / CPU % (of one core) over time, and the Temporal "
        "history service's mutable-state cache (workflows held / its bound):"
    )
    print(f"{'t (s)':>6} " + " ".join(f"{n:>20}" for n in [*names, "temporal cache"]))
    for row, cache in zip(watch.samples, watch.caches, strict=True):
        cells = []
        for n in names:
            rss, fds, cpu = row.get(n, (0, 0, None))
            cells.append(f"{rss / 2**20:.0f}/{fds}" + ("" if cpu is None else f"/{cpu:.0f}"))
        cells.append("?" if cache is None else f"{cache[0]}/{cache[1]}")
        print(f"{row['at']:6.0f} " + " ".join(f"{c:>20}" for c in cells))
    # Growth after warm-up: from the first sample past the warm-up to the last one under
    # load (the last sample of all is taken after the load stopped). The warm-up is WARM_UP
    # seconds of load, and lasts until Temporal's mutable-state cache has filled to its bound
    # (a cache filling is not growth; on a loaded machine it fills later).
    full = next(
        (
            row["at"]
            for row, c in zip(watch.samples, watch.caches, strict=True)
            if c and c[0] >= c[1]
        ),
        None,
    )
    if full is not None and full > WARM_UP:
        print(f"Temporal's mutable-state cache filled at {full:.0f}s: the warm-up lasts until then")
    start = max(WARM_UP, full or 0.0)
    loaded = [row for row in watch.samples[:-1] if row["at"] >= start]
    if len(loaded) >= 2:
        # Means over a window at each end: a garbage-collected heap's saw-tooth (Go's, Python's)
        # is not growth, a rising mean is.
        window = min(GROWTH_WINDOW, (loaded[-1]["at"] - loaded[0]["at"]) / 4)
        head = [r for r in loaded if r["at"] <= loaded[0]["at"] + window]
        tail = [r for r in loaded if r["at"] >= loaded[-1]["at"] - window]
        first, last = loaded[0], loaded[-1]
        growth = []
        for n in names:
            if all(n in r for r in (*head, *tail)):
                rss = [mean(r[n][0] for r in rows) for rows in (head, tail)]
                fds = [mean(r[n][1] for r in rows) for rows in (head, tail)]
                if rss[0]:
                    growth.append(
                        f"{n} RSS {100 * (rss[1] - rss[0]) / rss[0]:+.0f}% "
                        f"fds {100 * (fds[1] - fds[0]) / max(1.0, fds[0]):+.0f}%"
                    )
        span = f"means of {window:.0f} s at {first['at']:.0f}s and at {last['at']:.0f}s"
        print(f"growth after warm-up ({span}): " + ", ".join(growth))


def check_terminal(stack: Stack, ids: list[str], receiver: Receiver, hooks: int) -> None:
    """Every created prediction terminal in the database and in Temporal; webhooks arrived."""
    engine = make_engine(stack.settings.resolved_database_url)
    # A backlog left when the load stops drains at the stack's pace: wait while it shrinks,
    # and give up once it has not for STALL seconds (then what is left is stuck).
    fewest, progressed = len(ids) + 1, time.monotonic()
    while True:
        with Session(engine) as session:
            rows = session.exec(
                select(Prediction.id, Prediction.status).where(col(Prediction.id).in_(ids))
            ).all()
        open_rows = [r for r in rows if r[1] not in TERMINAL_STATUSES]
        if len(open_rows) < fewest:
            fewest, progressed = len(open_rows), time.monotonic()
        if (not open_rows and len(rows) == len(ids)) or time.monotonic() - progressed > STALL:
            break
        time.sleep(1)
    engine.dispose()
    print(
        f"\nprediction rows: {len(ids)} created, {len(ids) - len(rows)} missing, "
        f"{len(open_rows)} not terminal {open_rows[:5]}"
    )

    async def temporal() -> tuple[int, set[str]]:
        client = await connect(stack.settings)
        query = (
            "WorkflowType = 'PredictionWorkflow' AND ExecutionStatus = 'Running' "
            "AND ReplicantStatus IN ('starting', 'processing')"
        )
        stuck = [w.id async for w in client.list_workflows(query)]
        seen = {w.id async for w in client.list_workflows("WorkflowType = 'PredictionWorkflow'")}
        return len(stuck), seen

    deadline = time.monotonic() + STALL
    while True:  # visibility lags, and the worker may still have workflow tasks to run
        try:
            stuck, seen = asyncio.run(temporal())
        except RPCError as err:  # a list that times out on a busy server: ask again
            if time.monotonic() > deadline:
                raise
            print(f"temporal list failed ({err.status.name}), asking again")
            time.sleep(2)
            continue
        if not stuck or time.monotonic() > deadline:
            break
        time.sleep(2)
    lost = [i for i in ids if f"prediction-{i}" not in seen]
    print(f"temporal: {stuck} workflows still starting/processing, {len(lost)} never started")
    deadline = time.monotonic() + 60
    while len(receiver.delivered) < hooks and time.monotonic() < deadline:
        time.sleep(0.5)
    print(f"webhooks: {len(receiver.delivered)} of {hooks} delivered")


async def held_round(url: str, token: str, held: int, seconds: float) -> list[str]:
    """``held`` long-held requests at once (half ``Prefer: wait=50`` creates of a 30 s sleep,
    which queue behind each other, half event streams of streaming predictions queued behind
    them) and meanwhile 16 closed-loop clients of short GETs for ``seconds``; prints the
    short GETs' latency and failures. Returns the created predictions' ids (then canceled)."""
    auth = {"Authorization": f"Bearer {token}"}
    limits = httpx.Limits(max_connections=held + 64, max_keepalive_connections=held + 64)
    created: list[str] = []
    async with httpx.AsyncClient(base_url=url, headers=auth, timeout=60, limits=limits) as http:

        async def create(model: str, body: dict[str, Any], **headers: str) -> Any:
            answer = await http.post(
                f"/v1/models/{model}/predictions", json={"input": body}, headers=headers
            )
            answer.raise_for_status()
            created.append(answer.json()["id"])
            return answer.json()

        async def wait_held() -> str:
            try:
                await create("replicant/sleep", {"seconds": 30}, Prefer="wait=50")
                return "ok"
            except httpx.HTTPError as err:
                return type(err).__name__

        async def stream_held() -> str:
            try:
                prediction = await create("replicant/ngram", {"prompt": "a", "max_tokens": 4})
                async with http.stream("GET", prediction["urls"]["stream"]) as answer:
                    async for _ in answer.aiter_bytes():
                        pass
                return "ok" if answer.status_code == 200 else str(answer.status_code)
            except httpx.HTTPError as err:
                return type(err).__name__

        holders = [asyncio.create_task(wait_held()) for _ in range(held // 2)]
        holders += [asyncio.create_task(stream_held()) for _ in range(held - held // 2)]
        times: list[float] = []
        failures: Counter[str] = Counter()
        end = time.monotonic() + seconds

        async def short_client() -> None:
            while time.monotonic() < end:
                path = random.choice(["/v1/models", "/v1/account", f"/v1/predictions?{PAGE}"])
                began = time.monotonic()
                try:
                    answer = await http.get(path)
                    if answer.status_code != 200:
                        failures[str(answer.status_code)] = (
                            failures.get(str(answer.status_code), 0) + 1
                        )
                except httpx.HTTPError as err:
                    failures[type(err).__name__] = failures.get(type(err).__name__, 0) + 1
                times.append(time.monotonic() - began)

        await asyncio.gather(*(short_client() for _ in range(16)))
        open_holders = sum(1 for h in holders if not h.done())
        for prediction_id in list(created):
            await http.post(f"/v1/predictions/{prediction_id}/cancel")
        outcomes = Counter(await asyncio.gather(*holders))
    times.sort()

    def pct(q: float) -> float:
        return times[min(len(times) - 1, int(q * len(times)))] * 1000 if times else 0.0

    print(
        f"\n## {held} held requests ({open_holders} still held when the short GETs ended)\n"
        f"short GETs: {len(times)} in {seconds:.0f}s ({len(times) / seconds:.1f}/s), "
        f"p50 {pct(0.5):.0f}ms p95 {pct(0.95):.0f}ms p99 {pct(0.99):.0f}ms, "
        f"failures {dict(failures) or 0}; held requests' outcomes {dict(outcomes)}"
    )
    return created


@contextlib.contextmanager
def topology(args: argparse.Namespace) -> Iterator[tuple[Stack, str, list[str]]]:
    """The stack, its token and its API URLs: ``make dev``'s processes (SQLite, or
    PostgreSQL), or with ``--scale-out`` two API processes and two workers on PostgreSQL,
    Redis and S3 (moto_server)."""
    # Webhooks go to a receiver on 127.0.0.1; the real models are not used.
    settings: dict[str, Any] = {"allow_private_urls": True, "prebuild_envs": False}
    if not args.scale_out:
        make_stack = postgres_bench_stack if args.postgres else bench_stack
        with make_stack(**settings) as stack:
            token = stack.start()
            yield stack, token, [stack.settings.resolved_public_url]
        return
    with moto_server() as s3:
        settings |= {
            "storage": "s3",
            "s3_endpoint": s3,
            "s3_bucket": f"load-{os.urandom(4).hex()}",
            "s3_access_key": "testing",
            "s3_secret_key": "testing",
            "redis_url": args.redis_url,
            "rate_limit_prefix": f"replicant-load-{os.urandom(4).hex()}",
        }
        # Two API processes and two workers share the server's connections (PostgreSQL's
        # default max_connections is 100): each API process keeps 2 x api_threads + 9
        # (docs/configuration.md), 33 at 12 threads, beside the workers' pools.
        with postgres_bench_stack(api_threads=12, **settings) as stack:
            token = stack.prepare()
            stack.start_temporal()
            for name in ["worker", "worker-2"]:
                stack.start_worker(name)
            urls = [stack.start_api(), stack.start_api("api-2", free_port())]
            for url in urls:
                wait_for_health(url)
            yield stack, token, urls


def warm(url: str, token: str) -> None:
    """Boot each model once, so that the rounds measure warm runs."""
    headers = {"Authorization": f"Bearer {token}", "Prefer": "wait"}
    for model, body in [
        ("replicate/hello-world", {"text": "warm"}),
        ("replicant/ngram", {"prompt": "warm", "max_tokens": 2}),
        ("replicant/sleep", {"seconds": 0}),
    ]:
        httpx.post(
            f"{url}/v1/models/{model}/predictions",
            json={"input": body},
            headers=headers,
            timeout=300,
        )


def load_round(
    urls: list[str], token: str, hook: str, clients: int, duration: int, out: Path
) -> tuple[list[str], int]:
    """One client count, split evenly over the API processes (one locust each); the created
    predictions' ids and how many of them asked for a webhook."""
    prefixes: list[Path] = []
    runners = []
    for i, url in enumerate(urls):
        share = clients // len(urls) + (1 if i < clients % len(urls) else 0)
        where = out / f"api{i}"
        where.mkdir(exist_ok=True)
        runner = threading.Thread(
            target=lambda u=url, n=share, w=where: prefixes.append(
                run_locust(u, token, hook, n, duration, w)
            )
        )
        runner.start()
        runners.append(runner)
    for runner in runners:
        runner.join()
    ids: list[str] = []
    hooks = 0
    for i, prefix in enumerate(sorted(prefixes)):
        label = f"{clients} clients" + (
            f", API process {i + 1} of {len(urls)}" if i or len(urls) > 1 else ""
        )
        report(prefix, label)
        ids += Path(f"{prefix}_ids.txt").read_text().split()
        with open(f"{prefix}_stats.csv") as f:
            hooks += sum(
                int(r["Request Count"]) - int(r["Failure Count"])
                for r in csv.DictReader(f)
                if r["Name"] == "create (webhook)"
            )
    return ids, hooks


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clients", type=int, nargs="+", default=[16, 64, 256])
    parser.add_argument("--duration", type=int, default=60, help="seconds per client count")
    parser.add_argument("--postgres", action="store_true", help="on a fresh PostgreSQL database")
    parser.add_argument(
        "--scale-out",
        action="store_true",
        help="two API processes and two workers on PostgreSQL, Redis and S3 (moto_server)",
    )
    parser.add_argument("--redis-url", default="redis://127.0.0.1:6379/0")
    parser.add_argument(
        "--held", type=int, default=0, help="then this many held requests beside short GETs"
    )
    parser.add_argument("--held-seconds", type=float, default=30.0)
    args = parser.parse_args()
    receiver = Receiver()
    threading.Thread(target=receiver.serve_forever, daemon=True).start()
    hook = f"http://127.0.0.1:{receiver.server_port}/hook"
    with topology(args) as (stack, token, urls), tempfile.TemporaryDirectory() as out:
        warm(urls[0], token)
        watch = Watch(stack, urls[0])
        ids: list[str] = []
        hooks = 0
        with watch.running():
            for clients in args.clients:
                created, asked = load_round(urls, token, hook, clients, args.duration, Path(out))
                ids += created
                hooks += asked
            if args.held:
                ids += asyncio.run(held_round(urls[0], token, args.held, args.held_seconds))
        report_watch(watch)
        check_terminal(stack, ids, receiver, hooks)
    receiver.shutdown()


if __name__ == "__main__":
    main()
