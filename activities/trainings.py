"""Activities of a training: every side effect of ``TrainingWorkflow``.

``stage_training_inputs`` (orchestration queue) stores the training's input files in the
object store, as ``stage_inputs`` does for a prediction (SSRF-safe fetches, the owner's
uploaded files). ``run_training`` runs on the base model's hardware queue: it hands the input
(staged files as local paths) to a coglet process in train mode, records ``processing`` and
live logs in the read model, sends the ``start`` and ``logs`` webhooks, and stores the
trainer's weights in the object store (no expiry) before it returns, so only a reference
crosses Temporal. ``complete_training`` creates the fine-tune version; ``finish_training``
records any other end and removes the stored weights.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import mimetypes
from collections.abc import Callable
from typing import Any

from sqlalchemy.engine import Engine
from temporalio import activity
from temporalio.exceptions import ApplicationError

from activities.files import Stager
from activities.predictions import runner_spec, sku_key
from activities.running import LiveRun, Placed, attempt, load_version
from activities.webhooks import (
    LIVE_EVENTS,
    LiveWebhooks,
    WebhookActivities,
    deliver_attempt,
    wanted_events,
)
from replicant import readmodel, serialize, trainings
from replicant.contracts import (
    ActivityName,
    CompleteTraining,
    ErrorType,
    FinishTraining,
    StagedInputs,
    StoredWeights,
    TrainingOutcome,
    TrainingRequest,
    TrainingRun,
    TrainingWebhook,
    WebhookResult,
)
from replicant.inputfiles import InputFileError, parse_data_uri
from replicant.objectkeys import training_inputs, training_prefix
from replicant.runner import CogPrediction, ModelRunner, RunnerSpec
from replicant.settings import Settings
from replicant.storage import ObjectStore, open_store
from replicant.tables import Training, Version
from replicant.timeutil import utcnow
from replicant.webhooks import (
    account_webhook_secret,
    http_client,
    webhook_id,
)

log = logging.getLogger("replicant.activities")

LOG_INTERVAL = 0.5


def trainer_spec(settings: Settings, version: Version, hardware: str | None = None) -> RunnerSpec:
    """The version's trainer on ``hardware``: its model directory and environment, in
    coglet's train mode."""
    spec = runner_spec(settings, version, hardware)
    key = sku_key(f"{version.id}+train", spec.memory_sku)
    return spec.model_copy(update={"key": key, "mode": "train", "env": {}, "weights_ref": None})


