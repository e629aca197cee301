"""A model's own concurrency across a worker's slots (workers/slots.py): a one-slot worker
takes up to N runs of a `concurrency: max: N` model into its one process, and keeps exactly
its slots for every other model."""

from __future__ import annotations

import asyncio
import json
import os
import textwrap
from typing import Any

import httpx
import pytest

from replicant.versions import create_version, ensure_model
from tests.conftest import LiveStack
from workers.slots import RunSlots

# Each run waits (up to WAIT_PEERS seconds) until this many runs are inside its process.
PEERS = 4
TOGETHER = """
    import asyncio
    import json
    import os
    import time
    from cog import BasePredictor

    class Predictor(BasePredictor):
        def setup(self) -> None:
            self.inside = 0
            self.peak = 0
            self.all_in = asyncio.Event()

        async def predict(self, expect: int = 1) -> str:
            started = time.time()
            self.inside += 1
            self.peak = max(self.peak, self.inside)
            if self.inside >= expect:
                self.all_in.set()
            try:
                await asyncio.wait_for(self.all_in.wait(), timeout=5)
            except asyncio.TimeoutError:
                pass
            peak = self.peak
            self.inside -= 1
            return json.dumps(
                {"pid": os.getpid(), "started": started, "finished": time.time(), "peak": peak}
            )
"""


def _ctx() -> Any:
    return None  # RunSlots reads nothing from Temporal's reservation context


async def test_without_concurrent_models_the_permits_are_the_slots() -> None:
    slots = RunSlots(2)
    first, second = slots.try_reserve_slot(_ctx()), slots.try_reserve_slot(_ctx())
    assert first is not None and second is not None
    assert slots.try_reserve_slot(_ctx()) is None
    one = await slots.acquire("hello", 1)
    await slots.acquire("sleep", 1)
    assert slots.try_reserve_slot(_ctx()) is None  # both slots busy, no room anywhere
    slots.release(one)
    slots.release_slot(None)  # type: ignore[arg-type]  # its permit comes back after the run
    assert slots.try_reserve_slot(_ctx()) is not None


async def test_a_local_run_holds_a_slot_without_a_permit() -> None:
    # A run in its workflow's task (a local activity) came with no permit from Temporal:
    # it takes a slot all the same, and the worker polls only for the slot left.
    slots = RunSlots(2)
    local = await slots.acquire("hello", 1, local=True)
    assert slots.try_reserve_slot(_ctx()) is not None
    assert slots.try_reserve_slot(_ctx()) is None
    task = await slots.acquire("sleep", 1)  # the permitted task's run
    assert slots.held() == [("hello", 1), ("sleep", 1)]
    slots.release(local, local=True)
    assert slots.try_reserve_slot(_ctx()) is not None  # the local run's slot is free again
    assert slots.try_reserve_slot(_ctx()) is None
    slots.release(task)


async def test_a_local_run_waits_for_a_slot_and_stops_the_polls_meanwhile() -> None:
    slots = RunSlots(1)
    assert slots.try_reserve_slot(_ctx()) is not None
    busy = await slots.acquire("sleep", 1)
    waiting = asyncio.create_task(slots.acquire("hello", 1, local=True))
    await asyncio.sleep(0)
    assert not waiting.done()
    slots.release(busy)
    slots.release_slot(None)  # type: ignore[arg-type]
    lease = await asyncio.wait_for(waiting, 5)
    assert lease.key == "hello"
    assert slots.try_reserve_slot(_ctx()) is None  # the one slot is the local run's
    slots.release(lease, local=True)
    assert slots.try_reserve_slot(_ctx()) is not None


async def test_a_concurrent_process_with_room_takes_more_runs_than_slots() -> None:
    slots = RunSlots(1)
    assert slots.try_reserve_slot(_ctx()) is not None
    leases = [await slots.acquire("async", 4)]
    # Its process has room for three more: three more permits, no fourth.
    for _ in range(3):
        assert slots.try_reserve_slot(_ctx()) is not None
    assert slots.try_reserve_slot(_ctx()) is None
    leases += [await slots.acquire("async", 4) for _ in range(3)]
    assert slots.held() == [("async", 4)]


