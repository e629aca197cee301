"""What the run activities of predictions and trainings share: the version, heartbeats, one
run on the pool with staged input files as local paths and a timeout that counts the model's
own run, what one attempt reports as it runs (``LiveRun``), and the ladder of how an attempt
ends (``attempt``)."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Protocol, TypeVar

from sqlalchemy.engine import Engine
from sqlmodel import Session
from temporalio import activity
from temporalio.exceptions import ApplicationError

from activities.files import WithStagedFiles, materialized_input
from activities.throttle import LatestWriter
from activities.webhooks import LiveWebhooks
from replicant.cogmodel import file_inputs
from replicant.contracts import ErrorType
from replicant.envs import EnvBuildError, env_ready
from replicant.inputfacts import input_facts
from replicant.queueing import BOOTING, BUILDING, WAITING_DELAY
from replicant.runner import (
    BootError,
    CogPrediction,
    ModelRunner,
    OnBooted,
    OnUpdate,
    RunnerSpec,
)
from replicant.runstate import RunState
from replicant.sealing import Sealer, UnsealError
from replicant.storage import ObjectStore
from replicant.tables import Version
from replicant.versions import ensure_version_env, version_python

# Records what a run holding its slot waits for (replicant/queueing.py).
WaitingFor = Callable[[str], object]

HEARTBEAT_INTERVAL = 1.0


async def tell_workflow_started() -> None:
    """Signal ``started`` to the run's workflow, so that its ``status`` query and its
    ``ReplicantStatus`` say ``processing`` too (best effort: the read model has it).

    Not from a run in its workflow's own task (a local activity): a signal that arrives
    while that task is open fails the task's completion, and the local activity's result
    with it, so the run would be made again."""
    info = activity.info()
    if info.is_local:
        return
    with contextlib.suppress(Exception):
        handle = activity.client().get_workflow_handle(info.workflow_id or "")
        await handle.signal("started")


async def heartbeat_forever() -> None:
    """Heartbeat every ``HEARTBEAT_INTERVAL`` until cancelled (run it as a task)."""
    # Heartbeats deliver cancellation and let Temporal notice a dead worker within seconds.
    # The first waits an interval: a run shorter than that costs no heartbeat round trip.
    if activity.info().is_local:
        return  # a local activity's workflow task heartbeats instead
    while True:
        await asyncio.sleep(HEARTBEAT_INTERVAL)
        activity.heartbeat()


def load_version(engine: Engine, version_id: str) -> Version:
    """The version a run needs; a non-retryable ``VersionNotFound`` when it is gone."""
    with Session(engine) as session:
        version = session.get(Version, version_id)
    if version is None:
        raise ApplicationError(
            f"Version {version_id} does not exist",
            type=ErrorType.VERSION_NOT_FOUND,
            non_retryable=True,
        )
    return version


class TimedRequest(WithStagedFiles, Protocol):
    """A prediction's or training's request: staged files, a timeout in seconds and Cog's
    per-request context."""

    @property
    def timeout(self) -> float: ...
    @property
    def context(self) -> dict[str, str]: ...


async def run_model(
    pool: ModelRunner,
    spec: RunnerSpec,
    req: TimedRequest,
    store: ObjectStore | None,
    *,
    on_booted: OnBooted,
    on_update: OnUpdate,
    unseal: Callable[[dict[str, Any]], dict[str, Any]],
    state: RunState | None = None,
) -> CogPrediction:
    """Run ``req`` on the pool and return its terminal state; ``TimeoutError`` when the model
    runs longer than ``req.timeout`` (counted from the hand-over, not the queue or the boot).
    ``unseal`` opens the sealed ``Secret`` inputs (replicant/sealing.py) at the last moment,
    so their plain value is in this process's memory only; it raises ``UnsealError``.
    ``state``: the run's ``RunState``, which the pool reports to and settles."""
    # Staged input files become local paths for the model, removed after the run.
    async with (
        asyncio.timeout(None) as deadline,
        materialized_input(store, req, model_file_inputs(spec)) as model_input,
    ):

        async def booted() -> None:
            deadline.reschedule(asyncio.get_running_loop().time() + req.timeout)
            await on_booted()

        return await pool.predict(
            spec,
            req.id,
            unseal(model_input),
            on_update=on_update,
            on_booted=booted,
            context=req.context,  # Cog's per-request context
            state=state,
        )


