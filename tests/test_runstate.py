"""A run's state on the worker (replicant/runstate.py): it starts once, reports only news,
and ends once; the run activity's LiveRun records an attempt's end once, also when the pool
has ended the run's state before (the pool's side: tests/test_runners.py)."""

from __future__ import annotations

import asyncio

from activities.running import LiveRun
from replicant.runner import CogPrediction
from replicant.runstate import RunState


def quiet_live_run() -> LiveRun:
    """A LiveRun of run ``p1`` with no webhook, whose writes go nowhere."""
    return LiveRun(
        "p1",
        None,
        interval=0.05,
        mark_processing=lambda _at: None,
        write_progress=lambda _state: None,
        processing_delay=None,
    )


def test_a_run_starts_once_and_reports_only_news() -> None:
    state = RunState("p1")
    assert state.status == "starting"
    started = state.start()
    assert state.status == "processing"
    assert state.start() == started == state.started_at
    assert state.report(CogPrediction(status="processing", logs="a\n"))
    assert not state.report(CogPrediction(status="processing", logs="a\n"))
    assert state.report(CogPrediction(status="processing", logs="a\nb\n"))
    assert state.latest == CogPrediction(status="processing", logs="a\nb\n")


def test_the_first_end_is_the_run_s_end() -> None:
    state = RunState("p1")
    failed = state.fail("boom", logs="trace")
    assert state.status == "failed"
    assert state.cancel() is failed
    assert state.end(CogPrediction(status="succeeded", output=1)) is failed
    assert state.status == "failed"
    assert not state.report(CogPrediction(status="processing", logs="late"))
    assert state.latest is None


def test_a_live_run_records_its_end_once() -> None:
    writes: list[str] = []

    async def scenario() -> None:
        run = quiet_live_run()
        await run.close(lambda: writes.append("canceled"), status="canceled", logs="x")
        await run.close(lambda: writes.append("succeeded"), status="succeeded", logs="y")
        assert run.state.status == "canceled"
        assert run.state.ended == CogPrediction(status="canceled", logs="x")

    asyncio.run(scenario())
    assert writes == ["canceled"]


def test_a_live_run_records_its_end_after_the_pool_ended_the_run() -> None:
    writes: list[str] = []

    async def scenario() -> None:
        run = quiet_live_run()
        # The pool stopped the model at the attempt's timeout: the run's end is coglet's.
        stopped = run.state.cancel(logs="step 1\n")
        await run.close(lambda: writes.append("failed"), status="failed", logs="step 1\n")
        await run.close(lambda: writes.append("canceled"), status="canceled", logs="")
        assert run.state.ended is stopped

    asyncio.run(scenario())
    assert writes == ["failed"]
