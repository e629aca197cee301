"""Timings of the runner pool against real coglet processes: the figures the tests used to
assert and no longer do.

- cold run (boot a process, then predict) against a warm run on the same process;
- cancel: from cancelling the awaiting task of a running prediction until it returns;
- hung model: from cancelling a prediction stuck in C code until its process is gone
  (the pool kills it after ``cancel_grace``);
- boot failure: from ``predict`` until a worker that cannot start is reported.

Run: ``.venv/bin/python bench/runners.py [--rounds 3]``. Prints the median of each, in ms.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import statistics
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tests.runnerkit import write_models  # noqa: E402  (the runner tests' tiny models)
from workers.runners import BootError, RunnerPool, RunnerSpec  # noqa: E402


def spec(root: Path, name: str, key: str, python: Path | None = None) -> RunnerSpec:
    return RunnerSpec(
        key=key,
        model_dir=root / name,
        python=python or Path(sys.executable),
        predict_ref="predict.py:Predictor",
    )


async def timed(call: Callable[[], Awaitable[object]]) -> float:
    started = time.monotonic()
    await call()
    return (time.monotonic() - started) * 1000


async def cancel_latency(pool: RunnerPool, target: RunnerSpec, input: dict[str, object]) -> float:
    """Start a run, let it get going, cancel its task: ms until the task has ended."""
    run = asyncio.create_task(pool.predict(target, f"bench-{time.monotonic_ns()}", input))
    await asyncio.sleep(1.0)  # a benchmark may sleep: the run is past its boot by then
    started = time.monotonic()
    run.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await run
    return (time.monotonic() - started) * 1000


async def round_of(root: Path, index: int) -> dict[str, float]:
    pool = RunnerPool(max_warm=4, boot_timeout=30, cancel_grace=1.0, update_interval=0.1)
    await pool.start()
    try:
        hello = spec(root, "hello", f"hello-{index}")
        figures = {
            "cold run": await timed(lambda: pool.predict(hello, "cold", {"name": "cold"})),
            "warm run": await timed(lambda: pool.predict(hello, "warm", {"name": "warm"})),
        }
        chatty = spec(root, "chatty", f"chatty-{index}")
        await pool.predict(chatty, "chatty-boot", {"steps": 1})
        figures["cancel of a running task"] = await cancel_latency(pool, chatty, {"steps": 50})
        hang = spec(root, "hang", f"hang-{index}")
        await pool.predict(hang, "hang-boot", {"seconds": 0.01})
        figures["cancel of a hung model"] = await cancel_latency(pool, hang, {"seconds": 60})
        broken = spec(root, "hello", f"broken-{index}", python=root / "bin" / "venv-python")

        async def boot_failure() -> None:
            try:
                await pool.predict(broken, "broken", {})
            except BootError:
                return
            raise RuntimeError("a worker without coglet booted")

        figures["boot failure noticed"] = await timed(boot_failure)
        return figures
    finally:
        await pool.close()


def python_without_coglet(root: Path) -> None:
    """A launcher whose coglet worker starts with a `python` that lacks coglet."""
    bindir = root / "bin"
    bindir.mkdir()
    (bindir / "python").symlink_to(Path(sys.base_prefix) / "bin" / "python3")
    launcher = bindir / "venv-python"
    launcher.write_text(f'#!/bin/sh\nexec "{sys.executable}" "$@"\n')
    launcher.chmod(0o755)


async def main(rounds: int) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        write_models(root)
        python_without_coglet(root)
        results = [await round_of(root, i) for i in range(rounds)]
    print(f"runner pool, {rounds} rounds (median ms)")
    for name in results[0]:
        print(f"  {name:28s} {statistics.median(r[name] for r in results):8.1f}")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    asyncio.run(main(parser.parse_args().rounds))
