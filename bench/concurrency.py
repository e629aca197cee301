"""A model's own concurrency: N concurrent runs in one process against one process per run.

An async model (``concurrency: max: N`` in cog.yaml) with a ballast in setup() standing in for
weights; each prediction awaits ``--seconds`` (an I/O-bound model: a remote call, a batcher).
The runner pool runs N at once, first with ``concurrency=N`` (one process), then with
``concurrency=1`` (one process per run), and prints memory (each process tree's resident set,
all processes together), boot time (cold, the first round) and warm throughput.

Then the same model through a whole stack whose worker has ONE ``cpu`` slot (``--stack``):
N predictions created at once (``Prefer: wait``), in rounds; printed are the distinct
model processes that answered and the throughput, with ``concurrency.max`` N (the runs share
the slot, workers/slots.py) and 1 (one run at a time).

Run: ``.venv/bin/python bench/concurrency.py [--runs 8] [--rounds 5] [--ballast-mb 100]
[--stack]``.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import tempfile
import textwrap
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import httpx  # noqa: E402

from replicant.db import make_engine  # noqa: E402
from replicant.devstack import Stack, free_port  # noqa: E402
from replicant.runner import RunnerSpec  # noqa: E402
from replicant.settings import Settings  # noqa: E402
from replicant.versions import create_version, ensure_model  # noqa: E402
from workers.runners import PoolConfig, RunnerPool  # noqa: E402

MODEL = """
    import asyncio
    import os
    from cog import BasePredictor

    class Predictor(BasePredictor):
        def setup(self) -> None:
            mb = int(os.environ.get("BALLAST_MB", "{ballast}"))  # a stack passes no env
            self.ballast = bytearray(mb * 1024 * 1024)
            self.ballast[::4096] = b"x" * len(self.ballast[::4096])

        async def predict(self, seconds: float = 0.2) -> str:
            await asyncio.sleep(seconds)
            return str(os.getpid())