async def test_a_waiting_poll_goes_on_once_a_concurrent_process_has_room() -> None:
    slots = RunSlots(1)
    assert slots.try_reserve_slot(_ctx()) is not None
    poll = asyncio.create_task(slots.reserve_slot(_ctx()))
    await asyncio.sleep(0)
    assert not poll.done()  # the slot's permit is out
    await slots.acquire("async", 4)
    assert await asyncio.wait_for(poll, 5) is not None


async def test_another_version_on_a_shared_permit_waits_for_the_slot_and_stops_the_polls() -> None:
    slots = RunSlots(1)
    slots.try_reserve_slot(_ctx())
    shared = await slots.acquire("async", 4)
    assert slots.try_reserve_slot(_ctx()) is not None  # counts on the async process's room
    waiting = asyncio.create_task(slots.acquire("hello", 1))  # but another version came
    await asyncio.sleep(0)
    assert not waiting.done()
    assert slots.try_reserve_slot(_ctx()) is None  # the backlog stays in Temporal's queue
    slots.release(shared)
    lease = await asyncio.wait_for(waiting, 5)
    assert slots.held() == [("hello", 1)] and lease.key == "hello"


async def test_a_cancelled_wait_gives_its_turn_back() -> None:
    slots = RunSlots(1)
    busy = await slots.acquire("a", 1)
    waiting = asyncio.create_task(slots.acquire("b", 1))
    await asyncio.sleep(0)
    waiting.cancel()
    with pytest.raises(asyncio.CancelledError):
        await waiting
    slots.release(busy)
    assert slots.held() == []
    assert slots.try_reserve_slot(_ctx()) is not None


@pytest.fixture(scope="module")
def together_model(live: LiveStack, tmp_path_factory: pytest.TempPathFactory) -> str:
    """A concurrency-4 async model on gpu-t4, the shared stack's one-slot hardware queue."""
    source = tmp_path_factory.mktemp("together") / "together"
    source.mkdir()
    (source / "predict.py").write_text(textwrap.dedent(TOGETHER))
    (source / "cog.yaml").write_text(
        f'predict: "predict.py:Predictor"\nconcurrency:\n  max: {PEERS}\n'
    )
    name = f"together-{os.urandom(3).hex()}"
    model = ensure_model(live.engine, "replicant", name, hardware="gpu-t4")
    create_version(live.settings, live.engine, model, source)
    return f"replicant/{name}"


async def test_a_one_slot_worker_runs_a_concurrent_models_predictions_in_one_process(
    live: LiveStack, together_model: str
) -> None:
    assert live.settings.hardware["gpu-t4"] == 1
    headers = {"Authorization": f"Bearer {live.token}"}
    async with httpx.AsyncClient(base_url=live.url, headers=headers, timeout=90) as api:
        created = await asyncio.gather(
            *(
                api.post(
                    f"/v1/models/{together_model}/predictions", json={"input": {"expect": PEERS}}
                )
                for _ in range(PEERS)
            )
        )
    assert all(r.status_code == 201 for r in created), [r.text for r in created]
    done = [await asyncio.to_thread(live.wait_for, r.json()["id"], timeout=120) for r in created]

    assert [p["status"] for p in done] == ["succeeded"] * PEERS, [p.get("error") for p in done]
    seen = [json.loads(p["output"]) for p in done]
    assert len({s["pid"] for s in seen}) == 1  # one model process
    assert [s["peak"] for s in seen] == [PEERS] * PEERS, seen  # all four inside it at once
    # By the model's own clock: every run started before any of them finished.
    assert max(s["started"] for s in seen) < min(s["finished"] for s in seen)
