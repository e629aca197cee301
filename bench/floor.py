"""The floor of the latency benchmark: a bare workflow whose one activity calls coglet.

Kept in its own module with few imports so it runs in Temporal's sandbox exactly as a
real workflow does.
"""

from __future__ import annotations

import asyncio
from datetime import timedelta

from temporalio import activity, workflow

with workflow.unsafe.imports_passed_through():
    import httpx

INPUT = {"text": "bench"}
_client: httpx.AsyncClient | None = None


async def post_with_retry(client: httpx.AsyncClient, url: str) -> str:
    # coglet answers 409 while it frees its one slot: retry briefly, as the runner pool does.
    for _ in range(500):
        response = await client.post(url, json={"input": INPUT})
        if response.status_code != 409:
            response.raise_for_status()
            output: str = response.json()["output"]
            return output
        await asyncio.sleep(0.001)
    raise RuntimeError("coglet stayed at capacity")


@activity.defn(name="bench_call_coglet")
async def call_coglet(url: str) -> str:
    global _client
    if _client is None:
        _client = httpx.AsyncClient(timeout=30)
    return await post_with_retry(_client, url)


@workflow.defn(name="BenchFloor")
class FloorWorkflow:
    """The floor: one activity calling coglet, or (``local``) the same call in the workflow's
    own task, a local activity."""

    def __init__(self) -> None:
        self.output: str | None = None

    @workflow.run
    async def run(self, url: str, local: bool) -> str:
        call = workflow.execute_local_activity if local else workflow.execute_activity
        self.output = await call(call_coglet, url, start_to_close_timeout=timedelta(seconds=30))
        return self.output

    @workflow.update
    async def wait(self) -> str:
        await workflow.wait_condition(lambda: self.output is not None)
        assert self.output is not None
        return self.output
