"""The runner pool against real coglet processes running tiny throwaway Cog models."""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from prometheus_client import REGISTRY

from replicant.inputfiles import parse_data_uri
from replicant.runstate import RunState
from tests.runnerkit import Recorder, children, eventually, gone, ready_events, spec, write_models
from workers.runners import BootError, PoolConfig, RunnerPool


def weights_text(output: object) -> str:
    """The text of a weights file coglet returned as a data URI."""
    assert isinstance(output, str) and output.startswith("data:"), output
    return parse_data_uri(output)[1].decode()


pytestmark = pytest.mark.timeout(60)


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_models(tmp_path_factory.mktemp("models"))


@pytest.fixture
async def pool() -> AsyncIterator[RunnerPool]:
    runners = RunnerPool(
        PoolConfig(max_warm=4, boot_timeout=30, cancel_grace=1.0, update_interval=0.1)
    )
    await runners.start()
    yield runners
    await runners.close()


async def test_cold_boot_then_warm_reuse_keeps_the_same_process(
    pool: RunnerPool, models: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="replicant.runners")
    hello = spec(models, "hello")
    first = await pool.predict(hello, "p-cold", {"name": "cold"})
    pid = pool.pid("hello")
    booted = ready_events(caplog)
    second = await pool.predict(hello, "p-warm", {"name": "warm"})

    assert first.status == second.status == "succeeded"
    assert (first.output, second.output) == ("hello cold", "hello warm")
    assert "predict_time" in second.metrics
    assert pid is not None and pool.pid("hello") == pid
    assert pool.warm_keys() == ["hello"]
    # The cold run booted the process; the warm one booted none (timings: bench/runners.py).
    assert booted == 1
    assert ready_events(caplog) == 1


async def test_concurrent_cold_boots_of_one_key_boot_one_process_per_run(
    pool: RunnerPool, models: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="replicant.runners")
    hello = spec(models, "hello")
    results = await asyncio.gather(
        *(pool.predict(hello, f"p-shared-{i}", {"name": str(i)}) for i in range(3))
    )

    assert [r.output for r in results] == ["hello 0", "hello 1", "hello 2"]
    # One run per process: three at once are three processes, each booted once.
    assert sum("event=runner_ready" in r.getMessage() for r in caplog.records) == 3
    assert {"hello", "hello#1", "hello#2"} == set(pool.warm_keys())
    await pool.predict(hello, "p-after", {"name": "again"})
    assert sum("event=runner_ready" in r.getMessage() for r in caplog.records) == 3


async def test_on_booted_comes_first_then_live_logs_and_partial_output(
    pool: RunnerPool, models: Path
) -> None:
    recorder = Recorder()
    run = asyncio.create_task(
        pool.predict(
            spec(models, "stream"),
            "p-stream",
            {"steps": 5},
            on_update=recorder.on_update,
            on_booted=recorder.on_booted,
        )
    )
    await eventually(lambda: any(u.output for u in recorder.updates), "a partial output", 30)
    # Live: the partial output arrived while the model was still running.
    assert not run.done()
    result = await run

    assert result.status == "succeeded"
    assert result.output == [f"part {i}" for i in range(5)]
    assert result.logs == "".join(f"step {i}\n" for i in range(5))
    assert recorder.events[0][0] == "booted"
    updates = recorder.updates
    assert all(u.status == "processing" for u in updates)
    partial = [u.output for u in updates if isinstance(u.output, list) and 0 < len(u.output) < 5]
    assert len(partial) >= 2, updates
    # Cumulative: every update extends the one before it.
    for before, after in zip(updates, updates[1:], strict=False):
        assert after.logs.startswith(before.logs)
        assert len(after.output or []) >= len(before.output or [])


