"""Deployments: queue wait under a burst, and the first prediction on a warm vs a cold one.

1. A burst of N predictions (``replicant/sleep``, a short sleep each) at a deployment with
   ``max_instances`` 1, then at one with 2: queue wait (``started_at - created_at``, the time
   a prediction waited for an instance) p50/p95, and the wall time of the whole burst.
2. The first prediction of a deployment with ``min_instances`` 1 (its instance is already
   warm) against one with ``min_instances`` 0 (the instance boots for it): sync latency.

Run: ``.venv/bin/python bench/deployment_scale.py [--burst 50] [--seconds 0.2]``.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import tempfile
import time
from datetime import datetime
from pathlib import Path
from typing import Any

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from replicant.devstack import Stack, free_port  # noqa: E402
from replicant.settings import Settings  # noqa: E402


def parse(ts: str) -> datetime:
    return datetime.fromisoformat(ts.replace("Z", "+00:00"))


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


async def deploy(api: httpx.AsyncClient, name: str, model: str, **config: Any) -> str:
    version = (await api.get(f"/v1/models/{model}")).json()["latest_version"]["id"]
    body = {"name": name, "model": model, "version": version, "hardware": "cpu", **config}
    response = await api.post("/v1/deployments", json=body)
    response.raise_for_status()
    owner: str = response.json()["owner"]
    return f"{owner}/{name}"


async def wait_instances(api: httpx.AsyncClient, deployment: str, count: int) -> None:
    while (await api.get(f"/v1/deployments/{deployment}")).json()["instances"] != count:
        await asyncio.sleep(0.1)


async def burst(api: httpx.AsyncClient, deployment: str, n: int, seconds: float) -> None:
    started = time.perf_counter()
    ids = []
    for _ in range(n):
        response = await api.post(
            f"/v1/deployments/{deployment}/predictions", json={"input": {"seconds": seconds}}
        )
        response.raise_for_status()
        ids.append(response.json()["id"])
    waits: list[float] = []
    for prediction_id in ids:
        while True:
            body = (await api.get(f"/v1/predictions/{prediction_id}")).json()
            if body["status"] in ("succeeded", "failed", "canceled"):
                break
            await asyncio.sleep(0.1)
        assert body["status"] == "succeeded", body
        waits.append((parse(body["started_at"]) - parse(body["created_at"])).total_seconds())
    wall = time.perf_counter() - started
    peak = (await api.get(f"/v1/deployments/{deployment}")).json()
    print(
        f"  {deployment:<40} queue wait p50 {pct(waits, 0.5):6.2f} s  "
        f"p95 {pct(waits, 0.95):6.2f} s  burst done in {wall:6.2f} s "
        f"(instances now {peak['instances']})"
    )


async def first_prediction(api: httpx.AsyncClient, deployment: str) -> float:
    started = time.perf_counter()
    response = await api.post(
        f"/v1/deployments/{deployment}/predictions",
        json={"input": {"text": "first"}},
        headers={"Prefer": "wait"},
    )
    elapsed = time.perf_counter() - started
    assert response.json()["status"] == "succeeded", response.text
    return elapsed


async def main(n: int, seconds: float, rounds: int) -> None:
    data_dir = Path(tempfile.mkdtemp(prefix="replicant-bench-"))
    settings = Settings(
        data_dir=data_dir,
        api_port=free_port(),
        temporal_port=free_port(),
        ui_port=free_port(),
        hardware={"cpu": 2},
        deployment_check_interval=0.5,
        deployment_idle_timeout=30,
        log_level="WARNING",
    )
    stack = Stack(settings, ui=False, log_dir=data_dir / "logs")
    try:
        token = stack.start()
        api = httpx.AsyncClient(
            base_url=settings.resolved_public_url,
            headers={"Authorization": f"Bearer {token}"},
            timeout=120,
        )
        print(f"burst of {n} predictions of replicant/sleep ({seconds:g} s each), min_instances 1")
        for max_instances in (1, 2):
            deployment = await deploy(
                api,
                f"burst-max{max_instances}",
                "replicant/sleep",
                min_instances=1,
                max_instances=max_instances,
            )
            await wait_instances(api, deployment, 1)
            await burst(api, deployment, n, seconds)

        print(f"first sync prediction of replicate/hello-world, {rounds} deployments each")
        warm: list[float] = []
        cold: list[float] = []
        second: list[float] = []
        for i in range(rounds):
            deployment = await deploy(
                api, f"warm-{i}", "replicate/hello-world", min_instances=1, max_instances=1
            )
            await wait_instances(api, deployment, 1)
            warm.append(await first_prediction(api, deployment))
            second.append(await first_prediction(api, deployment))
            deployment = await deploy(
                api, f"cold-{i}", "replicate/hello-world", min_instances=0, max_instances=1
            )
            cold.append(await first_prediction(api, deployment))
        print(f"  warm (min_instances 1): median {statistics.median(warm) * 1000:8.1f} ms")
        print(f"  cold (min_instances 0): median {statistics.median(cold) * 1000:8.1f} ms")
        print(f"  (second prediction, warm): median {statistics.median(second) * 1000:8.1f} ms")
        # For reference: the same model through its hardware queue, warm, on this machine now.
        plain: list[float] = []
        for _ in range(rounds + 1):
            started = time.perf_counter()
            response = await api.post(
                "/v1/models/replicate/hello-world/predictions",
                json={"input": {"text": "plain"}},
                headers={"Prefer": "wait"},
            )
            plain.append(time.perf_counter() - started)
            assert response.json()["status"] == "succeeded", response.text
        reference = statistics.median(plain[1:]) * 1000
        print(f"  (no deployment, warm model): median {reference:8.1f} ms")
        await api.aclose()
    finally:
        stack.stop()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--burst", type=int, default=50)
    parser.add_argument("--seconds", type=float, default=0.2)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    asyncio.run(main(args.burst, args.seconds, args.rounds))