class TrainingActivities:
    """The activities, bound to one database, object store and pool of model processes."""

    def __init__(
        self,
        engine: Engine,
        settings: Settings,
        pool: ModelRunner | None = None,
        store: Callable[[], ObjectStore] | None = None,
        webhooks: WebhookActivities | None = None,
    ) -> None:
        self.engine = engine
        self.settings = settings
        self.pool = pool
        self.webhooks = webhooks
        self._open_store = store or (lambda: open_store(settings))
        self._store: ObjectStore | None = None
        self._client: Any = None

    async def store(self) -> ObjectStore:
        if self._store is None:
            self._store = await asyncio.to_thread(self._open_store)
        return self._store

    def _version(self, version_id: str) -> Version:
        version = load_version(self.engine, version_id)
        if not version.train_ref:
            raise ApplicationError(
                f"Version {version_id} cannot be trained",
                type=ErrorType.VERSION_NOT_FOUND,
                non_retryable=True,
            )
        return version

    @activity.defn(name=ActivityName.STAGE_TRAINING_INPUTS)
    async def stage_training_inputs(self, req: TrainingRequest) -> StagedInputs:
        """Store the training's input files in the object store; fail clearly if one cannot."""
        stager = Stager(self.settings, self.engine, await self.store())
        try:
            staged = await stager.stage_files(
                owner=req.owner,
                version=req.version,
                input=req.input,
                prefix=training_inputs(req.id),
                component="TrainingInput",
                # Data URIs were stored at create time (``req.staged_files``): kept as they are.
                skip=[f.path for f in req.staged_files],
            )
        except InputFileError as err:
            log.info("event=input_file_refused training=%s reason=%r", req.id, str(err))
            raise ApplicationError(
                str(err), type=ErrorType.INPUT_FILE_ERROR, non_retryable=True
            ) from err
        log.info("event=inputs_staged training=%s files=%d", req.id, len(staged.files))
        return StagedInputs(files=[*req.staged_files, *staged.files])

    async def _live_webhooks(self, req: TrainingRequest) -> LiveWebhooks | None:
        """``start`` and ``logs`` events of this run, when the training's webhook wants them."""
        if not req.webhook or self.webhooks is None:
            return None
        events = wanted_events(req.webhook_events_filter) & set(LIVE_EVENTS)
        if not events:
            return None
        row = await asyncio.to_thread(trainings.get_training, self.engine, req.id)
        if row is None or not row.webhook:
            return None
        secret = await asyncio.to_thread(
            account_webhook_secret, self.engine, row.owner, self.settings.ensure_secret_key()
        )
        send = self.webhooks.live_sender(
            "training", req.id, row.webhook, secret, req.webhook_timeout
        )
        base = self.settings.resolved_public_url
        secret_key = self.settings.ensure_secret_key()

        def render(training: Training) -> dict[str, Any]:
            return serialize.training_json(training, base, secret_key=secret_key)

        return LiveWebhooks(row, events, send, render)

    @activity.defn(name=ActivityName.RUN_TRAINING)
    async def run_training(self, req: TrainingRequest) -> TrainingRun:
        """Run the trainer and store its weights; cancellation stops the trainer."""
        if self.pool is None:
            raise RuntimeError("this worker has no model runners")
        version = await asyncio.to_thread(self._version, req.version)
        store = await self.store() if req.staged_files else None
        progress = LiveRun(
            req.id,
            await self._live_webhooks(req),
            interval=LOG_INTERVAL,
            mark_processing=functools.partial(trainings.mark_processing, self.engine, req.id),
            write_progress=functools.partial(_record_logs, self.engine, req.id),
            processing_delay=None,
            live_output=False,
        )
        end = functools.partial(_end, progress, self.engine, req.id)
        placed = Placed(self.pool, trainer_spec(self.settings, version, req.hardware), store)
        result = await attempt(
            req,
            version,
            placed,
            progress,
            end,
            secret_key=self.settings.ensure_secret_key(),
            noun="Training",
            component="TrainingInput",
            waiting=functools.partial(readmodel.mark_waiting, self.engine, Training, req.id),
        )
        if not isinstance(result, CogPrediction):
            return result
        await _close(
            progress,
            self.engine,
            req.id,
            result.logs,
            result.status,
            model_metrics=result.metrics,
        )
        if result.status != "succeeded":
            status = result.status if result.status in ("failed", "canceled") else "failed"
            return TrainingRun(status=status, error=result.error, started_at=progress.started_at)
        try:
            weights = await self._store_weights(req.id, result)
        except ValueError as err:
            return TrainingRun(status="failed", error=str(err), started_at=progress.started_at)
        log.info(
            "event=weights_stored training=%s key=%s bytes=%d", req.id, weights.key, weights.size
        )
        # The new fine-tune's first prediction will want a process of this base version.
        self.pool.keep_standby(runner_spec(self.settings, version, req.hardware))
        return TrainingRun(status="succeeded", weights=weights, started_at=progress.started_at)

    async def _store_weights(self, training_id: str, result: CogPrediction) -> StoredWeights:
        """The trainer's ``weights`` output (a data URI from coglet) into the object store."""
        output = result.output
        value = output.get("weights") if isinstance(output, dict) else output
        if not isinstance(value, str):
            raise ValueError("The trainer's output has no weights file")
        if not value.startswith("data:"):
            raise ValueError("The trainer's weights are not a file coglet returned")
        try:
            content_type, data = parse_data_uri(value)
        except InputFileError as err:
            raise ValueError(f"The trainer's weights output {err}") from err
        store = await self.store()
        extension = mimetypes.guess_extension(content_type) or ""
        key = f"{training_prefix(training_id)}weights{extension}"
        stored = await asyncio.to_thread(store.put_bytes, data, key, content_type)
        return StoredWeights(
            key=key, sha256=stored.sha256, size=stored.size, content_type=content_type
        )

    @activity.defn(name=ActivityName.COMPLETE_TRAINING)
    async def complete_training(self, done: CompleteTraining) -> TrainingOutcome:
        """Create the fine-tune version and mark the training succeeded, together."""
        try:
            ref = await asyncio.to_thread(
                trainings.complete_training,
                self.engine,
                done.id,
                done.weights,
                done.completed_at,
                self.settings.hardware_prices,
            )
        except trainings.DestinationGone as err:
            raise ApplicationError(
                str(err), type=ErrorType.DESTINATION_GONE, non_retryable=True
            ) from err
        if ref is not None:
            log.info("event=finetune_created training=%s version=%s", done.id, ref)
            store = await self.store()
            await asyncio.to_thread(store.delete_prefix, training_inputs(done.id))
            return TrainingOutcome(status="succeeded", version=ref, completed_at=done.completed_at)
        # It had ended already (canceled meanwhile): no version, and its weights go.
        row = await asyncio.to_thread(trainings.get_training, self.engine, done.id)
        await self._discard_weights(done.id)
        status: Any = row.status if row is not None else "canceled"
        return TrainingOutcome(
            status=status,
            error=row.error if row is not None else None,
            completed_at=row.completed_at if row is not None else done.completed_at,
        )

    @activity.defn(name=ActivityName.FINISH_TRAINING)
    async def finish_training(self, done: FinishTraining) -> None:
        """Record a terminal state decided by the workflow; remove any stored weights."""
        await asyncio.to_thread(
            trainings.finish_training,
            self.engine,
            done.id,
            status=done.status,
            error=done.error,
            completed_at=done.completed_at or utcnow(),
            prices=self.settings.hardware_prices,
        )
        await self._discard_weights(done.id)

    async def _discard_weights(self, training_id: str) -> None:
        store = await self.store()
        removed = await asyncio.to_thread(store.delete_prefix, training_prefix(training_id))
        if removed:
            log.info("event=weights_discarded training=%s objects=%d", training_id, removed)

    def render(self, store: ObjectStore, training_id: str) -> dict[str, Any] | None:
        row = trainings.get_training(self.engine, training_id)
        if row is None:
            return None
        expiry = self.settings.output_url_expiry
        return serialize.training_json(
            row,
            self.settings.resolved_public_url,
            secret_key=self.settings.ensure_secret_key(),
            weights_url=lambda key: store.signed_url(key, expiry),
        )

    @activity.defn(name=ActivityName.SEND_TRAINING_WEBHOOK)
    async def send_training_webhook(self, d: TrainingWebhook) -> WebhookResult:
        """POST the training as it is now; the failure message carries the answer."""
        store = await self.store()
        row = await asyncio.to_thread(trainings.get_training, self.engine, d.training_id)
        if row is None or not row.webhook:
            raise ApplicationError(
                f"training {d.training_id} has no webhook",
                type=ErrorType.NO_WEBHOOK,
                non_retryable=True,
            )
        body = await asyncio.to_thread(self.render, store, d.training_id)
        secret = await asyncio.to_thread(
            account_webhook_secret, self.engine, row.owner, self.settings.ensure_secret_key()
        )
        if self._client is None:
            self._client = http_client()
        return await deliver_attempt(
            self._client,
            row.webhook,
            secret=secret,
            msg_id=webhook_id(d.training_id, d.event, d.sequence),
            body=body or {},
            time_limit=d.timeout,
            allow_private=self.settings.allow_private_urls,
            subject=f"training={d.training_id}",
            event=d.event,
        )


def _record_logs(engine: Engine, training_id: str, state: CogPrediction) -> None:
    trainings.record_logs(engine, training_id, state.logs)


async def _end(
    run: LiveRun,
    engine: Engine,
    training_id: str,
    status: Any,
    *,
    error: str | None = None,
    logs: str | None = None,
) -> TrainingRun:
    """An attempt that ended before the trainer's result: its last logs and live events; the
    workflow records the end."""
    await _close(run, engine, training_id, logs, status, error=error)
    return TrainingRun(status=status, error=error, started_at=run.started_at)


async def _close(
    run: LiveRun,
    engine: Engine,
    training_id: str,
    logs: str | None,
    status: str,
    *,
    error: str | None = None,
    model_metrics: dict[str, Any] | None = None,
) -> None:
    """Stop the attempt's writes, record its final logs and the metrics the trainer
    recorded, and deliver its last live events (the workflow records the end, with
    Replicant's own timings beside those metrics, and sends ``completed``)."""
    final = None
    if logs is not None or model_metrics:
        final = functools.partial(
            trainings.record_logs, engine, training_id, logs, model_metrics=model_metrics
        )
    await run.close(final, status=status, logs=logs, error=error, metrics=model_metrics)