async def test_live_logs_of_a_model_without_iterator_output(pool: RunnerPool, models: Path) -> None:
    chatty = spec(models, "chatty")
    # The first run learns that the model does not stream output; the second takes the
    # webhook-free path that reads logs from coglet's own output.
    for attempt in range(2):
        recorder = Recorder()
        result = await pool.predict(
            chatty, f"p-chatty-{attempt}", {"steps": 5}, on_update=recorder.on_update
        )
        assert result.status == "succeeded"
        assert result.output == "done"
        assert result.logs == "".join(f"step {i}\n" for i in range(5))
        growing = [u.logs for u in recorder.updates if u.logs and u.logs != result.logs]
        assert len(growing) >= 2, recorder.updates
        assert all(result.logs.startswith(logs) for logs in growing)


async def test_a_run_handed_its_state_is_reported_to_and_ended_in_that_one_object(
    pool: RunnerPool, models: Path
) -> None:
    chatty = spec(models, "chatty")
    recorder = Recorder()
    state = RunState("p-one-state")
    result = await pool.predict(
        chatty, "p-one-state", {"steps": 3}, on_update=recorder.on_update, state=state
    )

    assert result.status == "succeeded"
    assert state.ended is result
    assert state.status == "succeeded"
    assert recorder.updates and state.latest == recorder.updates[-1]
    with pytest.raises(ValueError, match="p-one-state"):
        await pool.predict(chatty, "p-other", {"steps": 1}, state=state)


async def test_model_exception_fails_with_its_message_and_logs(
    pool: RunnerPool, models: Path
) -> None:
    broken = spec(models, "broken")
    recorder = Recorder()
    with_updates = await pool.predict(broken, "p-fail-1", {}, on_update=recorder.on_update)
    plain = await pool.predict(broken, "p-fail-2", {})

    for result in (with_updates, plain):
        assert result.status == "failed"
        assert result.error == "boom: bad thing"
        # The traceback, from the model's own frame, after what the model printed.
        assert result.logs.startswith("about to fail\nTraceback (most recent call last):\n")
        # Sandboxed, the model's code is at /src (as in Cog's images).
        assert '/src/predict.py", line 7, in predict\n' in result.logs
        assert '    raise ValueError("boom: bad thing")\n' in result.logs
        assert result.logs.endswith("\nValueError: boom: bad thing\n")
        assert result.logs.count("ValueError: boom: bad thing") == 1
        assert "model_entry" not in result.logs
    assert pool.warm_keys() == ["broken"]


async def test_tracebacks_of_generators_coroutines_and_trainers_reach_the_logs(
    pool: RunnerPool, models: Path
) -> None:
    # Defaults given with Input(...) still apply (the loaded stand-in keeps them).
    stream = await pool.predict(spec(models, "brokenstream"), "p-tb-1", {})
    assert stream.status == "failed" and stream.error == "'no step 2'"
    assert "Traceback (most recent call last):\n" in stream.logs
    assert ', in check\n    raise KeyError(f"no step {step}")\n' in stream.logs
    assert stream.logs.endswith("KeyError: 'no step 2'\n")

    coro = await pool.predict(spec(models, "brokenasync"), "p-tb-2", {})
    assert coro.status == "failed" and coro.error == "async went wrong"
    assert 'raise RuntimeError(f"{word} went wrong")\n' in coro.logs

    agen = await pool.predict(spec(models, "brokenagen"), "p-tb-3", {})
    assert agen.status == "failed" and agen.error == "disk 1 gone"
    assert 'raise OSError(f"disk {n} gone")\n' in agen.logs

    trainer = spec(models, "hello", key="hello-train", mode="train", train_ref="train.py:train")
    failed = await pool.predict(trainer, "t-tb-1", {"rounds": -1})
    assert failed.status == "failed" and failed.error == "rounds must not be negative"
    assert "training -1 rounds\nTraceback (most recent call last):\n" in failed.logs
    assert "model_entry" not in failed.logs + stream.logs + coro.logs + agen.logs
    # A cancelled or successful run prints no traceback.
    trained = await pool.predict(trainer, "t-tb-2", {"rounds": 2})
    assert weights_text(trained.output) == "trained 2" and "Traceback" not in trained.logs


