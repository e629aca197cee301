"""What ``/health`` reports of a part from its background checks (api/healthwatch.py): one
failed check on a busy machine does not make the API look down; two in a row do, and so
does a check that hangs after a failed one."""

from __future__ import annotations

import time
from typing import Any

from api.healthwatch import CHECK_TIMEOUT, FAILURES, Part


async def _never(state: Any) -> str:
    raise AssertionError("not called")


def test_a_part_never_checked_ok_is_unavailable() -> None:
    part = Part(_never)
    assert part.now() is None
    part.record(None)
    assert part.now() is None


def test_one_failure_keeps_the_last_answer_and_the_next_decides() -> None:
    assert FAILURES == 2
    part = Part(_never)
    part.record("ok")
    part.record(None)
    assert part.now() == "ok"
    part.record("ok")  # it answers again: the count starts over
    part.record(None)
    assert part.now() == "ok"
    part.record(None)
    assert part.now() is None
    part.record({"queue": 1})
    assert part.now() == {"queue": 1}


def test_a_check_that_hangs_after_a_failure_makes_the_part_unavailable() -> None:
    part = Part(_never)
    part.record("ok")
    part.waiting = time.monotonic() - CHECK_TIMEOUT - 1  # no failure before: still ok
    assert part.now() == "ok"
    part.record(None)
    part.waiting = time.monotonic() - 1  # the next check, just begun
    assert part.now() == "ok"
    part.waiting = time.monotonic() - CHECK_TIMEOUT - 1  # and waiting past its timeout
    assert part.now() is None
