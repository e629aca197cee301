"""What the run activities of predictions and trainings share: the version, heartbeats, and one
run on the pool with staged input files as local paths and a timeout that counts the model's
own run."""

from __future__ import annotations

import asyncio
from typing import Protocol

from sqlalchemy.engine import Engine
from sqlmodel import Session
from temporalio import activity
from temporalio.exceptions import ApplicationError

from activities.files import WithStagedFiles, materialized_input
from replicant.contracts import ErrorType
from replicant.envs import env_ready
from replicant.runner import CogPrediction, ModelRunner, OnBooted, OnUpdate, RunnerSpec
from replicant.storage import ObjectStore
from replicant.tables import Version
from replicant.versions import ensure_version_env, version_python

HEARTBEAT_INTERVAL = 1.0


async def heartbeat_forever() -> None:
    """Heartbeat every ``HEARTBEAT_INTERVAL`` until cancelled (run it as a task)."""
    # Heartbeats deliver cancellation and let Temporal notice a dead worker within seconds.
    # The first waits an interval: a run shorter than that costs no heartbeat round trip.
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
    """A prediction's or training's request: staged files and a timeout in seconds."""

    @property
    def timeout(self) -> float: ...


async def run_model(
    pool: ModelRunner,
    spec: RunnerSpec,
    req: TimedRequest,
    store: ObjectStore | None,
    *,
    on_booted: OnBooted,
    on_update: OnUpdate,
) -> CogPrediction:
    """Run ``req`` on the pool and return its terminal state; ``TimeoutError`` when the model
    runs longer than ``req.timeout`` (counted from the hand-over, not the queue or the boot)."""
    # Staged input files become local paths for the model, removed after the run.
    async with (
        asyncio.timeout(None) as deadline,
        materialized_input(store, req) as model_input,
    ):

        async def booted() -> None:
            deadline.reschedule(asyncio.get_running_loop().time() + req.timeout)
            await on_booted()

        return await pool.predict(spec, req.id, model_input, on_update=on_update, on_booted=booted)


async def ensure_env(version: Version) -> None:
    """Wait until the version's environment is built: a built-in model's may still be building
    (a minute of pip), and meanwhile its run stays `starting`. Raises ``EnvBuildError``."""
    if not env_ready(version_python(version)):
        await asyncio.to_thread(ensure_version_env, version)