async def test_setup_failure_raises_boot_error_with_the_setup_error(
    pool: RunnerPool, models: Path
) -> None:
    with pytest.raises(BootError) as raised:
        await pool.predict(spec(models, "badsetup"), "p-badsetup", {})

    assert str(raised.value) == "RuntimeError: setup exploded"
    assert "RuntimeError: setup exploded" in raised.value.logs
    # The boot's output comes with it. (What the model printed while loading is usually
    # there too, but coglet 0.23.1 drops it now and then when setup fails this fast.)
    assert "[coglet::worker_bridge] Loading predictor" in raised.value.logs
    assert pool.warm_keys() == []


async def test_a_worker_that_dies_while_booting_is_a_boot_error(
    pool: RunnerPool, models: Path, tmp_path: Path
) -> None:
    # coglet starts its worker with the `python` on PATH; this one lacks coglet entirely.
    bindir = tmp_path / "bin"
    bindir.mkdir()
    (bindir / "python").symlink_to(Path(sys.base_prefix) / "bin" / "python3")
    launcher = bindir / "venv-python"
    launcher.write_text(f'#!/bin/sh\nexec "{sys.executable}" "$@"\n')
    launcher.chmod(0o755)
    tmp_path.chmod(0o755)  # the sandbox binds it as the model's environment: its uid reads it

    with pytest.raises(BootError) as raised:
        await pool.predict(spec(models, "hello", python=launcher), "p-noworker", {})

    # Noticed as the worker's exit, not as the boot timeout running out.
    assert "worker process exited" in str(raised.value)
    assert "No module named 'coglet'" in raised.value.logs


async def test_cancel_mid_run_ends_canceled_and_keeps_the_process(
    pool: RunnerPool, models: Path
) -> None:
    chatty = spec(models, "chatty")
    recorder = Recorder()
    run = asyncio.create_task(
        pool.predict(chatty, "p-cancel", {"steps": 50}, on_update=recorder.on_update)
    )
    await eventually(
        lambda: any("step 1" in u.logs for u in recorder.updates), "the run to log step 1", 30
    )
    pid = pool.pid("chatty")
    await pool.cancel("p-cancel")
    result = await run

    assert result.status == "canceled"
    assert "step 1" in result.logs
    assert pool.pid("chatty") == pid
    after = await pool.predict(chatty, "p-after-cancel", {"steps": 1})
    assert after.status == "succeeded"
    assert pool.pid("chatty") == pid


async def test_cancelling_the_task_cancels_the_run_and_keeps_the_process(
    pool: RunnerPool, models: Path
) -> None:
    chatty = spec(models, "chatty")
    recorder = Recorder()
    run = asyncio.create_task(
        pool.predict(
            chatty,
            "p-task-cancel",
            {"steps": 50},
            on_booted=recorder.on_booted,
            on_update=recorder.on_update,
        )
    )
    await eventually(
        lambda: any("step 1" in u.logs for u in recorder.updates), "the run to log step 1", 30
    )
    pid = pool.pid("chatty")
    run.cancel()
    with pytest.raises(asyncio.CancelledError):
        await run

    # The run stopped in coglet: the process (one run at a time) takes the next one at once.
    after = await pool.predict(chatty, "p-after-task-cancel", {"steps": 1})
    assert after.status == "succeeded"
    assert pool.pid("chatty") == pid


