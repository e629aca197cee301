"""Time to first token of a streaming model, and webhook delay after completion.

1. Replicant: ``POST /v1/models/replicant/ngram/predictions`` then ``GET urls.stream``
   (SSE), timed from the POST to the first ``output`` event.
2. coglet direct: ``PUT /predictions/{id}`` with ``Prefer: respond-async`` and a webhook to
   a local receiver (coglet's way of reporting partial output), timed to the first delivery
   that carries output.
3. Webhooks: hello-world predictions with a ``completed`` webhook; the delay from the
   prediction's ``completed_at`` to the receiver getting it.

Run: ``.venv/bin/python bench/stream.py [--runs 30]``. Prints p50/p95 in ms.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import datetime
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.predict_latency import start_coglet, wait_ready  # noqa: E402
from replicant.devstack import Stack, free_port, wait_for_port  # noqa: E402
from replicant.ids import new_id  # noqa: E402
from replicant.settings import Settings  # noqa: E402
from tests.receiver import Receiver, running_receiver  # noqa: E402

NGRAM_INPUT = {"prompt": "the", "max_tokens": 200, "seed": 5}


def percentiles(values: list[float]) -> tuple[float, float]:
    values = sorted(values)
    return statistics.median(values), values[max(0, int(len(values) * 0.95) - 1)]


async def replicant_ttft(api: httpx.AsyncClient) -> float:
    started = time.perf_counter()
    created = (
        await api.post("/v1/models/replicant/ngram/predictions", json={"input": NGRAM_INPUT})
    ).json()
    async with api.stream("GET", created["urls"]["stream"]) as response:
        event = ""
        async for line in response.aiter_lines():
            if line.startswith("event:"):
                event = line.partition(":")[2].strip()
            elif line.startswith("data:") and event == "output":
                ttft = time.perf_counter() - started
                break
        else:
            raise RuntimeError("the stream ended without output")
    await wait_done(api, created["id"])
    return ttft * 1000


async def wait_done(api: httpx.AsyncClient, prediction_id: str) -> dict[str, object]:
    while True:
        body: dict[str, object] = (await api.get(f"/v1/predictions/{prediction_id}")).json()
        if body["status"] in ("succeeded", "failed", "canceled"):
            return body
        await asyncio.sleep(0.02)


async def coglet_ttft(client: httpx.AsyncClient, url: str, receiver: Receiver) -> float:
    prediction_id = new_id()
    started = time.perf_counter()
    response = await client.put(
        f"{url}/predictions/{prediction_id}",
        json={"input": NGRAM_INPUT, "webhook": receiver.url, "webhook_events_filter": ["output"]},
        headers={"Prefer": "respond-async"},
    )
    response.raise_for_status()
    while True:
        for d in receiver.for_prediction(prediction_id):
            if d.json().get("output"):
                return (d.received_at - started) * 1000
        await asyncio.sleep(0.0005)


async def webhook_delay(api: httpx.AsyncClient, receiver: Receiver) -> float:
    created = (
        await api.post(
            "/v1/models/replicate/hello-world/predictions",
            json={
                "input": {"text": "hook"},
                "webhook": receiver.url,
                "webhook_events_filter": ["completed"],
            },
            headers={"Prefer": "wait"},
        )
    ).json()
    while True:
        found = receiver.for_prediction(created["id"])
        if found:
            body = found[0].json()
            completed = datetime.fromisoformat(body["completed_at"]).timestamp()
            return (found[0].received_wall - completed) * 1000
        await asyncio.sleep(0.001)


async def main(runs: int) -> None:
    data_dir = Path(tempfile.mkdtemp(prefix="replicant-bench-"))
    settings = Settings(
        data_dir=data_dir,
        api_port=free_port(),
        temporal_port=free_port(),
        ui_port=free_port(),
        hardware={"cpu": 2},
        allow_private_urls=True,
        log_level="WARNING",
    )
    stack = Stack(settings, ui=False, log_dir=data_dir / "logs")
    coglet: subprocess.Popen[bytes] | None = None
    try:
        token = stack.start()
        api = httpx.AsyncClient(
            base_url=settings.resolved_public_url,
            headers={"Authorization": f"Bearer {token}"},
            timeout=60,
        )
        with running_receiver() as receiver:
            for _ in range(3):
                await replicant_ttft(api)
            through_replicant = [await replicant_ttft(api) for _ in range(runs)]

            version = (await api.get("/v1/models/replicant/ngram")).json()["latest_version"]["id"]
            port = free_port()
            coglet = start_coglet(data_dir.resolve() / "versions" / version, port)
            wait_for_port(port, coglet)
            coglet_url = f"http://127.0.0.1:{port}"
            await wait_ready(coglet_url)
            async with httpx.AsyncClient(timeout=60) as direct:
                for _ in range(3):
                    await coglet_ttft(direct, coglet_url, receiver)
                    await asyncio.sleep(0.2)
                direct_times = []
                for _ in range(runs):
                    direct_times.append(await coglet_ttft(direct, coglet_url, receiver))
                    await asyncio.sleep(0.2)  # let coglet free its one slot

            for _ in range(3):
                await webhook_delay(api, receiver)
            delays = [await webhook_delay(api, receiver) for _ in range(runs)]
        print(f"\nstreaming replicant/ngram ({NGRAM_INPUT['max_tokens']} tokens), {runs} runs")
        print(f"{'time to first token':<34}{'p50 ms':>10}{'p95 ms':>10}")
        for name, values in (
            ("replicant (POST + SSE)", through_replicant),
            ("coglet direct (PUT + webhook)", direct_times),
        ):
            p50, p95 = percentiles(values)
            print(f"{name:<34}{p50:>10.1f}{p95:>10.1f}")
        p50, p95 = percentiles(delays)
        print(f"\n{'webhook delay after completed_at':<34}{p50:>10.1f}{p95:>10.1f}")
        await api.aclose()
    finally:
        if coglet is not None:
            coglet.terminate()
            coglet.wait()
        stack.stop()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--runs", type=int, default=30)
    asyncio.run(main(parser.parse_args().runs))
