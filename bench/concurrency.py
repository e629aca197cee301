"""A model's own concurrency: N concurrent runs in one process against one process per run.

An async model (``concurrency: max: N`` in cog.yaml) with a ballast in setup() standing in for
weights; each prediction awaits ``--seconds`` (an I/O-bound model: a remote call, a batcher).
The runner pool runs N at once, first with ``concurrency=N`` (one process), then with
``concurrency=1`` (one process per run), and prints memory (each process tree's resident set,
all processes together), boot time (cold, the first round) and warm throughput.

Run: ``.venv/bin/python bench/concurrency.py [--runs 8] [--rounds 5] [--ballast-mb 100]``.
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

from replicant.runner import RunnerSpec  # noqa: E402
from workers.runners import RunnerPool  # noqa: E402

MODEL = """
    import asyncio
    import os
    from cog import BasePredictor

    class Predictor(BasePredictor):
        def setup(self) -> None:
            self.ballast = bytearray(int(os.environ["BALLAST_MB"]) * 1024 * 1024)
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
    pool = RunnerPool(max_warm=runs + 1, boot_timeout=120)
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


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=8, help="concurrent predictions (N)")
    parser.add_argument("--rounds", type=int, default=5, help="warm bursts to time")
    parser.add_argument("--seconds", type=float, default=0.2, help="each prediction's wait")
    parser.add_argument("--ballast-mb", type=int, default=100, help="memory setup() holds")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        model_dir = Path(tmp)
        (model_dir / "predict.py").write_text(textwrap.dedent(MODEL))
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


if __name__ == "__main__":
    asyncio.run(main())
