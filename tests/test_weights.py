"""Stored weights of fine-tunes in the runner pool: the model process starts while its weights
download into the worker's cache, its request for them waits for the download, and weights
that cannot be loaded fail the boot with that reason (not as a model error)."""

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
from workers.runners import BootError, RunnerPool, RunnerSpec

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
        max_warm=2, boot_timeout=60, weights=WeightsCache(lambda: store, tmp_path / "cache")
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
    pool: RunnerPool, store: SlowStore, model_dir: Path
) -> None:
    ref = put_weights(store, "trainings/t1/weights.json", WORDS)
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
