"""Activities of a prediction: every side effect of ``PredictionWorkflow``.

The run activity writes ``processing``, live logs and output, and the terminal state to the
read model itself, so a fast prediction costs one activity round trip, not one per status.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any, cast

from cachetools import TTLCache
from sqlalchemy.engine import Engine
from sqlmodel import Session
from temporalio import activity

from activities.files import stored_output, uploads_outputs
from activities.running import LiveRun, Placed, attempt, load_version
from activities.webhooks import WebhookActivities
from replicant import readmodel
from replicant.cogmodel import CogConfigError, load_cog_config, output_streams
from replicant.contracts import (
    ActivityName,
    FinishPrediction,
    PredictionRef,
    PredictionRequest,
    RunOutcome,
    Status,
    WorkflowRun,
)
from replicant.inputfacts import input_facts
from replicant.objectkeys import prediction_prefix
from replicant.runner import CogPrediction, ModelRunner, RunnerSpec
from replicant.settings import Settings
from replicant.storage import ObjectStore, outward_output
from replicant.tables import TERMINAL_STATUSES, Prediction, Version
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


def model_cpu_threads(settings: Settings) -> int:
    """Threads one model process may use: the CPU's share of one slot of the cpu SKU."""
    if settings.model_cpu_threads > 0:
        return settings.model_cpu_threads
    cpus = len(os.sched_getaffinity(0))
    slots = settings.hardware.get("cpu") or sum(settings.hardware.values()) or 1
    return max(1, cpus // slots)


@functools.lru_cache(maxsize=1024)
def model_concurrency(model_dir: Path) -> int:
    """cog.yaml's ``concurrency.max`` of a version's (immutable) model directory; 1 when the
    file cannot be read."""
    try:
        return load_cog_config(model_dir).max_concurrency
    except (CogConfigError, OSError):
        return 1


def sku_key(key: str, memory_sku: str | None) -> str:
    """A runner key, of a process of its own on a SKU with a memory limit of its own."""
    return f"{key}@{memory_sku}" if memory_sku else key


def runner_spec(settings: Settings, version: Version, hardware: str | None = None) -> RunnerSpec:
    """How to run a version on ``hardware``: its directory, environment, (for fine-tunes)
    weights, and the memory limit of the SKU when it has one of its own."""
    weights = version.weights_url
    # Stored weights are materialized and served by the pool; a URL goes to the model as is.
    stored = is_store_ref(weights)
    threads = str(model_cpu_threads(settings))
    # Models read REPLICANT_CPU_THREADS (onnxruntime); OpenMP-based libraries read the other.
    env = {"REPLICANT_CPU_THREADS": threads, "OMP_NUM_THREADS": threads}
    if weights and not stored:
        env["COG_WEIGHTS"] = weights
    memory_sku = hardware if hardware in settings.model_memory_limits else None
    key = version.id if not weights else f"{version.id}+weights"
    return RunnerSpec(
        key=sku_key(key, memory_sku),
        model_dir=Path(version.model_dir),
        python=version_python(version),
        predict_ref=version.predict_ref,
        train_ref=version.train_ref,
        env=env,
        weights_ref=weights if stored else None,
        concurrency=model_concurrency(Path(version.model_dir)),
        # None: the pool sets its upload sink; "": files come back as data URIs, in order.
        upload_url=None if uploads_outputs(version.openapi_schema) else "",
        # Known from the schema, so a model that does not stream (a list output such as
        # embeddings included) never costs the webhooks an iterator needs: coglet builds an
        # HTTP client per run that has one and posts its whole logs and output so far on
        # every log line.
        streams_output=output_streams(version.openapi_schema),
        healthcheck=version.healthcheck,
        max_logs=settings.max_log_size,
        max_output=settings.max_output_size,
        memory_sku=memory_sku,
    )


class PredictionActivities:
    """The activities, bound to one database, its settings and one pool of model processes."""

    def __init__(
        self,
        engine: Engine,
        settings: Settings,
        pool: ModelRunner | None = None,
        webhooks: WebhookActivities | None = None,
        store: ObjectStore | None = None,
    ) -> None:
        self.engine = engine
        self.settings = settings
        self.pool = pool
        self.webhooks = webhooks
        self.store = store
        self._versions: TTLCache[str, Version] = TTLCache(maxsize=1024, ttl=VERSION_CACHE_SECONDS)
        # Set when the process stops a deployment instance: a cancel is then the process's,
        # never the user's, and the run leaves the prediction to its next attempt.
        self.stopping = False

    @activity.defn(name=ActivityName.RECORD_PREDICTION)
    async def record_prediction(self, req: PredictionRequest) -> None:
        """Write the read-model row of a prediction started outside the API, its ``Secret``
        inputs redacted as the API's are."""
        await asyncio.to_thread(_insert_redacted, self.engine, req)

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
            prices=self.settings.hardware_prices,
        )

    @activity.defn(name=ActivityName.ABORT_PREDICTION)
    async def abort_prediction(self, done: FinishPrediction) -> RunOutcome:
        """The deadline passed: end the prediction ``aborted`` if it never started, else
        ``canceled``; reports the status it ended with."""
        completed_at = done.completed_at or utcnow()
        status = await asyncio.to_thread(
            readmodel.end_at_deadline,
            self.engine,
            done.id,
            completed_at,
            self.settings.hardware_prices,
        )
        # It may have ended on its own just before: report what the read model says.
        ended = cast(Status, status) if status in TERMINAL_STATUSES else "canceled"
        return RunOutcome(status=ended, completed_at=completed_at)

    @activity.defn(name=ActivityName.REQUEST_WORKFLOW_CANCEL)
    async def request_workflow_cancel(self, run: WorkflowRun) -> None:
        """Ask Temporal to cancel ``run`` as a client's cancel does, so that the workflow can
        close as Canceled: the server refuses a workflow's request to cancel itself, and
        closes a workflow as Canceled only after such a request. Asking twice is harmless."""
        handle = activity.client().get_workflow_handle(run.workflow_id, run_id=run.run_id)
        await handle.cancel()

    @activity.defn(name=ActivityName.REMOVE_PREDICTION_DATA)
    async def remove_prediction_data(self, ref: PredictionRef) -> None:
        """Retention is over: remove the prediction's input and output (unless it is a
        model's example)."""
        removed = await asyncio.to_thread(
            readmodel.remove_data, self.engine, ref.id, keep_examples=True
        )
        if not removed:
            log.info("event=data_kept prediction=%s reason=example", ref.id)
            return
        files = 0
        if self.store is not None:  # staged inputs and output files; their URLs then 404
            files = await asyncio.to_thread(self.store.delete_prefix, prediction_prefix(ref.id))
        log.info("event=data_removed prediction=%s files=%d", ref.id, files)

    def spec(self, version: Version, hardware: str | None = None) -> RunnerSpec:
        """How this worker runs ``version`` on ``hardware`` (``runner_spec``)."""
        return runner_spec(self.settings, version, hardware)

    async def _version(self, version_id: str) -> Version:
        version = self._versions.get(version_id)
        if version is None:
            version = await asyncio.to_thread(load_version, self.engine, version_id)
            self._versions[version_id] = version
        return version

    @activity.defn(name=ActivityName.RUN_PREDICTION)
    async def run_prediction(self, req: PredictionRequest) -> RunOutcome:
        """Run the model in a warm coglet process and record everything it reports."""
        if self.pool is None:
            raise RuntimeError("this worker has no model runners")
        version = await self._version(req.version)
        hooks = await self.webhooks.live(req) if req.webhook and self.webhooks else None
        run = LiveRun(
            req.id,
            hooks,
            interval=STREAM_PROGRESS_INTERVAL if req.stream else PROGRESS_INTERVAL,
            mark_processing=functools.partial(readmodel.mark_processing, self.engine, req.id),
            write_progress=functools.partial(_record_progress, self.engine, req.id),
            # A `start` webhook says `processing`: a GET right after it must say so too.
            processing_delay=0.0 if hooks is not None else PROCESSING_DELAY,
        )
        finish = functools.partial(_finish, self.engine, req, run, self.settings.hardware_prices)
        placed = Placed(self.pool, self.spec(version, req.hardware), self.store)
        result = await attempt(
            req,
            version,
            placed,
            run,
            finish,
            secret_key=self.settings.ensure_secret_key(),
            noun="Prediction",
            stopping=lambda: self.stopping,
            waiting=functools.partial(readmodel.mark_waiting, self.engine, Prediction, req.id),
        )
        if not isinstance(result, CogPrediction):
            return result
        output = await stored_output(self.pool.upload, req.id, result.output)
        if self.store is not None:  # S3: presigned URLs of the store instead of the API's
            output = outward_output(self.store, output)
        return await finish(
            result.status,
            error=result.error,
            output=output,
            logs=result.logs,
            model_metrics=result.metrics,
        )


