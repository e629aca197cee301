"""The runner pool's resources: memory per process and a warm-memory budget, a model's own
concurrency in one process, and GPU slots that pin devices (tested without a GPU: a model
reports the environment it sees)."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sys
import textwrap
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry, generate_latest

from workers.runners import BootError, PoolConfig, RunnerPool, RunnerSpec
from workers.runners.cgroups import oom_counter, read_oom_kills
from workers.runners.devices import DeviceSlots, assign_devices, discover_devices
from workers.runners.memory import COLLECTOR, MemoryBudget, tree_rss

pytestmark = pytest.mark.timeout(120)

MODELS = {
    "env": """
        import json
        import os
        import time
        from cog import BasePredictor

        # Which process: pids repeat across sandboxes (each has its own pid namespace).
        PROCESS = os.urandom(8).hex()

        class Predictor(BasePredictor):
            def predict(self, hold: float = 0.0) -> str:
                time.sleep(hold)
                names = ("CUDA_VISIBLE_DEVICES", "NVIDIA_VISIBLE_DEVICES")
                seen = {k: os.environ.get(k) for k in names}
                return json.dumps({"pid": PROCESS, **seen})
    """,
    "hog": """
        import os
        import signal
        from cog import BasePredictor

        PROCESS = os.urandom(8).hex()  # which process (pids repeat across sandboxes)

        class Predictor(BasePredictor):
            def setup(self) -> None:
                # Resident, not just reserved: every page is written.
                self.ballast = bytearray(int(os.environ.get("HOG_MB", "0")) * 1024 * 1024)
                self.ballast[::4096] = b"x" * len(self.ballast[::4096])

            def predict(self, mb: int = 0, die: bool = False) -> str:
                grab = bytearray(mb * 1024 * 1024)
                grab[::4096] = b"x" * len(grab[::4096])
                if die:
                    # What the kernel's OOM killer does to a process: SIGKILL, no goodbye.
                    os.kill(os.getpid(), signal.SIGKILL)
                return PROCESS
    """,
    "together": """
        import asyncio
        import os
        from cog import BasePredictor

        PROCESS = os.urandom(8).hex()  # which process (pids repeat across sandboxes)

        class Predictor(BasePredictor):
            def setup(self) -> None:
                self.running = 0
                self.all_in = asyncio.Event()

            async def predict(self, expect: int = 1) -> str:
                # Each run waits until `expect` runs are inside this process at once.
                self.running += 1
                if self.running >= expect:
                    self.all_in.set()
                try:
                    await asyncio.wait_for(self.all_in.wait(), timeout=60)
                    return f"{PROCESS} together"
                except asyncio.TimeoutError:
                    return f"{PROCESS} alone"
                finally:
                    self.running -= 1
    """,
}


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("models")
    for name, source in MODELS.items():
        (root / name).mkdir()
        (root / name / "predict.py").write_text(textwrap.dedent(source))
        (root / name / "cog.yaml").write_text('predict: "predict.py:Predictor"\n')
    (root / "together" / "cog.yaml").write_text(
        'predict: "predict.py:Predictor"\nconcurrency:\n  max: 3\n'
    )
    return root


def spec(models: Path, name: str, key: str | None = None, **fields: object) -> RunnerSpec:
    values: dict[str, object] = {
        "key": key or name,
        "model_dir": models / name,
        "python": Path(sys.executable),
        "predict_ref": "predict.py:Predictor",
    }
    values.update(fields)
    return RunnerSpec.model_validate(values)


@pytest.fixture
async def pool() -> AsyncIterator[RunnerPool]:
    runners = RunnerPool(PoolConfig(max_warm=4, boot_timeout=60, cancel_grace=1.0))
    await runners.start()
    yield runners
    await runners.close()


def exported(pool: RunnerPool) -> str:
    """The memory series of the default collector, as a worker's /metrics serves them."""
    registry = CollectorRegistry()
    registry.register(COLLECTOR)
    return generate_latest(registry).decode()


# -- memory --------------------------------------------------------------------------------


async def test_memory_is_measured_per_process_tree_and_exported_per_version(
    pool: RunnerPool, models: Path
) -> None:
    small = spec(models, "hog", key="small")
    big = spec(models, "hog", key="big", env={"HOG_MB": "120"})
    await pool.predict(small, "m-small", {})
    await pool.predict(big, "m-big", {})

    memory = pool.memory()
    # The 120 MB ballast lives in coglet's worker child: only the whole tree shows it.
    assert memory["big"][0] - memory["small"][0] > 100 * 1024 * 1024
    coglet_alone = tree_rss(pool.pid("big") or 0) - sum(
        tree_rss(child) for child in _children(pool.pid("big") or 0)
    )
    assert coglet_alone < memory["big"][0] - 100 * 1024 * 1024
    assert memory["small"][1] == memory["big"][1] == 1

    text = exported(pool)
    assert 'replicant_model_memory_bytes{version="big"}' in text
    assert 'replicant_model_processes{version="small"} 1.0' in text