def model_file_inputs(spec: RunnerSpec) -> frozenset[str]:
    """The inputs of the entry point ``spec`` runs that are ``cog.File`` ones."""
    ref = spec.train_ref if spec.mode == "train" else spec.predict_ref
    return file_inputs(spec.model_dir, ref) if ref else frozenset()


async def ensure_env(version: Version, waiting: WaitingFor | None = None) -> None:
    """Wait until the version's environment is built: a built-in model's may still be building
    (a minute of pip), and meanwhile its run stays `starting` (``waiting`` records why).
    Raises ``EnvBuildError``."""
    if not env_ready(version_python(version)):
        if waiting is not None:
            await asyncio.to_thread(waiting, BUILDING)
        await asyncio.to_thread(ensure_version_env, version)


async def _booting_after(delay: float, waiting: WaitingFor) -> None:
    """Record that the run waits for its model to boot, unless it booted within ``delay``."""
    await asyncio.sleep(delay)
    await asyncio.to_thread(waiting, BOOTING)


class LiveRun:
    """One attempt of a run activity, a prediction's or a training's: its state (``state``,
    the run's one ``RunState``, handed to the pool, whose ``Run`` reports to it and settles
    its end: when the model started, what it reported last, how the run ended),
    ``processing`` in the read model, throttled progress writes, and the live webhooks
    (``hooks``) when the webhook wants them. The attempt ends once: the first ``close``
    records the end (ending ``state`` too, unless the pool has), a later one changes
    nothing.

    The two differ in the order of ``processing`` and the ``start`` webhook, which is
    ``processing_delay``: a prediction records ``processing`` in the background that long
    after the boot (a faster run never writes it: one write, not two), while a training
    (``None``) records it before its ``start`` webhook goes out. ``live_output`` False keeps
    the model's output out of the live webhooks (a trainer's output is not the training's).
    """

    def __init__(
        self,
        run_id: str,
        hooks: LiveWebhooks | None,
        *,
        interval: float,
        mark_processing: Callable[[datetime], object],
        write_progress: Callable[[CogPrediction], object],
        processing_delay: float | None,
        live_output: bool = True,
    ) -> None:
        self.hooks = hooks
        self.state = RunState(run_id)
        self._mark = mark_processing
        self._write_progress = write_progress
        self._delay = processing_delay
        self._live_output = live_output
        self._processing: asyncio.Task[None] | None = None
        self._progress = LatestWriter(interval, self._write)
        self._closed = False

    @property
    def started_at(self) -> datetime | None:
        """When the model started the run (None: it has not)."""
        return self.state.started_at

    async def on_booted(self) -> None:
        started_at = self.state.start()
        if self._delay is None:
            await self._mark_processing()
        else:
            self._processing = asyncio.create_task(self._mark_processing_in(self._delay))
        if self.hooks is not None:
            self.hooks.started(started_at)

    async def _mark_processing_in(self, delay: float) -> None:
        await asyncio.sleep(delay)
        await self._mark_processing()

    async def _mark_processing(self) -> None:
        assert self.started_at is not None
        await asyncio.to_thread(self._mark, self.started_at)
        await tell_workflow_started()

    async def _processing_now(self) -> None:
        """``processing`` goes to the read model before the first output or logs do."""
        task = self._processing
        if task is not None and not task.done() and task.cancel():
            with contextlib.suppress(asyncio.CancelledError):
                await task
            if task.cancelled():
                await self._mark_processing()

    async def on_update(self, state: CogPrediction) -> None:
        self.state.report(state)
        if self.hooks is not None:
            output = state.output if self._live_output else self.hooks.row.output
            self.hooks.progress(state.logs, output, state.metrics)
        await self._processing_now()
        await self._progress.offer(state)

    async def _write(self, state: CogPrediction) -> None:
        await asyncio.to_thread(self._write_progress, state)

    async def close(
        self,
        final_write: Callable[[], object] | None,
        *,
        status: str,
        logs: str | None,
        output: Any = None,
        error: str | None = None,
        metrics: dict[str, Any] | None = None,
    ) -> None:
        """End the attempt ``status``: drop pending writes, make ``final_write`` (the
        terminal state), and deliver the last live events, with the ``metrics`` the model
        recorded (the workflow sends ``completed`` after this). Only the first end of the
        attempt does so."""
        if self._closed:
            return
        self._closed = True
        self.state.end(
            CogPrediction(
                status=status, output=output, logs=logs or "", error=error, metrics=metrics or {}
            )
        )
        await self._stop_writes()  # the final write records started_at
        if final_write is not None:
            await asyncio.to_thread(final_write)
        if self.hooks is not None:
            # The last state goes out too (as `output`/`logs`, still `processing`).
            await self.hooks.end(
                canceled=status == "canceled", logs=logs, output=output, metrics=metrics
            )

    def abort(self) -> None:
        """The activity is cancelled before it could close: stop the live webhooks."""
        if self.hooks is not None:
            self.hooks.abort()

    async def abandon(self) -> None:
        """The attempt ends without the run: stop its writes and live webhooks and record
        nothing (a terminal state would outlive the attempt that runs it next)."""
        await self._stop_writes()
        self.abort()

    async def _stop_writes(self) -> None:
        """Drop the pending progress write and the delayed ``processing`` write."""
        await self._progress.stop()
        if self._processing is not None:
            self._processing.cancel()


