"""Activities of a prediction: every side effect of ``PredictionWorkflow``.

The run activity writes ``processing``, live logs and output, and the terminal state to the
read model itself, so a fast prediction costs one activity round trip, not one per status.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
from datetime import datetime
from pathlib import Path
from typing import Any

from cachetools import TTLCache
from sqlalchemy.engine import Engine
from sqlmodel import Session
from temporalio import activity
from temporalio.exceptions import ApplicationError

from activities.files import materialized_input, stored_output, uploads_outputs
from activities.heartbeat import heartbeat_forever
from activities.throttle import LatestWriter
from activities.webhooks import LiveWebhooks, WebhookActivities
from replicant import readmodel
from replicant.cogmodel import CogConfigError, load_cog_config
from replicant.contracts import (
    ActivityName,
    ErrorType,
    FinishPrediction,
    PredictionRef,
    PredictionRequest,
    RunOutcome,
)
from replicant.objectkeys import prediction_prefix
from replicant.runner import BootError, CogPrediction, ModelRunner, RunnerSpec
from replicant.storage import ObjectStore, outward_output
from replicant.tables import Version
from replicant.timeutil import utcnow
from replicant.versions import version_python
from replicant.weights import is_store_ref

log = logging.getLogger("replicant.activities")

# Live logs and output reach the read model at most this often (streams: time to first
# token matters, and SSE clients read the read model).
PROGRESS_INTERVAL = 0.5
STREAM_PROGRESS_INTERVAL = 0.1
# A run records ``processing`` this long after its model starts, unless it has ended (or
# reported output) by then: a fast prediction then costs one read-model write, not two.
PROCESSING_DELAY = 0.1
# Versions are immutable: a worker keeps the ones it runs for a while (a deleted version
# is refused by the API at once; a run already queued for it may still start in this time).
VERSION_CACHE_SECONDS = 60.0


@functools.lru_cache(maxsize=1024)
def model_concurrency(model_dir: Path) -> int:
    """cog.yaml's ``concurrency.max`` of a version's (immutable) model directory; 1 when the
    file cannot be read."""
    try:
        return load_cog_config(model_dir).max_concurrency
    except (CogConfigError, OSError):
        return 1


def runner_spec(version: Version) -> RunnerSpec:
    """How to run a version: its directory, environment and (for fine-tunes) weights."""
    weights = version.weights_url
    # Stored weights are materialized and served by the pool; a URL goes to the model as is.
    stored = is_store_ref(weights)
    env = {"COG_WEIGHTS": weights} if weights and not stored else {}
    key = version.id if not weights else f"{version.id}+weights"
    return RunnerSpec(
        key=key,
        model_dir=Path(version.model_dir),
        python=version_python(version),
        predict_ref=version.predict_ref,
        train_ref=version.train_ref,
        env=env,
        weights_ref=weights if stored else None,
        concurrency=model_concurrency(Path(version.model_dir)),
        # None: the pool sets its upload sink; "": files come back as data URIs, in order.
        upload_url=None if uploads_outputs(version.openapi_schema) else "",
    )


class PredictionActivities:
    """The activities, bound to one database and one pool of model processes."""

    def __init__(
        self,
        engine: Engine,
        pool: ModelRunner | None = None,
        webhooks: WebhookActivities | None = None,
        store: ObjectStore | None = None,
    ) -> None:
        self.engine = engine
        self.pool = pool
        self.webhooks = webhooks
        self.store = store
        self._versions: TTLCache[str, Version] = TTLCache(maxsize=1024, ttl=VERSION_CACHE_SECONDS)

    @activity.defn(name=ActivityName.RECORD_PREDICTION)
    async def record_prediction(self, req: PredictionRequest) -> None:
        """Write the read-model row of a prediction started outside the API."""
        await asyncio.to_thread(readmodel.insert_prediction, self.engine, req)

    @activity.defn(name=ActivityName.FINISH_PREDICTION)
    async def finish_prediction(self, done: FinishPrediction) -> None:
        """Record a terminal state decided by the workflow (cancel, lost worker)."""
        await asyncio.to_thread(
            readmodel.finish_prediction,
            self.engine,
            done.id,
            status=done.status,
            error=done.error,
            completed_at=done.completed_at or utcnow(),
        )

    @activity.defn(name=ActivityName.REMOVE_PREDICTION_DATA)
    async def remove_prediction_data(self, ref: PredictionRef) -> None:
        """Retention is over: remove the prediction's input and output."""
        await asyncio.to_thread(readmodel.remove_data, self.engine, ref.id)
        files = 0
        if self.store is not None:  # staged inputs and output files; their URLs then 404
            files = await asyncio.to_thread(self.store.delete_prefix, prediction_prefix(ref.id))
        log.info("event=data_removed prediction=%s files=%d", ref.id, files)

    async def _version(self, version_id: str) -> Version:
        version = self._versions.get(version_id)
        if version is None:
            version = await asyncio.to_thread(self._load_version, version_id)
            self._versions[version_id] = version
        return version

    def _load_version(self, version_id: str) -> Version:
        with Session(self.engine) as session:
            version = session.get(Version, version_id)
        if version is None:
            raise ApplicationError(
                f"Version {version_id} does not exist",
                type=ErrorType.VERSION_NOT_FOUND,
                non_retryable=True,
            )
        return version

    @activity.defn(name=ActivityName.RUN_PREDICTION)
    async def run_prediction(self, req: PredictionRequest) -> RunOutcome:
        """Run the model in a warm coglet process and record everything it reports."""
        if self.pool is None:
            raise RuntimeError("this worker has no model runners")
        version = await self._version(req.version)
        hooks = await self.webhooks.live(req) if req.webhook and self.webhooks else None
        run = _Run(self.engine, req, hooks)
        heartbeats = asyncio.create_task(heartbeat_forever())
        try:
            # Staged input files become local paths for the model, removed after the run.
            async with (
                asyncio.timeout(None) as deadline,
                materialized_input(self.store, req) as model_input,
            ):
                run.deadline = deadline
                result = await self.pool.predict(
                    runner_spec(version),
                    req.id,
                    model_input,
                    on_update=run.on_update,
                    on_booted=run.on_booted,
                )
        except TimeoutError:
            return await run.finish(
                "failed", error=f"Prediction timed out after {req.timeout:g} seconds"
            )
        except BootError as err:
            # A model whose setup() fails will fail again: record it rather than retry.
            return await run.finish("failed", error=f"Model setup failed: {err}", logs=err.logs)
        except asyncio.CancelledError:
            await asyncio.shield(run.finish("canceled"))
            raise
        finally:
            heartbeats.cancel()
        output = await stored_output(self.pool.upload, req.id, result.output)
        if self.store is not None:  # S3: presigned URLs of the store instead of the API's
            output = outward_output(self.store, output)
        return await run.finish(result.status, error=result.error, output=output, logs=result.logs)