def _children(pid: int) -> list[int]:
    found: list[int] = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        found += [int(c) for c in (task / "children").read_text().split()]
    return found


@pytest.mark.integration  # starts coglet processes itself
async def test_memory_budget_evicts_least_recently_used_idle_processes(models: Path) -> None:
    probe = RunnerPool(PoolConfig(boot_timeout=60))
    try:
        await probe.predict(spec(models, "hog", key="probe"), "m-probe", {})
        size = probe.memory()["probe"][0]
    finally:
        await probe.close()

    # Room for two such processes, not three; the count limit alone would keep ten.
    pool = RunnerPool(
        PoolConfig(max_warm=10, boot_timeout=60, memory_budget=MemoryBudget(int(size * 2.5)))
    )
    try:
        for key in ("a", "b"):
            await pool.predict(spec(models, "hog", key=key), f"m-{key}", {})
        assert pool.warm_keys() == ["a", "b"]

        await pool.predict(spec(models, "hog", key="c"), "m-c", {})
        assert pool.warm_keys() == ["b", "c"]

        # "a" was measured before: it would pass the budget, so "b" goes before "a" boots.
        await pool.predict(spec(models, "hog", key="a"), "m-a-again", {})
        assert pool.warm_keys() == ["c", "a"]
    finally:
        await pool.close()


@pytest.mark.integration  # starts coglet processes itself
async def test_pools_sharing_a_memory_budget_evict_the_least_recently_used_of_either(
    models: Path,
) -> None:
    probe = RunnerPool(PoolConfig(boot_timeout=60))
    try:
        await probe.predict(spec(models, "hog", key="probe"), "s-probe", {})
        size = probe.memory()["probe"][0]
    finally:
        await probe.close()

    budget = MemoryBudget(int(size * 2.5))
    one = RunnerPool(PoolConfig(max_warm=10, boot_timeout=60, memory_budget=budget))
    two = RunnerPool(PoolConfig(max_warm=10, boot_timeout=60, memory_budget=budget))
    try:
        await one.predict(spec(models, "hog", key="a"), "s-a", {})
        await one.predict(spec(models, "hog", key="b"), "s-b", {})
        await two.predict(spec(models, "hog", key="c"), "s-c", {})
        assert (one.warm_keys(), two.warm_keys()) == (["b"], ["c"])
    finally:
        await one.close()
        await two.close()


async def test_a_model_process_killed_for_memory_fails_with_a_message_that_says_so(
    pool: RunnerPool, models: Path
) -> None:
    # Without a memory limit of the pool's own: the model SIGKILLs itself after allocating,
    # the signature the pool sees from an OOM kill that its cgroup's counter did not count
    # (tests/test_model_memory_limit.py has the kernel's OOM killer kill a model for real).
    hog = spec(models, "hog")
    first = await pool.predict(hog, "m-ok", {})
    killed = await pool.predict(hog, "m-oom", {"mb": 50, "die": True})

    assert killed.status == "failed"
    assert killed.error is not None
    assert "out of memory" in killed.error and "SIGKILL" in killed.error

    after = await pool.predict(hog, "m-next", {})
    assert after.status == "succeeded"
    assert after.output != first.output  # a new model process


def test_oom_kills_are_read_from_cgroup_v1_and_v2_counters(tmp_path: Path) -> None:
    v1 = tmp_path / "memory.oom_control"
    v1.write_text("oom_kill_disable 0\nunder_oom 0\noom_kill 3\n")
    v2 = tmp_path / "memory.events"
    v2.write_text("low 0\nhigh 0\nmax 12\noom 2\noom_kill 1\noom_group_kill 0\n")
    assert (read_oom_kills(v1), read_oom_kills(v2)) == (3, 1)
    assert read_oom_kills(tmp_path / "missing") is None
    assert read_oom_kills(None) is None
    # This machine's own counter, when it has one, reads as a count.
    counter = oom_counter(os.getpid())
    assert counter is None or isinstance(read_oom_kills(counter), int)


# -- the model's own concurrency -----------------------------------------------------------


async def test_concurrent_runs_of_an_async_model_share_one_process(
    pool: RunnerPool, models: Path
) -> None:
    together = spec(models, "together", concurrency=3)
    results = await asyncio.gather(
        *(pool.predict(together, f"c-{i}", {"expect": 3}) for i in range(3))
    )

    assert [r.status for r in results] == ["succeeded"] * 3
    pids = {str(r.output).split()[0] for r in results}
    assert len(pids) == 1
    assert all(str(r.output).endswith("together") for r in results)
    assert pool.warm_keys() == ["together"]