"""


async def measure(
    model_dir: Path, concurrency: int, runs: int, rounds: int, seconds: float, ballast: int
) -> dict[str, float]:
    spec = RunnerSpec(
        key=f"bench-c{concurrency}",
        model_dir=model_dir,
        python=Path(sys.executable),
        predict_ref="predict.py:Predictor",
        env={"BALLAST_MB": str(ballast)},
        concurrency=concurrency,
    )
    pool = RunnerPool(PoolConfig(max_warm=runs + 1, boot_timeout=120))
    await pool.start()
    try:

        async def burst(tag: str) -> set[str]:
            results = await asyncio.gather(
                *(pool.predict(spec, f"{tag}-{i}", {"seconds": seconds}) for i in range(runs))
            )
            failed = [r.error for r in results if r.status != "succeeded"]
            if failed:
                raise RuntimeError(f"runs failed: {failed[:3]}")
            return {str(r.output) for r in results}

        started = time.perf_counter()
        pids = await burst("cold")
        cold = time.perf_counter() - started
        started = time.perf_counter()
        for round_ in range(rounds):
            await burst(f"warm{round_}")
        warm = time.perf_counter() - started
        memory = sum(size for size, _ in pool.memory().values())
        return {
            "processes": len(pids),
            "memory_mb": memory / 1024 / 1024,
            "cold_s": cold,
            "throughput": runs * rounds / warm,
        }
    finally:
        await pool.close()


async def through_stack(
    model_dir: Path, concurrency: int, runs: int, rounds: int, seconds: float
) -> dict[str, float]:
    """N predictions at once, ``rounds`` times, on a stack whose worker has one cpu slot."""
    data_dir = Path(tempfile.mkdtemp(prefix="replicant-concurrency-"))
    (model_dir / "cog.yaml").write_text(
        f'predict: "predict.py:Predictor"\nconcurrency:\n  max: {concurrency}\n'
    )
    settings = Settings(
        data_dir=data_dir,
        api_port=free_port(),
        temporal_port=free_port(),
        ui_port=free_port(),
        hardware={"cpu": 1},
        log_level="WARNING",
        prebuild_envs=False,
        prediction_timeout=600.0,
        rate_limit_create="1000000/minute",
        rate_limit_default="1000000/minute",
    )
    stack = Stack(settings, ui=False, log_dir=data_dir / "logs")
    try:
        token = stack.start()
        engine = make_engine(settings.resolved_database_url)
        model = ensure_model(engine, "replicant", f"async-c{concurrency}", hardware="cpu")
        create_version(settings, engine, model, model_dir)
        engine.dispose()
        url = f"/v1/models/replicant/async-c{concurrency}/predictions"
        headers = {"Authorization": f"Bearer {token}", "Prefer": "wait=60"}
        body = {"input": {"seconds": seconds}}
        async with httpx.AsyncClient(
            base_url=settings.resolved_public_url, headers=headers, timeout=600
        ) as api:
            peak = 0

            async def burst() -> set[str]:
                nonlocal peak
                answers = await asyncio.gather(*(api.post(url, json=body) for _ in range(runs)))
                outputs: set[str] = set()
                spans: list[tuple[str, str]] = []
                for answer in answers:
                    prediction = answer.json()
                    while prediction["status"] not in ("succeeded", "failed", "canceled"):
                        await asyncio.sleep(0.05)
                        prediction = (await api.get(f"/v1/predictions/{prediction['id']}")).json()
                    if prediction["status"] != "succeeded":
                        raise RuntimeError(f"a run failed: {prediction.get('error')}")
                    outputs.add(str(prediction["output"]))
                    spans.append((prediction["started_at"], prediction["completed_at"]))
                # The most runs in flight at once, by the predictions' own timestamps.
                peak = max(peak, max(sum(s <= t < e for s, e in spans) for t, _ in spans))
                return outputs

            pids = await burst()  # cold: boots the process
            started = time.perf_counter()
            for _ in range(rounds):
                pids |= await burst()
            warm = time.perf_counter() - started
        return {"processes": len(pids), "peak": peak, "throughput": runs * rounds / warm}
    finally:
        stack.stop()


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=8, help="concurrent predictions (N)")
    parser.add_argument("--rounds", type=int, default=5, help="warm bursts to time")
    parser.add_argument("--seconds", type=float, default=0.2, help="each prediction's wait")
    parser.add_argument("--ballast-mb", type=int, default=100, help="memory setup() holds")
    parser.add_argument("--stack", action="store_true", help="also through a one-slot worker")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        model_dir = Path(tmp)
        source = textwrap.dedent(MODEL).replace("{ballast}", str(args.ballast_mb))
        (model_dir / "predict.py").write_text(source)
        (model_dir / "cog.yaml").write_text(
            f'predict: "predict.py:Predictor"\nconcurrency:\n  max: {args.runs}\n'
        )
        print(
            f"{args.runs} concurrent runs of {args.seconds:g} s, ballast {args.ballast_mb} MB, "
            f"{args.rounds} warm rounds"
        )
        print(f"{'mode':<24}{'processes':>10}{'memory MB':>11}{'cold s':>8}{'runs/s':>8}")
        for label, concurrency in (("one process (max: N)", args.runs), ("one per run", 1)):
            figures = await measure(
                model_dir, concurrency, args.runs, args.rounds, args.seconds, args.ballast_mb
            )
            print(
                f"{label:<24}{figures['processes']:>10.0f}{figures['memory_mb']:>11.0f}"
                f"{figures['cold_s']:>8.2f}{figures['throughput']:>8.1f}"
            )
        if not args.stack:
            return
        print(f"\nthrough a stack whose worker has one cpu slot, {args.rounds} warm rounds")
        print(f"{'cog.yaml':<24}{'processes':>10}{'at once':>9}{'runs/s':>8}")
        for label, concurrency in ((f"concurrency.max {args.runs}", args.runs), ("none", 1)):
            figures = await through_stack(
                model_dir, concurrency, args.runs, args.rounds, args.seconds
            )
            print(
                f"{label:<24}{figures['processes']:>10.0f}{figures['peak']:>9.0f}"
                f"{figures['throughput']:>8.1f}"
            )


if __name__ == "__main__":
    asyncio.run(main())
