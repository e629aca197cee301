"""A streaming prediction's logs held within the limit in the model's process
(``workers/model_entry.py``): coglet copies them whole on every line it logs."""

from __future__ import annotations

import asyncio
import io
import sys
from collections.abc import AsyncIterator, Iterator

import pytest

from workers.model_entry import _HeldLogs, held_back_line, reporting

LIMIT = 1000


def logs_of(lines: list[str], monkeypatch: pytest.MonkeyPatch) -> str:
    """What a generator predict printing ``lines`` (one a step) leaves in its logs, with
    ``REPLICANT_MAX_LOG_SIZE`` at ``LIMIT``; its outputs all come through."""
    monkeypatch.setenv("REPLICANT_MAX_LOG_SIZE", str(LIMIT))

    def predict() -> Iterator[int]:
        for i, line in enumerate(lines):
            print(line)
            yield i

    out = io.StringIO()
    monkeypatch.setattr(sys, "stdout", out)
    assert list(reporting(predict)()) == list(range(len(lines)))
    return out.getvalue()


def test_logs_within_the_limit_pass_as_printed(monkeypatch: pytest.MonkeyPatch) -> None:
    lines = [f"line {i}" for i in range(20)]
    assert logs_of(lines, monkeypatch) == "".join(f"{line}\n" for line in lines)


def test_logs_over_the_limit_keep_their_first_half_and_their_end_within_the_limit(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    lines = [f"line {i:05d}" for i in range(5000)]
    whole = "".join(f"{line}\n" for line in lines)
    kept = logs_of(lines, monkeypatch)
    held = _HeldLogs(LIMIT)
    left_out = len(whole) - held.head - held.tail
    assert kept == whole[: held.head] + held_back_line(left_out) + whole[-held.tail :]
    assert len(kept) <= LIMIT


def test_a_generator_that_fails_writes_the_end_of_its_logs_before_its_traceback(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("REPLICANT_MAX_LOG_SIZE", str(LIMIT))

    def predict() -> Iterator[int]:
        for i in range(200):
            print(f"step {i}")
            yield i
        raise RuntimeError("gave up")

    out = io.StringIO()
    monkeypatch.setattr(sys, "stdout", out)
    monkeypatch.setattr(sys, "stderr", out)
    with pytest.raises(RuntimeError):
        list(reporting(predict)())
    logs = out.getvalue()
    assert "characters of logs were left out here]\n" in logs
    assert "step 199\nTraceback (most recent call last):\n" in logs
    assert logs.endswith("RuntimeError: gave up\n")


async def test_concurrent_async_generators_each_keep_their_own_logs(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("REPLICANT_MAX_LOG_SIZE", str(LIMIT))
    out = io.StringIO()
    monkeypatch.setattr(sys, "stdout", out)

    async def predict(name: str) -> AsyncIterator[str]:
        for i in range(300):
            print(f"{name} {i:03d}")
            await asyncio.sleep(0)
            yield f"{name}{i}"

    async def run(name: str) -> list[str]:
        return [item async for item in reporting(predict)(name)]

    first, second = await asyncio.gather(run("a"), run("b"))
    assert first == [f"a{i}" for i in range(300)] and second == [f"b{i}" for i in range(300)]
    print("after both")
    logs = out.getvalue()
    # Each held its own: two lines saying what was left out, each followed by its own end.
    assert logs.count("characters of logs were left out here]\n") == 2
    assert "a 299\n" in logs and "b 299\n" in logs
    assert logs.endswith("after both\n")
    assert len(logs) <= 2 * LIMIT + len("after both\n")