async def test_runs_beyond_a_models_concurrency_go_to_a_second_process(
    pool: RunnerPool, models: Path
) -> None:
    together = spec(models, "together", key="pair", concurrency=2)
    results = await asyncio.gather(
        *(pool.predict(together, f"c4-{i}", {"expect": 2}) for i in range(4))
    )

    outputs = [str(r.output) for r in results]
    assert all(o.endswith("together") for o in outputs)
    pids = [o.split()[0] for o in outputs]
    assert sorted(pids.count(pid) for pid in set(pids)) == [2, 2]
    assert set(pool.warm_keys()) == {"pair", "pair#1"}


def test_runner_spec_takes_the_concurrency_of_cog_yaml(models: Path) -> None:
    from activities.predictions import model_concurrency

    assert model_concurrency(models / "together") == 3
    assert model_concurrency(models / "env") == 1


def test_runner_spec_says_whether_the_output_streams(models: Path) -> None:
    from activities.predictions import runner_spec
    from replicant.settings import Settings
    from replicant.tables import Version

    def output(schema: dict[str, object]) -> Version:
        components = {"components": {"schemas": {"Output": schema}}} if schema else {}
        return Version(id="v", model_id=1, model_dir=str(models / "env"), openapi_schema=components)

    listed = {"type": "array", "items": {"type": "object"}}
    # A list comes back whole: no webhooks (coglet's per-run HTTP client) for its runs.
    settings = Settings()
    assert runner_spec(settings, output(listed)).streams_output is False
    iterator = {**listed, "x-cog-array-type": "iterator"}
    assert runner_spec(settings, output(iterator)).streams_output is True
    assert runner_spec(settings, output({})).streams_output is None


# -- GPU slots -----------------------------------------------------------------------------


def seen(output: object) -> dict[str, object]:
    parsed: dict[str, object] = json.loads(str(output))
    return parsed


@pytest.mark.integration  # starts coglet processes itself
async def test_each_gpu_slot_pins_its_own_device(models: Path) -> None:
    pool = RunnerPool(
        PoolConfig(max_warm=4, boot_timeout=60, devices=DeviceSlots([("0",), ("1",)]))
    )
    try:
        first, second = await asyncio.gather(
            pool.predict(spec(models, "env", key="v1"), "g-1", {"hold": 1.0}),
            pool.predict(spec(models, "env", key="v2"), "g-2", {"hold": 1.0}),
        )
        one, two = seen(first.output), seen(second.output)
        assert {one["CUDA_VISIBLE_DEVICES"], two["CUDA_VISIBLE_DEVICES"]} == {"0", "1"}
        assert one["NVIDIA_VISIBLE_DEVICES"] == one["CUDA_VISIBLE_DEVICES"]
        assert two["NVIDIA_VISIBLE_DEVICES"] == two["CUDA_VISIBLE_DEVICES"]

        # A restarted process keeps its device.
        v1_device = one["CUDA_VISIBLE_DEVICES"]
        os.killpg(pool.pid("v1") or 0, signal.SIGKILL)  # the sandbox's whole process group
        again = seen((await pool.predict(spec(models, "env", key="v1"), "g-3", {})).output)
        assert again["pid"] != one["pid"]
        assert again["CUDA_VISIBLE_DEVICES"] == v1_device

        # A third version stops the idle resident of the slot it takes: one process a device.
        third = seen((await pool.predict(spec(models, "env", key="v3"), "g-4", {})).output)
        assert len(pool.warm_keys()) == 2
        devices = [pool.devices(key) for key in pool.warm_keys()]
        assert sorted(d[0] for d in devices if d) == ["0", "1"]
        assert (third["CUDA_VISIBLE_DEVICES"],) in devices
    finally:
        await pool.close()


@pytest.mark.integration  # starts coglet processes itself
async def test_a_slot_of_several_devices_and_a_device_memory_budget(models: Path) -> None:
    # One slot owning two devices, with room for several processes on them.
    pool = RunnerPool(
        PoolConfig(max_warm=4, boot_timeout=60, devices=DeviceSlots([("2", "3")], 1 << 40))
    )
    try:
        outputs = [
            seen((await pool.predict(spec(models, "env", key=k), f"w-{k}", {})).output)
            for k in ("w1", "w2")
        ]
        assert [o["CUDA_VISIBLE_DEVICES"] for o in outputs] == ["2,3", "2,3"]
        assert pool.warm_keys() == ["w1", "w2"]
    finally:
        await pool.close()


