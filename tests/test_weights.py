"""Stored weights of fine-tunes in the runner pool: the model process starts while its weights
download into the worker's cache, its request for them waits for the download, and weights
that cannot be loaded fail the boot with that reason (not as a model error); sets of managed
weights leave the cache once no live process holds them and they are old enough."""

from __future__ import annotations

import hashlib
import json
import shutil
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from replicant.storage import LocalStore
from replicant.weights import WeightsCache, store_ref
from tests.observe import processes_in
from tests.waiting import async_wait_until, wait_until
from workers.runners import BootError, PoolConfig, RunnerPool, RunnerSpec, standby

NGRAM = Path(__file__).resolve().parents[1] / "examples" / "ngram"
WORDS = " ".join(f"qz{i % 17}" for i in range(400)) + "."


class SlowStore(LocalStore):
    """A store whose downloads take a while, like a remote one."""

    def download(self, key: str, dest: Path) -> None:
        time.sleep(1.0)
        super().download(key, dest)


@pytest.fixture
def model_dir(tmp_path: Path) -> Path:
    target = tmp_path / "ngram"
    shutil.copytree(NGRAM, target)
    return target


@pytest.fixture
def store(tmp_path: Path) -> SlowStore:
    return SlowStore(tmp_path / "files", "http://127.0.0.1:1", "secret")


@pytest.fixture
async def pool(tmp_path: Path, store: SlowStore) -> AsyncIterator[RunnerPool]:
    runners = RunnerPool(
        PoolConfig(
            max_warm=2, boot_timeout=60, weights=WeightsCache(lambda: store, tmp_path / "cache")
        )
    )
    await runners.start()
    yield runners
    await runners.close()


def put_weights(store: LocalStore, key: str, text: str) -> str:
    sys.path.insert(0, str(NGRAM))
    try:
        import ngram_model
    finally:
        sys.path.remove(str(NGRAM))
    data = json.dumps(ngram_model.NgramModel.from_text(text, 2).to_json()).encode()
    upload = store.new_upload()
    upload.write(data)
    store.commit(upload, key, "application/json")
    return store_ref(key, hashlib.sha256(data).hexdigest())


def finetune_spec(model_dir: Path, ref: str) -> RunnerSpec:
    return RunnerSpec(
        key="finetune",
        model_dir=model_dir,
        python=Path(sys.executable),
        predict_ref="predict.py:Predictor",
        weights_ref=ref,
        upload_url="",
    )


