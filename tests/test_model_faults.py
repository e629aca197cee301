"""Models that misbehave end truthfully, the worker keeps serving other models, and the
worker's and the API's memory stay bounded.

A stack of its own with a short setup timeout: a model whose setup() hangs, one whose
process exits mid-prediction, one that prints 100 MB of logs, one that returns 50 MB of output.
"""

from __future__ import annotations

import contextlib
import os
import threading
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest

from replicant.versions import create_version, ensure_model
from tests.conftest import LiveStack, own_stack
from workers.model_entry import held_back_line
from workers.runners.answer import logs_marker, output_too_large
from workers.runners.coglet import worker_died_error

MODELS = Path(__file__).parent / "models"
# A model process that exits or is killed under a run (no OOM kill counted here).
PROCESS_DIED = worker_died_error(oom_killed=False)
SETUP_TIMEOUT = 6.0
MB = 1024 * 1024
LOGS_MB = 100
# A streaming model prints its 100 MB in chunks of this many, an output after each.
STREAM_CHUNK_MB = 10
OUTPUT_MB = 50
# An output under the limit (REPLICANT_MAX_OUTPUT_SIZE, 16 MB by default) comes back whole.
ALLOWED_OUTPUT_MB = 5
# What the worker process (its model processes not counted) and the API process may grow by
# while a model prints 100 MB of logs or returns 50 MB: less than the model's data, so neither
# ever holds it whole (logs are kept up to REPLICANT_MAX_LOG_SIZE, 1 MB by default).
MEMORY_BOUND = 48 * MB


@pytest.fixture(scope="module")
def faulty(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveStack]:
    overrides = {"setup_timeout": SETUP_TIMEOUT, "prediction_timeout": 120.0}
    with own_stack(tmp_path_factory, "faults", **overrides) as live:
        for name in ("faults", "setuphang", "logstream"):
            model = ensure_model(live.engine, live.settings.default_account, name)
            create_version(live.settings, live.engine, model, MODELS / name)
        yield live


def still_serving(live: LiveStack) -> None:
    """Other models, and the faulty one's next run, still work."""
    hello = live.predict("replicate/hello-world", {"text": "after"})
    assert (hello["status"], hello["output"]) == ("succeeded", "hello after")
    echo = live.predict(f"{live.settings.default_account}/faults", {"mode": "echo"})
    assert (echo["status"], echo["output"]) == ("succeeded", "ok")


def own_rss(pid: int) -> int:
    """Resident bytes of a stack process and those of its descendants in its session: a
    worker's model processes lead sessions of their own, and are the model's memory."""
    try:
        root = psutil.Process(pid)
        members = [root, *root.children(recursive=True)]
        session = os.getsid(pid)
    except (psutil.Error, ProcessLookupError):
        return 0
    return sum(resident(member) for member in members if session_of(member.pid) == session)


def resident(process: psutil.Process) -> int:
    try:
        return int(process.memory_info().rss)
    except psutil.Error:
        return 0  # exited since the listing


def session_of(pid: int) -> int | None:
    try:
        return os.getsid(pid)
    except ProcessLookupError:
        return None


@contextlib.contextmanager
def peak_growth(live: LiveStack, names: tuple[str, ...]) -> Iterator[dict[str, int]]:
    """How far above its resident memory at the start each named stack process went, in bytes,
    sampled until the block ends (filled in then)."""
    pids = {name: live.stack.procs[name].pid for name in names}
    start = {name: own_rss(pid) for name, pid in pids.items()}
    peak = dict(start)
    done = threading.Event()

    def sample() -> None:
        while not done.wait(0.02):
            for name, pid in pids.items():
                peak[name] = max(peak[name], own_rss(pid))

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    growth: dict[str, int] = {}
    try:
        yield growth
    finally:
        done.set()
        sampler.join()
        growth.update({name: peak[name] - start[name] for name in names})


def assert_bounded(growth: dict[str, int]) -> None:
    shown = {name: f"{size / MB:.1f} MB" for name, size in growth.items()}
    print(f"memory growth: {shown}")
    assert all(size < MEMORY_BOUND for size in growth.values()), shown


