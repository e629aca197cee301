"""Timings of the runner pool against real coglet processes: the figures the tests used to
assert and no longer do.

- cold run (boot a process, then predict) against a warm run on the same process;
- cancel: from cancelling the awaiting task of a running prediction until it returns;
- hung model: from cancelling a prediction stuck in C code until its process is gone
  (the pool kills it after ``cancel_grace``);
- boot failure: from ``predict`` until a worker that cannot start is reported.

Run: ``.venv/bin/python bench/runners.py [--rounds 3]``. Prints the median of each, in ms.

``--sandbox-compare`` measures what the model sandbox costs instead: the cold run, a warm
run (median of 20 on one process) and a fine-tune adopting a ready standby (from ``predict``
to its answer), each with the machine's sandbox and unsandboxed, the two interleaved round
by round (a loaded machine drifts); it prints both medians and their ratio.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from replicant.sandbox import SandboxConfig, machine_sandbox  # noqa: E402
from replicant.storage import LocalStore  # noqa: E402
from replicant.weights import WeightsCache  # noqa: E402
from tests.runnerkit import write_models  # noqa: E402  (the runner tests' tiny models)
from tests.test_weights import NGRAM, WORDS, base_spec, finetune_spec, put_weights  # noqa: E402
from workers.runners import BootError, PoolConfig, RunnerPool, RunnerSpec  # noqa: E402


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
    pool = RunnerPool(
        PoolConfig(max_warm=4, boot_timeout=30, cancel_grace=1.0, update_interval=0.1)
    )
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


async def sandbox_round(root: Path, index: int, sandbox: SandboxConfig) -> dict[str, float]:
    """Cold, warm and standby timings of one pool with ``sandbox``."""
    store = LocalStore(root / f"files-{index}", "http://127.0.0.1:1", "secret")
    cache = WeightsCache(lambda: store, root / f"cache-{index}")
    pool = RunnerPool(
        PoolConfig(max_warm=4, boot_timeout=60, weights=cache, standby=True, sandbox=sandbox)
    )
    await pool.start()
    try:
        hello = spec(root, "hello", f"hello-{index}")
        figures = {"cold run": await timed(lambda: pool.predict(hello, "c", {"name": "x"}))}
        warm = [await timed(lambda: pool.predict(hello, "w", {"name": "x"})) for _ in range(20)]
        figures["warm run"] = statistics.median(warm)
        ngram = root / "ngram"
        pool.keep_standby(base_spec(ngram))
        ref = put_weights(store, f"trainings/b{index}/weights.json", WORDS)
        tuned = finetune_spec(ngram, ref)
        if not await pool.standby_ready(tuned):
            raise RuntimeError("no standby became ready")
        figures["fine-tune on a standby"] = await timed(
            lambda: pool.predict(tuned, "f", {"max_tokens": 3})
        )
        return figures
    finally:
        await pool.close()


async def compare(rounds: int) -> None:
    sandboxed, unsandboxed = machine_sandbox(), SandboxConfig(bwrap=None, unsandboxed=True)
    results: dict[str, list[dict[str, float]]] = {"sandboxed": [], "unsandboxed": []}
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        root.chmod(0o755)
        write_models(root)
        shutil.copytree(NGRAM, root / "ngram")
        for i in range(rounds):
            for name, config in (("unsandboxed", unsandboxed), ("sandboxed", sandboxed)):
                index = 2 * i + (name == "sandboxed")
                results[name].append(await sandbox_round(root, index, config))
    print(f"model sandbox, {rounds} interleaved rounds (median ms; ratio sandboxed/unsandboxed)")
    for figure in results["sandboxed"][0]:
        on = statistics.median(r[figure] for r in results["sandboxed"])
        off = statistics.median(r[figure] for r in results["unsandboxed"])
        print(f"  {figure:24s} {off:8.1f} {on:8.1f}  x{on / off:.2f}")


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
    parser.add_argument("--sandbox-compare", action="store_true")
    args = parser.parse_args()
    asyncio.run(compare(args.rounds) if args.sandbox_compare else main(args.rounds))