async def test_model_waits_for_weights_that_download_while_it_boots(
    pool: RunnerPool, store: SlowStore, model_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    ref = put_weights(store, "trainings/t1/weights.json", WORDS)
    # The download ends only once a coglet process runs in the model's directory: a boot that
    # waited for the download would never start, and this wait would fail the download.
    download = store.download

    def download_while_booting(key: str, dest: Path) -> None:
        wait_until(
            lambda: processes_in(model_dir),
            what="a coglet process to boot while the weights download",
        )
        download(key, dest)

    monkeypatch.setattr(store, "download", download_while_booting)
    result = await pool.predict(finetune_spec(model_dir, ref), "p1", {"max_tokens": 25, "seed": 4})
    assert result.status == "succeeded", (result.error, result.logs)
    words = "".join(result.output).split()
    assert len(words) == 25 and set(words) <= set(WORDS.split())
    assert pool.weights is not None
    digest = ref.rpartition("=")[2]
    assert pool.weights.cached(digest, "weights.json") is not None


async def test_weights_missing_from_the_store_fail_the_boot_with_that_reason(
    pool: RunnerPool, store: SlowStore, model_dir: Path
) -> None:
    ref = store_ref("trainings/gone/weights.json", "0" * 64)
    with pytest.raises(BootError) as raised:
        await pool.predict(finetune_spec(model_dir, ref), "p2", {"max_tokens": 2})
    assert "cannot load the version's weights" in str(raised.value)
    assert "not in the object store" in str(raised.value)


@pytest.fixture
async def standby_pool(tmp_path: Path, store: SlowStore) -> AsyncIterator[RunnerPool]:
    runners = RunnerPool(
        PoolConfig(
            max_warm=2,
            boot_timeout=60,
            weights=WeightsCache(lambda: store, tmp_path / "standby-cache"),
            standby=True,
        )
    )
    await runners.start()
    yield runners
    await runners.close()


def base_spec(model_dir: Path) -> RunnerSpec:
    return finetune_spec(model_dir, "").model_copy(update={"key": "base", "weights_ref": None})


async def test_a_fine_tune_adopts_the_standby_of_its_base_and_a_new_one_takes_its_place(
    standby_pool: RunnerPool, store: SlowStore, model_dir: Path
) -> None:
    pool = standby_pool
    first = put_weights(store, "trainings/s1/weights.json", WORDS)
    other_words = " ".join(f"zx{i % 11}" for i in range(300)) + "."
    second = put_weights(store, "trainings/s2/weights.json", other_words)
    pool.keep_standby(base_spec(model_dir))
    assert await pool.standby_ready(finetune_spec(model_dir, first))
    standby_pid = pool.standby_pid(base_spec(model_dir))
    assert standby_pid is not None

    result = await pool.predict(finetune_spec(model_dir, first), "s1", {"max_tokens": 20})
    assert result.status == "succeeded", (result.error, result.logs)
    assert set("".join(result.output).split()) <= set(WORDS.split())
    # The fine-tune runs in the process that was waiting, with its own weights.
    assert pool.pid("finetune") == standby_pid

    # A new standby waits for the next fine-tune of the same base: another fine-tune
    # adopts it and gets its own weights, not the first one's.
    assert await pool.standby_ready(finetune_spec(model_dir, second))
    next_pid = pool.standby_pid(base_spec(model_dir))
    assert next_pid != standby_pid
    spec = finetune_spec(model_dir, second).model_copy(update={"key": "finetune-2"})
    result = await pool.predict(spec, "s2", {"max_tokens": 20})
    assert result.status == "succeeded", (result.error, result.logs)
    assert set("".join(result.output).split()) <= set(other_words.split())
    assert pool.pid("finetune-2") == next_pid


@pytest.mark.integration  # starts coglet processes itself
async def test_stopped_standbys_leave_no_process_behind(
    tmp_path: Path, store: SlowStore, model_dir: Path
) -> None:
    pool = RunnerPool(
        PoolConfig(max_warm=1, weights=WeightsCache(lambda: store, tmp_path / "c"), standby=True)
    )
    await pool.start()
    pool.keep_standby(base_spec(model_dir))
    ref = put_weights(store, "trainings/s3/weights.json", WORDS)
    assert await pool.standby_ready(finetune_spec(model_dir, ref))
    [runner] = pool.standby_processes()
    await pool.close()
    assert runner.proc is not None and runner.proc.returncode is not None


async def test_without_standbys_a_fine_tune_boots_its_own_process(
    pool: RunnerPool, store: SlowStore, model_dir: Path
) -> None:
    pool.keep_standby(base_spec(model_dir))  # a pool made without standbys ignores this
    assert not pool.standby_processes()
    ref = put_weights(store, "trainings/s4/weights.json", WORDS)
    result = await pool.predict(finetune_spec(model_dir, ref), "s4", {"max_tokens": 3})
    assert result.status == "succeeded", (result.error, result.logs)


@pytest.mark.integration  # starts coglet processes itself
async def test_a_standby_is_replaced_before_its_weights_request_times_out_while_wanted(
    tmp_path: Path, store: SlowStore, model_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(standby, "STANDBY_TTL", 1.5)
    monkeypatch.setattr(standby, "STANDBY_KEEP", 2.5)
    pool = RunnerPool(
        PoolConfig(max_warm=1, weights=WeightsCache(lambda: store, tmp_path / "c"), standby=True)
    )
    await pool.start()
    try:
        pool.keep_standby(base_spec(model_dir))
        pids: list[int] = []

        async def no_standby_left() -> bool:
            current = next(iter(pool.standby_processes()), None)
            if current is None:
                return True
            if current.pid and current.pid not in pids:
                pids.append(current.pid)
            return False

        await async_wait_until(no_standby_left, what="the standbys to stop being replaced")
        # Replaced once while wanted (1.5 s < 2.5 s), then not (3 s > 2.5 s): none is left.
        assert len(pids) == 2, pids
        assert not pool.standby_processes()
        # The replaced one was stopped (and reaped), not left waiting.

        async def reaped() -> bool:
            return not Path(f"/proc/{pids[0]}").exists()

        await async_wait_until(
            reaped, what=f"the replaced standby {pids[0]} to be reaped", timeout=5
        )
        assert not Path(f"/proc/{pids[0]}").exists()
    finally:
        await pool.close()


# -- cog.yaml's managed weights (weights:) ------------------------------------------------

SEES_WEIGHTS = """\
from pathlib import Path

from cog import BasePredictor


class Predictor(BasePredictor):
    def predict(self) -> str:
        root = Path("/weights/set")
        try:
            (root / "new.txt").write_text("x")
        except OSError:
            pass
        return ",".join(f"{p.name}={p.read_text()}" for p in sorted(root.iterdir()))
"""


def managed_model(root: Path, store: LocalStore) -> RunnerSpec:
    """A model whose one managed weight is a file of the object store and one of its own
    directory, resolved as a push resolves them."""
    from replicant.cogmodel import ManagedWeight, WeightSource
    from replicant.managedweights import Resolver, write_manifest
    from replicant.settings import Settings

    (root / "w").mkdir(parents=True)
    (root / "w" / "own.txt").write_text("own")
    (root / "predict.py").write_text(SEES_WEIGHTS)
    weight = ManagedWeight(name="set", target="/weights/set", sources=[WeightSource(uri="w")])
    resolved = Resolver(Settings(data_dir=root / "data"), store).resolve(root, [weight])
    upload = store.new_upload()
    upload.write(b"stored")
    key = f"weights/sha256/{upload.sha256}"
    resolved[0]["files"].append({"path": "z.txt", "sha256": upload.sha256, "size": 6, "key": key})
    store.commit(upload, key, "text/plain")
    write_manifest(root, resolved)
    return RunnerSpec(
        key="managed",
        model_dir=root,
        python=Path(sys.executable),
        predict_ref="predict.py:Predictor",
    )


async def test_managed_weights_are_bound_read_only_at_their_target_once_assembled(
    pool: RunnerPool, store: SlowStore, tmp_path: Path
) -> None:
    spec = managed_model(tmp_path / "model", store)
    result = await pool.predict(spec, "m1", {})
    assert result.status == "succeeded", result.error
    assert result.output == "own.txt=own,z.txt=stored"
    sets = list((tmp_path / "cache" / "sets").iterdir())
    assert len(sets) == 1 and sorted(p.name for p in sets[0].iterdir()) == ["own.txt", "z.txt"]


@pytest.mark.integration  # starts coglet processes itself
async def test_a_set_of_managed_weights_leaves_the_cache_once_unused_for_its_time(
    store: SlowStore, tmp_path: Path
) -> None:
    cache = WeightsCache(lambda: store, tmp_path / "cache", max_age=0)
    runners = RunnerPool(PoolConfig(max_warm=2, boot_timeout=60, weights=cache))
    await runners.start()
    try:
        result = await runners.predict(managed_model(tmp_path / "model", store), "m3", {})
        assert result.status == "succeeded", result.error
        [placed] = list((tmp_path / "cache" / "sets").iterdir())
        assert await cache.prune() == []  # the warm process holds it
        assert placed.is_dir()
    finally:
        await runners.close()
    # No process holds it now: a cache that keeps sets an hour keeps it, one that keeps
    # them no time removes it.
    assert await WeightsCache(lambda: store, tmp_path / "cache", max_age=3600).prune() == []
    assert await cache.prune() == [placed.name]
    assert not placed.exists()
    assert list((tmp_path / "cache" / "sets").iterdir()) == []


async def test_managed_weights_fail_the_boot_of_an_unsandboxed_model(
    store: SlowStore, tmp_path: Path
) -> None:
    from replicant.sandbox import SandboxConfig

    runners = RunnerPool(
        PoolConfig(
            boot_timeout=60,
            weights=WeightsCache(lambda: store, tmp_path / "cache"),
            sandbox=SandboxConfig(bwrap=None, unsandboxed=True),
        )
    )
    await runners.start()
    try:
        with pytest.raises(BootError, match="runs models without one"):
            await runners.predict(managed_model(tmp_path / "model", store), "m2", {})
    finally:
        await runners.close()