@pytest.mark.integration  # starts coglet processes itself
async def test_deployment_instances_take_gpu_slots_of_their_own(models: Path) -> None:
    sku = RunnerPool(PoolConfig(max_warm=4, boot_timeout=60, devices=DeviceSlots([("0",), ("1",)])))
    slots = sku.device_slots
    assert slots is not None
    instances = [
        RunnerPool(PoolConfig(max_warm=1, boot_timeout=60, devices=slots, keep_devices=True))
        for _ in range(2)
    ]
    try:
        await instances[0].warm(spec(models, "env", key="dep"))
        held = instances[0].devices("dep")
        v1 = seen((await sku.predict(spec(models, "env", key="v1"), "d-1", {})).output)
        assert held is not None and (v1["CUDA_VISIBLE_DEVICES"],) != held

        # The SKU's next version stops its own idle process, never the instance's.
        v2 = seen((await sku.predict(spec(models, "env", key="v2"), "d-2", {})).output)
        assert v2["CUDA_VISIBLE_DEVICES"] == v1["CUDA_VISIBLE_DEVICES"]
        assert sku.warm_keys() == ["v2"] and instances[0].devices("dep") == held

        # A second instance takes the other slot from the SKU's idle process...
        await instances[1].warm(spec(models, "env", key="dep"))
        assert sku.warm_keys() == []
        # ...and with both devices held by instances, the SKU has no slot to boot on.
        with pytest.raises(BootError, match="no GPU slot is free"):
            await sku.predict(spec(models, "env", key="v3"), "d-3", {})
    finally:
        for pool in (sku, *instances):
            await pool.close()


@pytest.mark.integration  # starts coglet processes itself
async def test_a_device_memory_budget_counts_what_nvidia_smi_reports(
    models: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A stand-in nvidia-smi that reports the device memory the test writes for each pid.
    usage = tmp_path / "usage.csv"
    usage.write_text("")
    fake = tmp_path / "bin" / "nvidia-smi"
    fake.parent.mkdir()
    fake.write_text(f'#!/bin/sh\ncat "{usage}"\n')
    fake.chmod(0o755)
    monkeypatch.setenv("PATH", f"{fake.parent}{os.pathsep}{os.environ['PATH']}")

    def uses(pool: RunnerPool, key: str, mib: int) -> None:
        worker = _children(pool.pid(key) or 0)[0]  # coglet's worker child holds the model
        with usage.open("a") as rows:
            rows.write(f"{worker}, {mib}\n")

    # 40 GiB on one device: two 30 GiB models do not fit, though their host memory would.
    pool = RunnerPool(
        PoolConfig(max_warm=4, boot_timeout=60, devices=DeviceSlots([("0",)], 40 << 30))
    )
    try:
        await pool.predict(spec(models, "env", key="v1"), "n-1", {})
        uses(pool, "v1", 30 * 1024)
        await pool.predict(spec(models, "env", key="v2"), "n-2", {})
        assert pool.warm_keys() == ["v1", "v2"]  # v2's size was unknown: it was let in
        uses(pool, "v2", 30 * 1024)
        await pool.predict(spec(models, "env", key="v3"), "n-3", {})
        # 60 GiB on the device: the least recently used one is stopped until it fits.
        assert pool.warm_keys() == ["v2", "v3"]
    finally:
        await pool.close()


def test_devices_are_split_into_slots_without_sharing() -> None:
    slots = {"cpu": 2, "gpu-t4": 2, "gpu-a100-2x": 1, "gpu-h100": 1}
    groups = assign_devices(slots, {"gpu-a100-2x": 2}, ["0", "1", "2", "3", "4"])
    assert groups == {
        "gpu-t4": [("0",), ("1",)],
        "gpu-a100-2x": [("2", "3")],
        "gpu-h100": [("4",)],
    }
    # Too few devices: the SKU gets none (not a shared one); no devices: all unpinned.
    assert assign_devices({"gpu-t4": 3}, {}, ["0", "1"]) == {"gpu-t4": []}
    assert assign_devices(slots, {}, []) == {}
    assert discover_devices("0, 1,") == ["0", "1"]


def test_devices_come_from_nvidia_smi_when_not_configured(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    fake = tmp_path / "nvidia-smi"
    fake.write_text(
        "#!/bin/sh\n"
        'echo "GPU 0: Tesla T4 (UUID: GPU-5f1c)"\n'
        'echo "GPU 1: Tesla T4 (UUID: GPU-77aa)"\n'
    )
    fake.chmod(0o755)
    monkeypatch.setenv("PATH", f"{tmp_path}{os.pathsep}{os.environ['PATH']}")
    assert discover_devices(None) == ["0", "1"]
    assert discover_devices("3") == ["3"]  # the setting wins
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))
    assert discover_devices(None) == []
