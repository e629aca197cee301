"""A memory limit per model process (REPLICANT_MODEL_MEMORY_LIMIT, and per SKU
REPLICANT_MODEL_MEMORY_LIMITS): each coglet process tree in a memory cgroup of its own, killed
by the kernel's real OOM killer past the limit.

The machines that run the suite have a writable memory cgroup hierarchy (the worker's own
cgroup accepts children); the tests that need one say so when it is missing rather than
pass. The model allocates past a small limit: only its own cgroup is affected.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import sys
import textwrap
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import psutil
import pytest

from replicant.db import make_engine
from replicant.devstack import Stack
from replicant.temporal import connect
from replicant.versions import create_version, ensure_model
from tests.conftest import LiveStack, schemas_derived_once, stack_settings, suite_database
from tests.test_scale_out import run_attempts
from workers.runners import PoolConfig, RunnerPool, RunnerSpec
from workers.runners.cgroups import CgroupsUnavailable, MemoryCgroups, locate, model_cgroups

pytestmark = pytest.mark.timeout(120)

LIMIT = 160 * 1024 * 1024
# The limit of the SKU that has one of its own; a model taking MIDDLE MiB more fits it only.
BIG = 480 * 1024 * 1024
MIDDLE = 250

HOG = """
    import os
    from cog import BasePredictor

    PROCESS = os.urandom(8).hex()  # which process (pids repeat across sandboxes)

    class Predictor(BasePredictor):
        def setup(self) -> None:
            mb = int(os.environ.get("HOG_SETUP_MB", "0"))
            self.ballast = bytearray(mb * 1024 * 1024)
            self.ballast[::4096] = b"x" * len(self.ballast[::4096])

        def predict(self, mb: int = 0) -> str:
            # Resident, not just reserved: every page is written.
            grab = bytearray(mb * 1024 * 1024)
            grab[::4096] = b"x" * len(grab[::4096])
            return PROCESS