def cancel_was_requested() -> bool:
    """Whether the workflow asked to cancel the run (a user's cancel, a deadline), rather
    than Temporal or the worker ending this attempt alone."""
    details = activity.cancellation_details()
    return details is None or details.cancel_requested


class RunRequest(TimedRequest, Protocol):
    """A run's request as an attempt needs it: its id, version and hardware too."""

    @property
    def id(self) -> str: ...
    @property
    def version(self) -> str: ...
    @property
    def hardware(self) -> str: ...


Ended = TypeVar("Ended")
Ended_co = TypeVar("Ended_co", covariant=True)


class End(Protocol[Ended_co]):
    """How a kind records an attempt's end: ``end("failed", error=..., logs=...)``."""

    def __call__(
        self, status: Any, *, error: str | None = None, logs: str | None = None
    ) -> Awaitable[Ended_co]: ...


@dataclass(frozen=True)
class Placed:
    """Where an attempt runs: the pool, the runner spec of the version, and the object
    store of its staged input files (None: it has none)."""

    pool: ModelRunner
    spec: RunnerSpec
    store: ObjectStore | None


async def attempt(
    req: RunRequest,
    version: Version,
    placed: Placed,
    run: LiveRun,
    end: End[Ended],
    *,
    secret_key: str,
    noun: str,
    component: str = "Input",
    stopping: Callable[[], bool] = lambda: False,
    waiting: WaitingFor | None = None,
) -> CogPrediction | Ended:
    """One attempt of a run activity, a prediction's or a training's: the model's terminal
    state, or the end recorded by ``end`` (a timeout, a seal that does not open, a failed
    setup or environment). Cancelled, it records ``canceled`` when the workflow asked (a
    user's cancel, a deadline) and the worker is not ``stopping``; otherwise only this
    attempt is over (its heartbeat timed out, or the worker stops): it records nothing, and
    the next attempt runs the model. ``waiting`` records what the run, holding its slot,
    waits for before it starts (replicant/queueing.py)."""
    facts = input_facts(version.id, version.openapi_schema, component)
    sealer = Sealer(secret_key, req.id, req.version)
    heartbeats = asyncio.create_task(heartbeat_forever())
    booting: asyncio.Task[None] | None = None

    async def booted() -> None:
        if booting is not None:
            booting.cancel()
        await run.on_booted()

    try:
        await ensure_env(version, waiting)
        if waiting is not None:
            booting = asyncio.create_task(_booting_after(WAITING_DELAY, waiting))
        return await run_model(
            placed.pool,
            placed.spec,
            req,
            placed.store,
            on_booted=booted,
            on_update=run.on_update,
            # Secret inputs are opened at the last moment (replicant/sealing.py).
            unseal=lambda payload: facts.map_secrets(payload, sealer.unseal_value),
            state=run.state,
        )
    except TimeoutError:
        return await end("failed", error=f"{noun} timed out after {req.timeout:g} seconds")
    except UnsealError as err:  # another attempt would fail the same way
        return await end("failed", error=str(err))
    except BootError as err:
        # A model whose setup() fails will fail again: record it rather than retry.
        return await end("failed", error=f"Model setup failed: {err}", logs=err.logs)
    except EnvBuildError as err:
        return await end("failed", error=f"The model's environment could not be built: {err}")
    except asyncio.CancelledError:
        if cancel_was_requested() and not stopping():
            await asyncio.shield(end("canceled"))
        else:
            await asyncio.shield(run.abandon())
        raise
    finally:
        heartbeats.cancel()
        if booting is not None:
            booting.cancel()
