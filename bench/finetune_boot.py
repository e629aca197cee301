"""Cold start of a fine-tune version against a fresh base-version boot, in one run.

Both are measured from nothing running to the answer of the first prediction, with
``replicant/ngram`` and Replicant's own code paths:

- fresh base-version boot: a new version of the base model is pushed and booted, i.e.
  ``create_version`` (copy the files, prepare the Python environment, derive the schema
  from the predictor, record it) and then a cold coglet process (``setup()``) and the first
  prediction. Each round pushes under a new model name, so every version is really new.
- fine-tune cold start: a fine-tune version made by the real trainer (``train()`` in coglet's
  train mode, weights stored in the object store, the version created by
  ``complete_training``) is booted cold on a worker that has never seen its weights: fetch
  the weights from the store into the cache, a coglet process in the base version's
  directory and environment with ``COG_WEIGHTS`` set, ``setup()``, the first prediction.

Run: ``.venv/bin/python bench/finetune_boot.py [--rounds 5]``. Prints the medians, the
ratio (goal: a fine-tune cold start at most 0.5x a fresh base-version boot), and where each
spends its time: the push; the weights download (timed on its own, into another empty cache:
in the cold start it overlaps coglet's start); the boot up to READY, of which coglet's own
report of ``setup()`` (worker process, imports, ``setup()`` with its weights request) is a
part; and the first prediction.
"""

from __future__ import annotations

import argparse
import asyncio
import shutil
import statistics
import sys
import tempfile
import time
from datetime import datetime
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from activities.predictions import runner_spec  # noqa: E402
from activities.trainings import TrainingActivities, trainer_spec  # noqa: E402
from replicant import trainings  # noqa: E402
from replicant.contracts import TrainingRequest  # noqa: E402
from replicant.db import init_db, make_engine  # noqa: E402
from replicant.ids import new_id  # noqa: E402
from replicant.settings import Settings, get_settings  # noqa: E402
from replicant.storage import open_store  # noqa: E402
from replicant.tables import Version  # noqa: E402
from replicant.timeutil import utcnow  # noqa: E402
from replicant.versions import EXAMPLES_DIR, create_version, ensure_model  # noqa: E402
from replicant.weights import WeightsCache  # noqa: E402
from workers.runners import PoolConfig, RunnerPool  # noqa: E402

CORPUS = " ".join(f"bench{i % 97} word{i % 13}." for i in range(5000))
INPUT = {"max_tokens": 5, "seed": 1}


async def first_prediction(pool: RunnerPool, version: Version) -> None:
    result = await pool.predict(runner_spec(get_settings(), version), new_id(), INPUT)
    if result.status != "succeeded":
        raise RuntimeError(f"prediction {result.status}: {result.error}")


async def cold_boot(pool: RunnerPool, version: Version) -> tuple[float, float]:
    """Boot the version's process as a first prediction would: (seconds to READY, seconds
    coglet reports for its setup: worker process, imports and ``setup()``)."""
    await pool.start()
    started = time.perf_counter()
    async with pool.exclusive(runner_spec(get_settings(), version)) as process:
        booted = time.perf_counter() - started
        health = await pool.health(process)
    setup = health.get("setup") or {}
    try:
        span = _instant(setup["completed_at"]) - _instant(setup["started_at"])
    except (KeyError, TypeError, ValueError):
        return booted, float("nan")
    return booted, span.total_seconds()


