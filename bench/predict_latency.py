"""Latency and throughput of a warm sync prediction, side by side in one run.

1. Replicant: ``POST /v1/models/replicate/hello-world/predictions`` with ``Prefer: wait``.
2. coglet direct: the same input POSTed straight to a coglet process of that version.
3. The floor: a bare Temporal update-with-start whose one activity calls that coglet process,
   on the same Temporal dev server with the same settings as ``make dev``.
4. The floor with a local activity ("floor local"): the same workflow calling coglet in its
   own workflow task, as Replicant runs a version whose recent runs were fast
   (``local_run_seconds``); shown beside, the ratios stay against the floor above.

Run: ``.venv/bin/python bench/predict_latency.py [--requests 400] [--clients 1 8 64]
[--webhook]``. Prints, at each number of concurrent clients, percentiles (ms) and throughput
(predictions/s) of each path, and Replicant's ratios to the floor. With ``--webhook`` every
Replicant prediction has a ``completed`` webhook to a local receiver (its delivery runs after
the response), and the run reports when the last one arrived. It also prints the CPU time
(ms) each process spends per prediction beyond its idle rate (psutil's user + system time,
sampled before and after each burst): a figure that holds on a loaded machine, unlike
latency. The paths and the
client counts take turns in rounds rather than one after the other, so that the machine's
drift over the run weighs on each alike. Both Replicant's worker and the floor's have
``--slots`` runs at once; clients past that wait for a slot on both.
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable, Mapping
from pathlib import Path

import httpx
import psutil
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
# The paths and client counts take turns in rounds, so slow drift on a shared machine (other
# work, the dev server's SQLite file growing and checkpointing) falls on all of them alike.
ROUNDS = 8
# Seconds of quiet over which each process's idle CPU is measured.
IDLE_SAMPLE = 5.0


async def warm_up(call: Call, concurrency: int) -> None:
    """Warm-up includes concurrent rounds: every process a concurrent run needs (Replicant
    boots one model process per concurrent run of a version) is up before timing starts."""
    for _ in range(5):
        await call()
    for _ in range(3):
        await asyncio.gather(*(call() for _ in range(concurrency)))


async def burst(call: Call, requests: int, concurrency: int, latencies: list[float]) -> float:
    """Seconds for ``requests`` calls made by ``concurrency`` clients at once, each client
    sending its next call when its last is answered; each call's latency (ms) is appended
    to ``latencies``."""
    left = requests
    started = time.perf_counter()

    async def client() -> None:
        nonlocal left
        while left > 0:
            left -= 1
            sent = time.perf_counter()
            await call()
            latencies.append((time.perf_counter() - sent) * 1000)

    await asyncio.gather(*(client() for _ in range(concurrency)))
    return time.perf_counter() - started


Results = dict[int, dict[str, dict[str, float]]]
# Per client count and path: CPU ms per call of each group of processes.
CpuResults = dict[int, dict[str, dict[str, float]]]


class CpuMeter:
    """CPU seconds (user + system) spent by named groups of processes between two samples.
    A group is a function returning its processes now (a worker's model processes come and
    go); a process born between two samples counts with all of its time."""

    def __init__(self, groups: Mapping[str, Callable[[], list[psutil.Process]]]) -> None:
        self.groups = groups

    def sample(self) -> dict[str, dict[int, float]]:
        taken: dict[str, dict[int, float]] = {}
        for name, processes in self.groups.items():
            taken[name] = {}
            for process in processes():
                try:
                    times = process.cpu_times()
                except psutil.Error:  # ended since it was listed
                    continue
                taken[name][process.pid] = times.user + times.system
        return taken

    @staticmethod
    def spent(
        before: dict[str, dict[int, float]], after: dict[str, dict[int, float]]
    ) -> dict[str, float]:
        return {
            name: sum(t - before[name].get(pid, 0.0) for pid, t in pids.items())
            for name, pids in after.items()
        }


def with_descendants(proc: subprocess.Popen[bytes] | None) -> Callable[[], list[psutil.Process]]:
    def processes() -> list[psutil.Process]:
        if proc is None or proc.poll() is not None:
            return []
        try:
            root = psutil.Process(proc.pid)
            return [root, *root.children(recursive=True)]
        except psutil.Error:
            return []

    return processes


def descendants_only(proc: subprocess.Popen[bytes]) -> Callable[[], list[psutil.Process]]:
    def processes() -> list[psutil.Process]:
        return with_descendants(proc)()[1:]

    return processes


async def measure(
    calls: Mapping[str, Call], requests: int, clients: list[int], slots: int, meter: CpuMeter
) -> tuple[Results, CpuResults]:
    """At each number of concurrent clients, per path: latency percentiles (ms) and
    throughput (calls/s) of ``requests`` calls, the paths and client counts interleaved in
    ``ROUNDS`` rounds; and the CPU ms per call of each of ``meter``'s groups."""
    for call in calls.values():
        await warm_up(call, min(max(clients), slots))
    latencies: dict[int, dict[str, list[float]]] = {
        n: {name: [] for name in calls} for n in clients
    }
    elapsed = {n: dict.fromkeys(calls, 0.0) for n in clients}
    per_round = {n: max(n, requests // ROUNDS) for n in clients}
    # What each process spends with no prediction going on (polling, heartbeats, the dev
    # server's own timers) is taken out of each burst's figure: on a loaded machine a burst
    # lasts longer, and that idle time would weigh on each prediction.
    before = meter.sample()
    await asyncio.sleep(IDLE_SAMPLE)
    idle = {g: seconds / IDLE_SAMPLE for g, seconds in meter.spent(before, meter.sample()).items()}
    cpu: CpuResults = {
        n: {name: dict.fromkeys(meter.groups, 0.0) for name in calls} for n in clients
    }
    cpu[0] = {"idle (ms/s)": {g: rate * 1000 for g, rate in idle.items()}}
    for _ in range(ROUNDS):
        for n in clients:
            for name, call in calls.items():
                before = meter.sample()
                took = await burst(call, per_round[n], n, latencies[n][name])
                elapsed[n][name] += took
                for group, seconds in meter.spent(before, meter.sample()).items():
                    net = seconds - idle[group] * took
                    cpu[n][name][group] += net * 1000 / (per_round[n] * ROUNDS)
    results: Results = {}
    for n in clients:
        results[n] = {}
        for name, values in latencies[n].items():
            values.sort()
            results[n][name] = {
                "p50": statistics.median(values),
                "p95": values[int(len(values) * 0.95) - 1],
                "throughput": per_round[n] * ROUNDS / elapsed[n][name],
            }
    return results, cpu


def report_cpu(cpu: CpuResults) -> None:
    """CPU ms per prediction of each group of processes, per client count and path, net of
    what the group spends idle (the first row, in ms per second)."""
    groups = list(cpu[0]["idle (ms/s)"])
    print("\nCPU ms per prediction (user + system) beyond idle, per process")
    print(f"{'clients':<8}{'path':<16}" + "".join(f"{g:>10}" for g in groups) + f"{'total':>10}")
    for n, paths in sorted(cpu.items()):
        for name, spent in paths.items():
            cells = "".join(f"{spent[g]:>10.1f}" for g in groups)
            print(f"{n or '':<8}{name:<16}{cells}{sum(spent.values()):>10.1f}")


def report(results: Results, requests: int, slots: int) -> None:
    """Each client count's figures, then Replicant's ratios to the floor."""
    print(f"\nwarm sync hello-world, ~{requests} requests per path and client count, {slots} slots")
    for n, paths in results.items():
        print(f"\n{n} concurrent clients")
        print(f"{'path':<16}{'p50 ms':>10}{'p95 ms':>10}{'pred/s':>10}")
        for name, r in paths.items():
            print(f"{name:<16}{r['p50']:>10.1f}{r['p95']:>10.1f}{r['throughput']:>10.1f}")
    print("\nreplicant / floor (goal: p50 <= 1.1x, p95 <= 1.2x, throughput >= 1.0x)")
    print(f"{'clients':<10}{'p50':>8}{'p95':>8}{'pred/s':>8}")
    for n, paths in results.items():
        rep, floor = paths["replicant"], paths["temporal floor"]
        print(
            f"{n:<10}{rep['p50'] / floor['p50']:>7.2f}x{rep['p95'] / floor['p95']:>7.2f}x"
            f"{rep['throughput'] / floor['throughput']:>7.2f}x"
        )


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


async def main(requests: int, clients: list[int], slots: int, webhook: bool) -> None:
    if not webhook:
        await bench(requests, clients, slots, None)
        return
    with running_receiver() as receiver:
        await bench(requests, clients, slots, receiver)


async def all_delivered(receiver: Receiver, made: int, timeout: float = 300) -> float:
    """Seconds until the receiver holds ``made`` deliveries (the last webhooks are still on
    their way when the last response is read)."""
    started = time.perf_counter()
    while len(receiver.deliveries) < made:
        if time.perf_counter() - started > timeout:
            raise TimeoutError(f"{len(receiver.deliveries)} of {made} webhooks delivered")
        await asyncio.sleep(0.05)
    return time.perf_counter() - started


async def bench(requests: int, clients: list[int], slots: int, receiver: Receiver | None) -> None:
    data_dir = Path(tempfile.mkdtemp(prefix="replicant-bench-"))
    settings = Settings(
        data_dir=data_dir,
        api_port=free_port(),
        temporal_port=free_port(),
        ui_port=free_port(),
        hardware={"cpu": slots},
        log_level="WARNING",
        # The benchmark makes more predictions a minute than an account may by default.
        rate_limit_create="1000000/minute",
        # The webhook receiver listens on 127.0.0.1.
        allow_private_urls=receiver is not None,
        # Only hello-world runs: the real models' environments are not built.
        prebuild_envs=False,
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

        async def floor_call(local: bool) -> None:
            nonlocal counter
            counter += 1
            start = WithStartWorkflowOperation(
                FloorWorkflow.run,
                args=[f"{coglet_url}/predictions", local],
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
            max_concurrent_activities=slots,
        )
        async with worker:
            paths = {
                "coglet direct": coglet_call,
                "temporal floor": functools.partial(floor_call, False),
                "floor local": functools.partial(floor_call, True),
                "replicant": replicant_call,
            }
            meter = CpuMeter(
                {
                    "temporal": with_descendants(stack.procs["temporal"]),
                    "api": with_descendants(stack.procs["api"]),
                    "worker": lambda: with_descendants(stack.procs["worker"])()[:1],
                    "models": descendants_only(stack.procs["worker"]),
                    "coglet": with_descendants(coglet),
                    # The clients of every path, and the floor's worker.
                    "bench": lambda: [psutil.Process()],
                }
            )
            results, cpu = await measure(paths, requests, clients, slots, meter)
        report(results, requests, slots)
        report_cpu(cpu)
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
    parser.add_argument("--clients", type=int, nargs="+", default=[1, 8, 64])
    parser.add_argument("--slots", type=int, default=8, help="runs at once, on both paths")
    parser.add_argument("--webhook", action="store_true", help="a completed webhook on each")
    args = parser.parse_args()
    asyncio.run(main(args.requests, args.clients, args.slots, args.webhook))