class _Run:
    """State of one attempt of the run activity: throttled progress writes."""

    def __init__(
        self, engine: Engine, req: PredictionRequest, hooks: LiveWebhooks | None = None
    ) -> None:
        self.engine = engine
        self.req = req
        self.hooks = hooks
        self.started_at: datetime | None = None
        self.deadline: asyncio.Timeout | None = None
        self._processing: asyncio.Task[None] | None = None
        self._progress = LatestWriter(
            STREAM_PROGRESS_INTERVAL if req.stream else PROGRESS_INTERVAL, self._write
        )

    async def on_booted(self) -> None:
        self.started_at = utcnow()
        if self.deadline is not None:
            # The timeout counts the model's run, not the queue or the boot.
            self.deadline.reschedule(asyncio.get_running_loop().time() + self.req.timeout)
        # A `start` webhook says `processing`: a GET right after it must say so too.
        delay = 0.0 if self.hooks is not None else PROCESSING_DELAY
        self._processing = asyncio.create_task(self._mark_processing(delay))
        if self.hooks is not None:
            self.hooks.started(self.started_at)

    async def _mark_processing(self, delay: float) -> None:
        await asyncio.sleep(delay)
        assert self.started_at is not None
        await asyncio.to_thread(
            readmodel.mark_processing, self.engine, self.req.id, self.started_at
        )

    async def _processing_now(self) -> None:
        """``processing`` goes to the read model before the first output or logs do."""
        task = self._processing
        if task is not None and not task.done() and task.cancel():
            with contextlib.suppress(asyncio.CancelledError):
                await task
            if task.cancelled():
                await self._mark_processing(0)

    async def on_update(self, state: CogPrediction) -> None:
        if self.hooks is not None:
            self.hooks.progress(state.logs, state.output)
        await self._processing_now()
        await self._progress.offer(state)

    async def _write(self, state: CogPrediction) -> None:
        await asyncio.to_thread(
            readmodel.record_progress, self.engine, self.req.id, state.logs, state.output
        )

    async def finish(
        self,
        status: Any,
        *,
        error: str | None = None,
        output: Any = None,
        logs: str | None = None,
    ) -> RunOutcome:
        await self._progress.stop()
        if self._processing is not None:  # the terminal write below records started_at
            self._processing.cancel()
        completed_at = utcnow()
        await asyncio.to_thread(
            readmodel.finish_prediction,
            self.engine,
            self.req.id,
            status=status,
            completed_at=completed_at,
            error=error,
            output=output,
            logs=logs,
            started_at=self.started_at,
            created_at=self.req.created_at,
        )
        if self.hooks is not None:
            # The last state goes out too (as `output`/`logs`, still `processing`).
            await self.hooks.end(canceled=status == "canceled", logs=logs, output=output)
        return RunOutcome(
            status=status, error=error, started_at=self.started_at, completed_at=completed_at
        )