def test_a_model_whose_setup_hangs_fails_with_the_reason(faulty: LiveStack) -> None:
    final = faulty.predict(f"{faulty.settings.default_account}/setuphang", {"text": "x"})
    assert final["status"] == "failed", final
    assert f"setup did not finish within {SETUP_TIMEOUT:g} s" in final["error"], final["error"]
    still_serving(faulty)


@pytest.mark.parametrize("mode", ["exit", "killed"])
def test_a_model_process_that_dies_mid_prediction_fails_it(faulty: LiveStack, mode: str) -> None:
    """It exits, or is SIGKILLed as the OOM killer would."""
    final = faulty.predict(f"{faulty.settings.default_account}/faults", {"mode": mode})
    assert final["status"] == "failed", final
    assert final["error"] == PROCESS_DIED, final
    still_serving(faulty)


def test_100_mb_of_logs_keep_their_last_megabyte_in_bounded_memory(faulty: LiveStack) -> None:
    model = f"{faulty.settings.default_account}/faults"
    faulty.predict(model, {"mode": "echo"})  # booted before the memory is measured
    with peak_growth(faulty, ("worker", "api")) as growth:
        final = faulty.predict(model, {"mode": "logs", "mb": LOGS_MB})
    assert final["status"] == "succeeded", final.get("error")
    assert final["output"] == "logged"
    limit = faulty.settings.max_log_size
    marker = logs_marker(LOGS_MB * MB - limit, limit)
    assert final["logs"].startswith(marker), final["logs"][:300]
    assert len(final["logs"]) == len(marker) + limit
    assert final["logs"].endswith(("x" * 1023 + "\n") * 1000)
    assert_bounded(growth)
    still_serving(faulty)


def test_a_streaming_model_printing_100_mb_of_logs_ends_with_its_outputs_and_their_ends(
    faulty: LiveStack,
) -> None:
    """coglet copies a streaming prediction's whole logs on every line (its webhook payload),
    which 100 MB would make hours: the model's process keeps them within the limit, their
    first half as printed and their end, with a line saying how much was left out between."""
    model = f"{faulty.settings.default_account}/logstream"
    faulty.predict(model, {"chunks": 1, "mb": 0})  # booted before the memory is measured
    chunks = LOGS_MB // STREAM_CHUNK_MB
    with peak_growth(faulty, ("worker", "api")) as growth:
        final = faulty.predict(model, {"chunks": chunks, "mb": STREAM_CHUNK_MB})
    assert final["status"] == "succeeded", final.get("error")
    assert final["output"] == [f"chunk {i}" for i in range(chunks)]
    limit = faulty.settings.max_log_size
    head = limit // 2
    tail = limit - head - len(held_back_line(10**18))
    line = "x" * 1023 + "\n"
    printed = line * (limit // len(line) + 1)
    left_out = held_back_line(LOGS_MB * MB - head - tail)
    assert final["logs"][:head] == printed[:head]
    assert final["logs"][head:] == left_out + printed[-tail:], final["logs"][head : head + 100]
    assert_bounded(growth)
    still_serving(faulty)


def test_an_output_over_the_limit_fails_saying_the_limit_in_bounded_memory(
    faulty: LiveStack,
) -> None:
    model = f"{faulty.settings.default_account}/faults"
    faulty.predict(model, {"mode": "echo"})
    with peak_growth(faulty, ("worker", "api")) as growth:
        final = faulty.predict(model, {"mode": "output", "mb": OUTPUT_MB})
    assert final["status"] == "failed", final
    # The output is a JSON string: its 50 MB and two quotes.
    assert final["error"] == output_too_large(OUTPUT_MB * MB + 2, faulty.settings.max_output_size)
    assert "over the limit of 16.0 MB" in final["error"]
    assert final["output"] is None
    assert_bounded(growth)
    still_serving(faulty)


def test_an_output_under_the_limit_comes_back_whole(faulty: LiveStack) -> None:
    model = f"{faulty.settings.default_account}/faults"
    final = faulty.predict(model, {"mode": "output", "mb": ALLOWED_OUTPUT_MB})
    assert final["status"] == "succeeded", final.get("error")
    assert final["output"] == "y" * (ALLOWED_OUTPUT_MB * MB)