def _instant(value: str) -> datetime:
    # coglet reports nanoseconds; datetime takes microseconds.
    head, _, rest = value.partition(".")
    digits = "".join(c for c in rest if c.isdigit())[:6]
    return datetime.fromisoformat(f"{head}.{digits or '0'}+00:00")


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    data_dir = Path(tempfile.mkdtemp(prefix="replicant-bench-"))
    settings = Settings(data_dir=data_dir)
    engine = make_engine(settings.resolved_database_url)
    init_db(engine)
    store = open_store(settings)
    try:
        base_times: list[float] = []
        push_times: list[float] = []
        finetune_times: list[float] = []
        standby_times: list[float] = []
        parts: dict[str, list[float]] = {
            "base boot": [],
            "base setup": [],
            "base first prediction": [],
            "weights download": [],
            "fine-tune boot": [],
            "fine-tune setup": [],
            "fine-tune first prediction": [],
            "standby adoption (weights + setup)": [],
        }
        model = ensure_model(engine, "bench", "base")
        base = await asyncio.to_thread(
            create_version, settings, engine, model, EXAMPLES_DIR / "ngram"
        )
        acts = TrainingActivities(engine, settings, store=lambda: store)
        for round_ in range(args.rounds):
            # Fresh base version: push (env, schema, record), boot, first prediction.
            pool = RunnerPool(PoolConfig(max_warm=2))
            fresh_model = ensure_model(engine, "bench", f"base-{round_}")
            started = time.perf_counter()
            fresh = await asyncio.to_thread(
                create_version, settings, engine, fresh_model, EXAMPLES_DIR / "ngram"
            )
            push_times.append(time.perf_counter() - started)
            boot, setup = await cold_boot(pool, fresh)
            before = time.perf_counter()
            await first_prediction(pool, fresh)
            parts["base first prediction"].append(time.perf_counter() - before)
            base_times.append(time.perf_counter() - started)
            parts["base boot"].append(boot)
            parts["base setup"].append(setup)
            await pool.close()

            # A fine-tune made by the real trainer, then booted cold by a fresh worker.
            finetune = await make_finetune(settings, engine, acts, base, round_)
            assert finetune.weights_url is not None
            probe = WeightsCache(lambda: store, data_dir / f"weights-probe-{round_}")
            before = time.perf_counter()
            await probe.materialize(finetune.weights_url)
            parts["weights download"].append(time.perf_counter() - before)
            cache = data_dir / f"weights-cache-{round_}"
            pool = RunnerPool(PoolConfig(max_warm=2, weights=WeightsCache(lambda: store, cache)))
            await pool.start()
            started = time.perf_counter()
            boot, setup = await cold_boot(pool, finetune)
            before = time.perf_counter()
            await first_prediction(pool, finetune)
            parts["fine-tune first prediction"].append(time.perf_counter() - before)
            finetune_times.append(time.perf_counter() - started)
            parts["fine-tune boot"].append(boot)
            parts["fine-tune setup"].append(setup)
            await pool.close()

            # The same, on a worker whose pool keeps a standby of the base version (as a
            # worker does once it has run a fine-tune or a training of that base).
            cache = data_dir / f"weights-cache-standby-{round_}"
            pool = RunnerPool(
                PoolConfig(max_warm=2, weights=WeightsCache(lambda: store, cache), standby=True)
            )
            await pool.start()
            pool.keep_standby(runner_spec(get_settings(), base))
            if not await pool.standby_ready(runner_spec(get_settings(), finetune)):
                raise RuntimeError("the standby did not reach its weights request")
            started = time.perf_counter()
            boot, setup = await cold_boot(pool, finetune)
            await first_prediction(pool, finetune)
            standby_times.append(time.perf_counter() - started)
            parts["standby adoption (weights + setup)"].append(boot)
            await pool.close()
            print(
                f"round {round_ + 1}: base push+boot {base_times[-1]:.3f} s "
                f"(push {push_times[-1]:.3f} s), "
                f"fine-tune cold start {finetune_times[-1]:.3f} s, "
                f"from a standby {standby_times[-1]:.3f} s"
            )
        base_median = statistics.median(base_times)
        finetune_median = statistics.median(finetune_times)
        print()
        print(f"fresh base-version boot (push + boot + first prediction): {base_median:.3f} s")
        print(
            f"  of which the push (files, env, schema, record):          "
            f"{statistics.median(push_times):.3f} s"
        )
        standby_median = statistics.median(standby_times)
        print(f"fine-tune cold start, no process of the base running:     {finetune_median:.3f} s")
        print(f"fine-tune cold start from the base version's standby:     {standby_median:.3f} s")
        print(
            f"ratio: {standby_median / base_median:.2f}x from a standby (goal: at most 0.50x); "
            f"{finetune_median / base_median:.2f}x with no process of the base running"
        )
        print()
        print("breakdown (medians):")
        print(f"  base push (files, env, schema, record)  {statistics.median(push_times):.3f} s")
        for name, values in parts.items():
            print(f"  {name:<39} {statistics.median(values):.3f} s")
        print(
            "  (a fine-tune's weights download overlaps its boot; coglet's setup is part of "
            "the boot)"
        )
    finally:
        engine.dispose()
        shutil.rmtree(data_dir, ignore_errors=True)


async def make_finetune(
    settings: Settings, engine: object, acts: TrainingActivities, base: Version, round_: int
) -> Version:
    """Train ``base`` on a corpus and create the fine-tune exactly as a training does."""
    from sqlalchemy.engine import Engine

    assert isinstance(engine, Engine)
    dest = ensure_model(engine, "bench", f"tuned-{round_}")
    req = TrainingRequest(
        id=new_id(),
        owner="bench",
        model="bench/base",
        version=base.id,
        destination=f"{dest.owner}/{dest.name}",
        input={"text": "data:text/plain," + CORPUS.replace(" ", "%20") + f"%20r{round_}"},
    )
    trainings.insert_training(engine, req)
    pool = RunnerPool(PoolConfig(max_warm=1))
    try:
        result = await pool.predict(trainer_spec(get_settings(), base), req.id, req.input)
    finally:
        await pool.close()
    if result.status != "succeeded":
        raise RuntimeError(f"training {result.status}: {result.error}")
    weights = await acts._store_weights(req.id, result)
    ref = trainings.complete_training(engine, req.id, weights, utcnow())
    assert ref is not None
    from sqlmodel import Session

    with Session(engine, expire_on_commit=False) as session:
        version = session.get(Version, ref.partition(":")[2])
    assert version is not None
    return version


if __name__ == "__main__":
    asyncio.run(main())
