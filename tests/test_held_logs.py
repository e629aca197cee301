"""A streaming prediction's logs held within the limit in the model's process
(``workers/model_entry.py``): coglet copies them whole on every line it logs."""

from __future__ import annotations

import io
import sys
from collections.abc import Iterator

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
