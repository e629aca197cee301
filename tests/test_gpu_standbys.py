"""Fine-tune standbys on GPU slots: a standby takes only room that is free on a slot (one
resident model process per slot), any boot that needs the slot stops it, and a fine-tune that
adopts it keeps its device. Tested without a GPU: the processes' environments name the
devices they were given."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from replicant.weights import WeightsCache
from tests import test_weights
from tests.test_weights import WORDS, SlowStore, base_spec, finetune_spec, put_weights
from workers.runners import PoolConfig, RunnerPool, RunnerSpec
from workers.runners.devices import DeviceSlots

pytestmark = [pytest.mark.integration, pytest.mark.timeout(180)]  # coglet processes

# The fixtures of tests/test_weights.py: a copy of its model and its slow store.
model_dir = test_weights.model_dir
store = test_weights.store


def visible_devices(pid: int | None) -> str | None:
    """CUDA_VISIBLE_DEVICES in the environment a process was started with."""
    assert pid is not None
    entries = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
    values = dict(e.decode().partition("=")[::2] for e in entries if b"=" in e)
    return values.get("CUDA_VISIBLE_DEVICES")


async def gpu_pool(tmp_path: Path, store: SlowStore, slots: int) -> RunnerPool:
    pool = RunnerPool(
        PoolConfig(
            max_warm=4,
            boot_timeout=60,
            weights=WeightsCache(lambda: store, tmp_path / f"cache-{slots}"),
            standby=True,
            devices=DeviceSlots([(str(i),) for i in range(slots)]),
        )
    )
    await pool.start()
    return pool


@pytest.fixture
async def one_slot(tmp_path: Path, store: SlowStore) -> AsyncIterator[RunnerPool]:
    pool = await gpu_pool(tmp_path, store, 1)
    yield pool
    await pool.close()


@pytest.fixture
async def two_slots(tmp_path: Path, store: SlowStore) -> AsyncIterator[RunnerPool]:
    pool = await gpu_pool(tmp_path, store, 2)
    yield pool
    await pool.close()


async def waiting_standby(
    pool: RunnerPool, store: SlowStore, model_dir: Path, training: str
) -> tuple[RunnerSpec, int | None]:
    """A fine-tune of ``training``'s weights, and the standby kept for it once it waits."""
    tune = finetune_spec(model_dir, put_weights(store, f"trainings/{training}/weights.json", WORDS))
    pool.keep_standby(tune)
    assert await pool.standby_ready(tune)
    return tune, pool.standby_pid(tune)


async def test_a_standby_yields_its_slot_and_none_waits_where_a_process_would_be_stopped(
    one_slot: RunnerPool, store: SlowStore, model_dir: Path
) -> None:
    pool = one_slot
    tune, standby = await waiting_standby(pool, store, model_dir, "g1")
    assert visible_devices(standby) == "0"

    # Another version needs the slot: the standby is stopped, never two processes on it.
    base = await pool.predict(base_spec(model_dir), "g-base", {"max_tokens": 3})
    assert base.status == "succeeded", (base.error, base.logs)
    assert pool.standby_pid(tune) is None
    assert pool.devices("base") == ("0",)
    assert [p.pid for p in pool.standby_processes() if p.alive] == []

    # The slot holds an idle process: a standby would have to stop it, so none starts.
    pool.keep_standby(tune)
    assert pool.standby_pid(tune) is None
    assert pool.warm_keys() == ["base"]

    # The fine-tune boots cold, stopping the idle process as any boot on the slot does.
    result = await pool.predict(tune, "g-tune", {"max_tokens": 3})
    assert result.status == "succeeded", (result.error, result.logs)
    assert pool.warm_keys() == ["finetune"] and pool.devices("finetune") == ("0",)


async def test_a_fine_tune_adopts_a_standby_on_its_slot_and_the_next_takes_a_free_slot(
    two_slots: RunnerPool, store: SlowStore, model_dir: Path
) -> None:
    pool = two_slots
    tune, standby = await waiting_standby(pool, store, model_dir, "g2")
    slot = visible_devices(standby)

    result = await pool.predict(tune, "g-adopt", {"max_tokens": 5})
    assert result.status == "succeeded", (result.error, result.logs)
    assert set("".join(result.output).split()) <= set(WORDS.split())
    assert pool.pid("finetune") == standby  # the standby, with its device
    assert pool.devices("finetune") == (slot,)

    # The next standby of the base takes the other, free slot.
    assert await pool.standby_ready(tune)
    assert visible_devices(pool.standby_pid(tune)) == ({"0", "1"} - {slot}).pop()