"""


@pytest.fixture(scope="module")
def hog(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("limit") / "hog"
    root.mkdir()
    (root / "predict.py").write_text(textwrap.dedent(HOG))
    (root / "cog.yaml").write_text('predict: "predict.py:Predictor"\n')
    return root


def spec(model: Path, key: str = "hog", memory_sku: str | None = None, **env: str) -> RunnerSpec:
    return RunnerSpec(
        key=key,
        model_dir=model,
        python=Path(sys.executable),
        predict_ref="predict.py:Predictor",
        env=env,
        memory_sku=memory_sku,
    )


@pytest.fixture(scope="module")
def cgroups() -> MemoryCgroups:
    """This machine's memory cgroups, which the suite's machines must have."""
    try:
        return MemoryCgroups.discover(LIMIT)
    except CgroupsUnavailable as err:
        pytest.fail(f"this machine has no writable memory cgroup hierarchy: {err}")


@pytest.fixture
async def pool(cgroups: MemoryCgroups) -> AsyncIterator[RunnerPool]:
    runners = RunnerPool(PoolConfig(max_warm=4, boot_timeout=60, cgroups=cgroups))
    await runners.start()
    yield runners
    await runners.close()


@pytest.mark.integration  # starts coglet processes itself
async def test_a_model_past_its_memory_limit_is_oom_killed_and_the_next_run_boots_anew(
    pool: RunnerPool, hog: Path
) -> None:
    model = spec(hog)
    first = await pool.predict(model, "lim-ok", {"mb": 20})
    assert first.status == "succeeded"
    cgroup = pool.cgroup("hog")
    assert cgroup is not None
    # The whole process tree (the sandbox, coglet and its model worker, the one that
    # answered) is in the process's cgroup.
    root = pool.pid("hog")
    assert root is not None
    tree = [root, *(p.pid for p in psutil.Process(root).children(recursive=True))]
    assert len(tree) >= 3 and set(tree) <= set(cgroup.pids())
    assert cgroup.oom_kills() == 0

    killed = await pool.predict(model, "lim-oom", {"mb": 400})

    assert killed.status == "failed"
    assert killed.error is not None
    assert "ran out of memory" in killed.error
    assert "memory limit of 160.0MiB" in killed.error
    assert (cgroup.oom_kills() or 0) >= 1  # the kernel counted its OOM kill
    after = await pool.predict(model, "lim-next", {"mb": 20})
    assert after.status == "succeeded"
    assert after.output != first.output  # a new model process
    fresh = pool.cgroup("hog")
    assert fresh is not None and fresh.path != cgroup.path and fresh.oom_kills() == 0
    assert not cgroup.path.exists()  # the killed process's cgroup was removed


@pytest.mark.integration
async def test_a_setup_past_the_limit_fails_saying_it_ran_out_of_memory(
    pool: RunnerPool, hog: Path
) -> None:
    with pytest.raises(Exception, match="ran out of memory during setup") as raised:
        await pool.predict(spec(hog, "fat", HOG_SETUP_MB="400"), "lim-setup", {})
    assert "160.0MiB" in str(raised.value)
    assert await pool.predict(spec(hog, "thin"), "lim-thin", {}) is not None


@pytest.mark.integration
async def test_closing_the_pool_removes_every_cgroup_it_made(
    cgroups: MemoryCgroups, hog: Path
) -> None:
    pool = RunnerPool(PoolConfig(max_warm=4, boot_timeout=60, cgroups=cgroups))
    try:
        await pool.predict(spec(hog, "a"), "lim-a", {})
        await pool.predict(spec(hog, "b"), "lim-b", {})
        made = [pool.cgroup("a"), pool.cgroup("b")]
        assert all(c is not None and c.path.is_dir() for c in made)
    finally:
        await pool.close()
    assert not any(c is not None and c.path.exists() for c in made)


@pytest.mark.integration
async def test_a_sku_with_a_limit_of_its_own_runs_what_the_default_limit_kills(
    hog: Path,
) -> None:
    cgroups = MemoryCgroups.discover(LIMIT, by_sku={"big": BIG})
    pool = RunnerPool(PoolConfig(max_warm=4, boot_timeout=60, cgroups=cgroups))
    try:
        on_big = await pool.predict(spec(hog, "hog@big", "big"), "sku-big", {"mb": MIDDLE})
        on_default = await pool.predict(spec(hog), "sku-default", {"mb": MIDDLE})
        big = pool.cgroup("hog@big")
    finally:
        await pool.close()

    assert on_big.status == "succeeded", on_big.error
    assert big is not None and big.limit == BIG and big.oom_kills() == 0
    assert on_default.status == "failed"
    assert on_default.error is not None and "memory limit of 160.0MiB" in on_default.error


@pytest.mark.integration
async def test_without_a_default_limit_only_the_skus_named_get_a_cgroup(hog: Path) -> None:
    cgroups = MemoryCgroups.discover(None, by_sku={"big": BIG})
    pool = RunnerPool(PoolConfig(max_warm=4, boot_timeout=60, cgroups=cgroups))
    try:
        await pool.predict(spec(hog, "hog@big", "big"), "only-big", {})
        await pool.predict(spec(hog, "hog", "cpu"), "only-cpu", {})
        assert pool.cgroup("hog") is None
        named = pool.cgroup("hog@big")
        assert named is not None and named.limit == BIG
    finally:
        await pool.close()


def test_a_sku_with_a_limit_of_its_own_gets_runner_keys_of_its_own(
    hog: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from activities.predictions import runner_spec
    from activities.trainings import trainer_spec
    from replicant.settings import get_settings
    from replicant.tables import Version

    monkeypatch.setenv("REPLICANT_MODEL_MEMORY_LIMITS", '{"big": "480MiB"}')
    get_settings.cache_clear()
    try:
        assert get_settings().model_memory_limits == {"big": BIG}
        version = Version(id="v", model_id=1, model_dir=str(hog), openapi_schema={})
        settings = get_settings()
        big, cpu = runner_spec(settings, version, "big"), runner_spec(settings, version, "cpu")
        trainer = trainer_spec(settings, version, "big")
    finally:
        get_settings.cache_clear()
    # One version on two SKUs: two processes, each with its SKU's limit.
    assert (big.key, big.memory_sku) == ("v@big", "big")
    assert (cpu.key, cpu.memory_sku) == ("v", None)
    assert (trainer.key, trainer.memory_sku) == ("v+train@big", "big")


def test_cgroups_of_a_worker_that_is_gone_are_swept(tmp_path: Path) -> None:
    parent = tmp_path / "worker"
    (parent / f"replicant-{os.getpid()}-0").mkdir(parents=True)
    (parent / "replicant-999999999-3").mkdir()  # no such process
    (parent / "unrelated").mkdir()
    assert MemoryCgroups(parent, 1, LIMIT).sweep() == 1
    assert sorted(p.name for p in parent.iterdir()) == [f"replicant-{os.getpid()}-0", "unrelated"]


def test_the_memory_cgroup_is_found_on_cgroup_v2_or_v1(tmp_path: Path) -> None:
    proc = tmp_path / "proc-cgroup"
    proc.write_text("4:memory:/jobs/j1\n1:cpu:/\n0::/workers/w1\n")
    assert locate(proc, tmp_path) == (tmp_path / "memory" / "jobs" / "j1", 1)
    # A unified hierarchy with the memory controller wins (at the root, or hybrid's unified).
    (tmp_path / "unified").mkdir()
    (tmp_path / "unified" / "cgroup.controllers").write_text("cpu io memory pids\n")
    assert locate(proc, tmp_path) == (tmp_path / "unified" / "workers" / "w1", 2)
    # This machine's own cgroup is found too.
    assert locate(Path("/proc/self/cgroup"))[0].is_dir()


def test_cgroup_v2_children_get_memory_max(tmp_path: Path) -> None:
    # The files of a cgroup v2 hierarchy, as plain files (this machine's memory is on v1).
    (tmp_path / "cgroup.subtree_control").write_text("")
    cgroups = MemoryCgroups(tmp_path, 2, LIMIT)
    cgroups.prepare()
    made = cgroups.create()
    assert (tmp_path / "cgroup.subtree_control").read_text() == "+memory"
    assert (made.path / "memory.max").read_text() == str(LIMIT)
    assert (cgroups.create(BIG).path / "memory.max").read_text() == str(BIG)
    made.counter.write_text("low 0\nhigh 0\nmax 3\noom 1\noom_kill 1\n")
    assert made.counter.name == "memory.events" and made.oom_kills() == 1


def test_without_writable_cgroups_the_limit_is_a_warning(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    proc = tmp_path / "proc-cgroup"
    proc.write_text("0::/\n")  # cgroup v2 without a memory controller
    with pytest.raises(CgroupsUnavailable, match="no memory controller"):
        MemoryCgroups.discover(LIMIT, proc_cgroup=proc, root=tmp_path)
    log = logging.getLogger("test.limit")
    assert model_cgroups(None, log) is None
    assert model_cgroups(None, log, {}) is None
    with caplog.at_level(logging.WARNING, logger="test.limit"):
        # This process's real cgroups, with a limit that cannot be given.
        assert model_cgroups(0, log) is None
        assert model_cgroups(LIMIT, log, {"big": 0}) is None
    assert "event=model_memory_limit_unavailable" in caplog.text
    assert "without a memory limit" in caplog.text


# -- through a whole stack -------------------------------------------------------------------


@pytest.fixture(scope="module")
def limited(tmp_path_factory: pytest.TempPathFactory, hog: Path) -> Iterator[tuple[LiveStack, str]]:
    """A stack whose worker gives each model process the limit (gpu-t4's its own, BIG), and
    the hog model on it (on cpu; ``<it>-big``, on gpu-t4)."""
    data_dir = tmp_path_factory.mktemp("limited")
    with contextlib.ExitStack() as cleanup:
        overrides = cleanup.enter_context(suite_database())
        settings = stack_settings(
            data_dir,
            model_memory_limit=LIMIT,
            model_memory_limits={"gpu-t4": BIG},
            **overrides,
        )
        stack = Stack(settings, ui=False, log_dir=data_dir / "logs")
        cleanup.callback(stack.stop)
        with schemas_derived_once():
            token = stack.start()
        engine = make_engine(settings.resolved_database_url)
        cleanup.callback(engine.dispose)
        name = f"hog-{os.urandom(3).hex()}"
        create_version(settings, engine, ensure_model(engine, "replicant", name), hog)
        # Without GPU devices, the worker serves gpu-t4 unpinned: only its limit differs.
        big = ensure_model(engine, "replicant", f"{name}-big", hardware="gpu-t4")
        create_version(settings, engine, big, hog)
        live = LiveStack(stack, settings, settings.resolved_public_url, token, engine)
        yield live, f"replicant/{name}"


def allocate(live: LiveStack, model: str, mb: int) -> dict[str, Any]:
    """A prediction of the hog ``model`` that takes ``mb`` MiB more, once it has ended."""
    with live.client() as api:
        created = api.post(f"/v1/models/{model}/predictions", json={"input": {"mb": mb}})
    assert created.status_code == 201, created.text
    return live.wait_for(created.json()["id"], timeout=120)


async def test_an_oom_killed_prediction_fails_once_and_the_worker_serves_the_next(
    limited: tuple[LiveStack, str],
) -> None:
    live, model = limited

    killed = await asyncio.to_thread(allocate, live, model, 400)
    after = await asyncio.to_thread(allocate, live, model, 20)

    assert killed["status"] == "failed"
    assert "ran out of memory" in killed["error"] and "160.0MiB" in killed["error"]
    assert after["status"] == "succeeded"
    # The run activity recorded the failure and completed: Temporal ran it once, no retry.
    client = await connect(live.settings)
    assert [attempt for _, attempt in await run_attempts(client, killed["id"])] == [1]


async def test_the_same_model_oom_kills_on_one_sku_and_succeeds_on_one_with_more_memory(
    limited: tuple[LiveStack, str],
) -> None:
    live, model = limited

    on_cpu = await asyncio.to_thread(allocate, live, model, MIDDLE)
    on_t4 = await asyncio.to_thread(allocate, live, f"{model}-big", MIDDLE)

    assert on_cpu["status"] == "failed"
    assert "ran out of memory" in on_cpu["error"] and "160.0MiB" in on_cpu["error"]
    assert on_t4["status"] == "succeeded", on_t4["error"]