async def test_a_hung_model_is_killed_and_restarted_when_its_task_is_cancelled(
    pool: RunnerPool, models: Path
) -> None:
    hang = spec(models, "hang")
    recorder = Recorder()
    run = asyncio.create_task(
        pool.predict(
            hang,
            "p-hang",
            {"seconds": 60},
            on_booted=recorder.on_booted,
            on_update=recorder.on_update,
        )
    )
    await eventually(
        lambda: any("sleeping" in u.logs for u in recorder.updates),
        "the model to start sleeping",
        30,
    )
    pid = pool.pid("hang")
    assert pid is not None
    run.cancel()
    with pytest.raises(asyncio.CancelledError):
        await run

    # cancel_grace is 1 s: then the process is killed rather than left holding the slot (its
    # sleep has 60 s to go, far past the wait below).
    await eventually(lambda: gone(pid), f"process {pid} to be killed")
    after = await pool.predict(hang, "p-after-hang", {"seconds": 0.01})
    assert after.status == "succeeded"
    assert pool.pid("hang") not in (None, pid)


@pytest.mark.integration  # starts coglet processes itself
async def test_lru_eviction_keeps_at_most_max_warm_and_spares_busy_processes(
    models: Path,
) -> None:
    pool = RunnerPool(PoolConfig(max_warm=1, boot_timeout=30))
    try:
        await pool.predict(spec(models, "hello"), "p-lru-1", {})
        hello_pid = pool.pid("hello")
        assert hello_pid is not None
        await pool.predict(spec(models, "broken"), "p-lru-2", {})
        assert pool.warm_keys() == ["broken"]
        await eventually(lambda: gone(hello_pid), f"process {hello_pid} to exit")

        # A busy process is never evicted: chatty keeps running while hello boots beside it.
        # Long enough to outlast hello's boot even on a loaded machine.
        chatty = asyncio.create_task(pool.predict(spec(models, "chatty"), "p-lru-3", {"steps": 40}))
        await eventually(lambda: pool.pid("chatty") is not None, "a chatty process")
        chatty_pid = pool.pid("chatty")
        hello = await pool.predict(spec(models, "hello"), "p-lru-4", {})
        assert hello.status == "succeeded"
        assert chatty_pid is not None and not gone(chatty_pid)
        assert (await chatty).status == "succeeded"
        assert len(pool.warm_keys()) == 1
    finally:
        await pool.close()


async def test_a_killed_coglet_process_is_replaced(pool: RunnerPool, models: Path) -> None:
    hello = spec(models, "hello")
    await pool.predict(hello, "p-before-kill", {})
    pid = pool.pid("hello")
    assert pid is not None
    # The whole process group: pool.pid is the sandbox's bwrap, whose death reaches coglet
    # a moment later (through the parent-death signals of the sandbox's init).
    os.killpg(pid, signal.SIGKILL)

    result = await pool.predict(hello, "p-after-kill", {"name": "again"})

    assert result.output == "hello again"
    assert pool.pid("hello") not in (None, pid)


async def test_train_mode_runs_the_train_function(pool: RunnerPool, models: Path) -> None:
    trainer = spec(models, "hello", key="hello-train", mode="train", train_ref="train.py:train")
    result = await pool.predict(trainer, "t-1", {"rounds": 3})

    assert result.status == "succeeded"
    # A trainer's str output comes back as a file of it: Cog saves it as the weights.
    assert weights_text(result.output) == "trained 3"
    assert "training 3 rounds" in result.logs


@pytest.mark.integration  # starts coglet processes itself
async def test_close_leaves_no_child_processes(models: Path) -> None:
    pool = RunnerPool(PoolConfig(boot_timeout=30))
    await pool.predict(spec(models, "hello"), "p-close-1", {})
    await pool.predict(spec(models, "broken"), "p-close-2", {})
    pids = [p for p in (pool.pid("hello"), pool.pid("broken")) if p is not None]
    assert len(pids) == 2
    family = pids + [child for pid in pids for child in children(pid)]
    assert len(family) == 4  # each coglet has its one worker

    await pool.close()

    await eventually(lambda: all(gone(pid) for pid in family), f"processes {family} to exit")
    assert pool.warm_keys() == []


