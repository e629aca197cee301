"""CPU each process of the embedded stack spends per warm sync prediction, and where the API
process spends it.

Starts a stack as ``make dev`` runs it (SQLite, the Temporal dev server), warms
``replicate/hello-world`` up, then sends ``--requests`` ``Prefer: wait`` creates from
``--clients`` clients at once (closed loop) and prints, per process (API, worker, Temporal),
the CPU milliseconds (user + system, psutil) per prediction over the timed part, and the
predictions a second. On 2 cores throughput is CPU: what the API spends per create that the
floor (``bench/predict_latency.py``) does not is throughput lost.

With ``--profile OUT`` it also samples the API process (``--process worker``: the worker)
with py-spy (``pip install py-spy``)
over the timed part and writes its collapsed stacks to ``OUT``; ``--top N`` then prints the
functions with the most samples, inclusive and exclusive (py-spy's idle frames left out).

Run: ``.venv/bin/python bench/api_cpu.py [--requests 800] [--clients 8] [--profile out.txt]``.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.floor import INPUT  # noqa: E402
from bench.predict_latency import CpuMeter, with_descendants  # noqa: E402
from bench.stacks import bench_stack  # noqa: E402

MODEL = "/v1/models/replicate/hello-world/predictions"
# A frame's line number ("fn (path.py:12)"): functions are counted whole.
LINE = re.compile(r":\d+\)$")


async def run(requests: int, clients: int, api: httpx.AsyncClient) -> float:
    """Seconds for ``requests`` creates by ``clients`` clients, each sending its next create
    when its last is answered."""
    left = requests

    async def client() -> None:
        nonlocal left
        while left > 0:
            left -= 1
            response = await api.post(MODEL, json={"input": INPUT})
            assert response.json()["status"] == "succeeded", response.text

    started = time.perf_counter()
    await asyncio.gather(*(client() for _ in range(clients)))
    return time.perf_counter() - started


def top(collapsed: Path, n: int) -> None:
    """The ``n`` functions with the most samples in py-spy's collapsed stacks."""
    inclusive: collections.Counter[str] = collections.Counter()
    exclusive: collections.Counter[str] = collections.Counter()
    total = 0
    for line in collapsed.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack:
            continue
        samples = int(count)
        frames = stack.split(";")
        # py-spy names a thread's root frame "thread (0x...)" / "process ...": skip those.
        frames = [LINE.sub(")", f) for f in frames if not f.startswith(("thread (", "process "))]
        if not frames:
            continue
        total += samples
        for frame in set(frames):
            inclusive[frame] += samples
        exclusive[frames[-1]] += samples
    print(f"\n{total} samples; inclusive (frame anywhere in the stack):")
    for frame, count in inclusive.most_common(n):
        print(f"{100 * count / total:6.1f}%  {frame}")
    print("\nexclusive (the frame on top):")
    for frame, count in exclusive.most_common(n):
        print(f"{100 * count / total:6.1f}%  {frame}")


async def main(
    requests: int, clients: int, slots: int, profile: Path | None, n: int, process: str
) -> None:
    # Only hello-world runs: the real models' environments are not built.
    with bench_stack(hardware={"cpu": slots}, prebuild_envs=False) as stack:
        token = stack.start()
        procs = stack.procs
        # Each process with its children (a worker's model processes).
        meter = CpuMeter({name: with_descendants(p) for name, p in procs.items()})
        async with httpx.AsyncClient(
            base_url=stack.settings.resolved_public_url,
            headers={"Authorization": f"Bearer {token}", "Prefer": "wait"},
            timeout=60,
        ) as api:
            await run(20, 1, api)
            await run(5 * clients, clients, api)
            spy = None
            if profile is not None:
                spy = subprocess.Popen(
                    [
                        str(Path(sys.executable).parent / "py-spy"),
                        *("record", "-p", str(procs[process].pid), "-r", "100"),
                        *("-f", "raw", "-o", str(profile), "--nonblocking"),
                    ],
                    stdout=subprocess.DEVNULL,
                    stderr=subprocess.DEVNULL,
                )
                await asyncio.sleep(1)  # py-spy attaches
            before = meter.sample()
            load = os.getloadavg()
            seconds = await run(requests, clients, api)
            spent = CpuMeter.spent(before, meter.sample())
            if spy is not None:
                spy.send_signal(2)  # SIGINT: py-spy writes what it has
                spy.wait()
        print(
            f"{requests} creates, {clients} clients, {slots} slots: {requests / seconds:.1f}"
            f" pred/s; load average {load[0]:.2f} before, {os.getloadavg()[0]:.2f} after"
        )
        for name in procs:
            per = spent[name] * 1000 / requests
            print(f"{name:<10} {per:7.2f} CPU ms per prediction")
        if profile is not None and n:
            top(profile, n)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--requests", type=int, default=800)
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--slots", type=int, default=8, help="runs at once")
    parser.add_argument("--profile", type=Path, help="py-spy collapsed stacks of --process")
    parser.add_argument("--process", default="api", choices=["api", "worker"])
    parser.add_argument("--top", type=int, default=40, help="functions shown from --profile")
    args = parser.parse_args()
    asyncio.run(main(args.requests, args.clients, args.slots, args.profile, args.top, args.process))