def _insert_redacted(engine: Engine, req: PredictionRequest) -> None:
    with Session(engine) as session:
        version = session.get(Version, req.version)
    # An unknown version has no Secret inputs to redact; its run fails as VersionNotFound.
    if version is not None:
        facts = input_facts(version.id, version.openapi_schema)
        req = req.model_copy(update={"input": facts.redact(req.input)})
    readmodel.insert_prediction(engine, req)


def _record_progress(engine: Engine, prediction_id: str, state: CogPrediction) -> None:
    readmodel.record_progress(engine, prediction_id, state.logs, state.output)


async def _finish(
    engine: Engine,
    req: PredictionRequest,
    run: LiveRun,
    prices: Mapping[str, float],
    status: Any,
    *,
    error: str | None = None,
    output: Any = None,
    logs: str | None = None,
    model_metrics: dict[str, Any] | None = None,
) -> RunOutcome:
    """Record the run's terminal state (with ``started_at`` and the metrics the model
    recorded) and send the last live events."""
    completed_at = utcnow()
    record = functools.partial(
        readmodel.finish_prediction,
        engine,
        req.id,
        status=status,
        completed_at=completed_at,
        error=error,
        output=output,
        logs=logs,
        started_at=run.started_at,
        created_at=req.created_at,
        model_metrics=model_metrics,
        hardware=req.hardware,
        prices=prices,
    )
    await run.close(
        record, status=status, logs=logs, output=output, error=error, metrics=model_metrics
    )
    return RunOutcome(
        status=status, error=error, started_at=run.started_at, completed_at=completed_at
    )
