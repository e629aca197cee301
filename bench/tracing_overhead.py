"""What tracing costs a warm sync prediction: tracing off (the default) against on.

Two stacks side by side, alike but for ``REPLICANT_OTLP_ENDPOINT``: one untraced, one sending
every prediction's trace (API, workflow, activities and the sandboxed model's spans, through
the pool's relay) to a real OTLP/HTTP receiver (tests/otlp.py) in this process. Each takes
``POST /v1/models/replicate/hello-world/predictions`` with ``Prefer: wait``; the two paths
take turns in blocks of requests (``bench/predict_latency.py``'s ``measure``), so the
machine's drift weighs on each alike.

Run: ``.venv/bin/python bench/tracing_overhead.py [--requests 400] [--concurrency 8]`` (and
``make bench``). Prints percentiles (ms), throughput (predictions/s), their ratios, the spans
the receiver got and the machine's load average before and after.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import sys
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.floor import INPUT  # noqa: E402
from bench.predict_latency import Call, measure  # noqa: E402
from bench.stacks import bench_stack  # noqa: E402
from replicant.devstack import Stack  # noqa: E402
from tests.otlp import otlp_receiver  # noqa: E402

PATH = "/v1/models/replicate/hello-world/predictions"


def caller(stack: Stack, token: str, clients: list[httpx.AsyncClient]) -> Call:
    """A warm sync hello-world prediction through ``stack``'s API."""
    api = httpx.AsyncClient(
        base_url=stack.settings.resolved_public_url,
        headers={"Authorization": f"Bearer {token}", "Prefer": "wait"},
        timeout=60,
    )
    clients.append(api)

    async def call() -> None:
        response = await api.post(PATH, json={"input": INPUT})
        assert response.json()["status"] == "succeeded", response.text

    return call


def load() -> str:
    return " ".join(f"{value:.1f}" for value in os.getloadavg())


async def main(requests: int, concurrency: int) -> None:
    hardware = {"cpu": concurrency}
    clients: list[httpx.AsyncClient] = []
    with contextlib.ExitStack() as stacks:
        receiver = stacks.enter_context(otlp_receiver())
        # Only hello-world runs: the real models' environments are not built.
        off = stacks.enter_context(bench_stack(hardware=hardware, prebuild_envs=False))
        on = stacks.enter_context(
            bench_stack(hardware=hardware, otlp_endpoint=receiver.url, prebuild_envs=False)
        )
        calls = {"tracing off": caller(off, off.start(), clients)}
        calls["tracing on"] = caller(on, on.start(), clients)
        before = load()
        results = (await measure(calls, requests, [concurrency], concurrency))[concurrency]
        after = load()
        for api in clients:
            await api.aclose()
        await asyncio.sleep(2)  # the spans still batched (sent every second)
        spans = receiver.snapshot()
    print(f"\nwarm sync hello-world, {requests} requests, {concurrency} concurrent clients")
    print(f"{'path':<14}{'p50 ms':>10}{'p95 ms':>10}{'pred/s':>10}")
    for name, r in results.items():
        print(f"{name:<14}{r['p50']:>10.1f}{r['p95']:>10.1f}{r['throughput']:>10.1f}")
    traced, untraced = results["tracing on"], results["tracing off"]
    print(
        f"\non / off: p50 {traced['p50'] / untraced['p50']:.2f}x, "
        f"p95 {traced['p95'] / untraced['p95']:.2f}x, "
        f"throughput {traced['throughput'] / untraced['throughput']:.2f}x"
    )
    traces = {s.trace_id for s in spans}
    models = sum(1 for s in spans if s.service == "replicant-model")
    print(f"receiver: {len(spans)} spans in {len(traces)} traces ({models} from the model)")
    print(f"load average (1, 5, 15 min): {before} before, {after} after")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--requests", type=int, default=400)
    parser.add_argument("--concurrency", type=int, default=8)
    args = parser.parse_args()
    asyncio.run(main(args.requests, args.concurrency))