async def test_concurrent_runs_of_one_key_get_a_process_each(
    pool: RunnerPool, models: Path
) -> None:
    whoami = spec(models, "whoami")
    # One process runs one prediction at a time: two at once need two processes.
    first, second = await asyncio.gather(
        pool.predict(whoami, "p-a", {"hold": 1.0}),
        pool.predict(whoami, "p-b", {"hold": 1.0}),
    )
    assert first.status == second.status == "succeeded"
    assert first.output != second.output
    assert {"whoami", "whoami#1"} <= set(pool.warm_keys())
    # Alone again, a run goes to the first process.
    alone = await pool.predict(whoami, "p-c", {})
    assert alone.output == first.output


async def test_warm_boots_ahead_once_and_exclusive_keeps_predictions_off_the_process(
    pool: RunnerPool, models: Path
) -> None:
    hello = spec(models, "hello")
    pid = await pool.warm(hello)
    assert pool.pid("hello") == pid
    assert await pool.warm(hello) == pid  # warm already: no second boot

    order: list[str] = []

    async def booted() -> None:
        order.append("prediction handed over")

    async with pool.exclusive(hello) as process:
        assert process.pid == pid
        waiting = asyncio.create_task(
            pool.predict(hello, "p-excl", {"name": "x"}, on_booted=booted)
        )
        # A round trip to coglet gives the waiting prediction every chance to get in.
        assert (await pool.health(process))["status"] == "READY"
        order.append("released")
    result = await waiting
    assert result.status == "succeeded" and result.output == "hello x"
    assert order == ["released", "prediction handed over"]
    assert pool.pid("hello") == pid


MODEL_DIRS = Path(__file__).parent / "models"


def failures(version: str, state: str) -> float:
    value = REGISTRY.get_sample_value(
        "replicant_model_process_failures_total", {"version": version, "state": state}
    )
    return value or 0.0


async def test_a_model_unhealthy_from_the_start_fails_its_boot_saying_why(
    pool: RunnerPool,
) -> None:
    """Its sync healthcheck() raises: the boot ends at once with the model's reason, instead
    of waiting out the setup timeout."""
    before = failures("unhealthy-boot", "unhealthy")
    with pytest.raises(BootError) as raised:
        await pool.predict(spec(MODEL_DIRS, "unhealthy-boot"), "hc-boot", {})
    assert "The model reported itself unhealthy" in str(raised.value)
    assert "the GPU is gone" in str(raised.value)
    assert "Setup complete" in raised.value.logs
    assert failures("unhealthy-boot", "unhealthy") == before + 1
    assert "unhealthy-boot" not in pool.warm_keys()


async def test_a_process_whose_async_healthcheck_fails_is_replaced_before_its_next_run(
    pool: RunnerPool,
) -> None:
    model = spec(MODEL_DIRS, "unhealthy")
    before = failures("unhealthy", "unhealthy")
    assert (await pool.predict(model, "hc-1", {"mode": "sick"})).output == "sick"
    sick = pool.pid("unhealthy")
    assert sick is not None

    after = await pool.predict(model, "hc-2", {"mode": "ok"})

    assert (after.status, after.output) == ("succeeded", "ok")
    assert pool.pid("unhealthy") not in (None, sick)
    assert failures("unhealthy", "unhealthy") == before + 1
    assert (await pool.predict(model, "hc-3", {})).output == "ok"  # healthy: kept
    assert failures("unhealthy", "unhealthy") == before + 1


async def test_the_run_on_a_process_found_unhealthy_ends_saying_why(pool: RunnerPool) -> None:
    model = spec(MODEL_DIRS, "unhealthy", concurrency=2)
    long = asyncio.create_task(pool.predict(model, "hc-long", {"seconds": 60}))
    # The long run is in the process before it turns sick (else it would run on the next).
    await eventually(lambda: pool.has_started("hc-long"), "hc-long to start", timeout=60)
    assert (await pool.predict(model, "hc-sick", {"mode": "sick"})).output == "sick"

    after = await pool.predict(model, "hc-next", {})

    assert after.output == "ok"
    ended = await long
    assert ended.status == "failed"
    assert ended.error is not None and "reported itself unhealthy" in ended.error
