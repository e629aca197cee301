"""Worker entry point: the orchestration queue and one queue per hardware SKU."""

from __future__ import annotations

import asyncio
import logging
import signal
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import anyio
import anyio.to_thread
from sqlalchemy.engine import Engine
from temporalio.client import Client
from temporalio.worker import Worker
from temporalio.worker.workflow_sandbox import SandboxedWorkflowRunner, SandboxRestrictions

from activities.builds import BuildActivities
from activities.deployments import DeploymentActivities
from activities.expiry import ExpiryActivities
from activities.files import FileActivities, OutputSink
from activities.predictions import PredictionActivities
from activities.reconcile import ReconcileActivities
from activities.retention import RetentionActivities
from activities.trainings import TrainingActivities
from activities.webhooks import WebhookActivities, start_webhook_delivery
from replicant import heartbeats, tracing
from replicant.bootlogs import append_boot_log
from replicant.db import init_db, make_engine
from replicant.runner import ModelRunner, RunnerSpec
from replicant.settings import Settings
from replicant.storage import ObjectStore, open_store
from replicant.temporal import connect
from replicant.weights import WeightsCache
from workers.deployments import DeploymentHost
from workers.gpus import gpu_slot_pools
from workers.runners import PoolConfig, RunnerPool
from workers.runners.cgroups import MemoryCgroups, model_cgroups
from workers.runners.memory import MemoryBudget, version_of
from workers.schedules import ensure_schedules
from workers.slots import RunSlots, SlotRunner
from workflows.build import BuildVersionWorkflow
from workflows.deployment import DeploymentWorkflow
from workflows.prediction import PredictionWorkflow
from workflows.sweeps import FileExpiryWorkflow, RetentionSweepWorkflow, StartReconcileWorkflow
from workflows.training import TrainingWorkflow
from workflows.webhooks import WebhookDeliveryWorkflow

log = logging.getLogger("replicant.worker")


async def _heartbeat(engine: Engine, identity: str, queues: list[str]) -> None:
    """Tell ``/health`` every few seconds that this worker serves ``queues``: from a thread
    of its own, so that a busy default thread pool (terminal writes, uploads) never delays a
    beat until the worker looks dead."""
    own_thread = anyio.CapacityLimiter(1)
    while True:
        try:
            await anyio.to_thread.run_sync(
                heartbeats.beat, engine, identity, queues, limiter=own_thread
            )
        except Exception:
            log.warning("event=heartbeat_failed", exc_info=True)
        await asyncio.sleep(heartbeats.INTERVAL)


# Workflow code still runs in the sandbox (its determinism checks stay on), but Replicant's
# own modules are imported once per process rather than re-executed for every workflow run:
# they hold no mutable module state, and re-importing them cost each new prediction its
# first workflow task's time.
WORKFLOW_RUNNER = SandboxedWorkflowRunner(
    restrictions=SandboxRestrictions.default.with_passthrough_modules("workflows", "replicant")
)

# Heartbeats reach the server at least this often, so a cancel reaches a running model fast.
HEARTBEAT_THROTTLE = timedelta(seconds=1)


@dataclass(frozen=True)
class WorkerParts:
    """What one worker process builds once and shares among its workers: the database, the
    object store, the webhook sender, where model output files go (``OutputSink``), the
    fine-tunes' weights cache, the warm-memory budget and the model processes' cgroups; and
    the one recipe of its runner pools and activities."""

    settings: Settings
    engine: Engine
    store: ObjectStore
    webhooks: WebhookActivities
    sink: OutputSink
    weights: WeightsCache
    budget: MemoryBudget | None
    cgroups: MemoryCgroups | None

    @classmethod
    def build(
        cls, settings: Settings, engine: Engine, store: ObjectStore | None = None
    ) -> WorkerParts:
        store = store or open_store(settings)
        return cls(
            settings=settings,
            engine=engine,
            store=store,
            webhooks=WebhookActivities(engine, settings),
            # Output files go from coglet straight into the object store.
            sink=OutputSink(settings, store),
            # Fine-tunes' weights, fetched once per worker and served to its model processes
            # (the hardware queues' pool and every deployment instance's).
            weights=WeightsCache(
                lambda: store,
                settings.data_dir / "weights-cache",
                settings.weights_cache_max_age,
            ),
            # One memory budget for the warm processes of every pool of this worker.
            budget=None
            if settings.max_warm_memory is None
            else MemoryBudget(settings.max_warm_memory),
            # Each model process in a memory cgroup of its own, when there is a limit.
            cgroups=model_cgroups(settings.model_memory_limit, log, settings.model_memory_limits),
        )

    def pool(self, max_warm: int, **own: Any) -> RunnerPool:
        """A pool of model processes of this worker; ``own``: what sets it apart."""
        config = PoolConfig(
            max_warm=max_warm,
            boot_timeout=self.settings.setup_timeout,
            # Streams need their chunks soon (time to first token); the run activity
            # throttles its own read-model writes and webhooks.
            update_interval=0.05,
            upload=self.sink,
            weights=self.weights,
            cgroups=self.cgroups,
            on_failure=self.note_failure,
            **own,
        )
        return RunnerPool(config)

    def note_failure(self, spec: RunnerSpec, state: str, error: str, output: str) -> None:
        """A model process stopped for its state goes into its version's boot log."""
        version_id = version_of(spec.key).partition("+")[0]
        append_boot_log(self.engine, version_id, state, error, output)

    def predictions(self, runner: ModelRunner | None = None) -> PredictionActivities:
        """The prediction activities, running models on ``runner``."""
        return PredictionActivities(self.engine, self.settings, runner, self.webhooks, self.store)

    def trainings(self, runner: ModelRunner | None = None) -> TrainingActivities:
        """The training activities, running trainers on ``runner``."""
        store = self.store
        return TrainingActivities(self.engine, self.settings, runner, lambda: store, self.webhooks)


def build_workers(
    client: Client,
    parts: WorkerParts,
    pool: RunnerPool,
    *,
    orchestration: bool = True,
    hardware: list[str] | None = None,
    pools: Mapping[str, RunnerPool] | None = None,
) -> list[Worker]:
    """The Temporal workers of one process: orchestration (with version builds) plus the
    given hardware queues; ``pools`` gives a SKU a pool of its own (GPU slots), the others run
    on ``pool``."""
    settings = parts.settings
    workers = orchestration_workers(client, parts) if orchestration else []
    skus = settings.hardware if hardware is None else {s: settings.hardware[s] for s in hardware}
    for sku, slots in skus.items():
        # Runs of models that serve several predictions at once share a slot (workers/slots.py).
        run_slots = RunSlots(slots)
        runner = SlotRunner((pools or {}).get(sku) or pool, run_slots)
        predictions, trainings = parts.predictions(runner), parts.trainings(runner)
        workers.append(
            Worker(
                client,
                task_queue=settings.task_queue(sku),
                # Predictions started by the API run their workflow here too (see
                # api/runs.py); its local activities are all it runs beside the model.
                workflows=[PredictionWorkflow],
                workflow_runner=WORKFLOW_RUNNER,
                activities=[
                    predictions.run_prediction,
                    trainings.run_training,
                    predictions.record_prediction,
                    predictions.finish_prediction,
                    predictions.abort_prediction,
                    predictions.request_workflow_cancel,
                    start_webhook_delivery,
                ],
                # Waiting in this queue IS waiting for a hardware slot.
                tuner=run_slots.tuner(),
                # A stopped worker lets short runs end (and record) before it cancels them;
                # run_worker keeps the model processes until this shutdown is over.
                graceful_shutdown_timeout=timedelta(seconds=settings.worker_stop_grace),
                max_heartbeat_throttle_interval=HEARTBEAT_THROTTLE,
                default_heartbeat_throttle_interval=HEARTBEAT_THROTTLE,
            )
        )
    return workers


def orchestration_workers(client: Client, parts: WorkerParts) -> list[Worker]:
    """The orchestration queue's worker (every workflow's side effects that need no model)
    and the version builds' (build tools and the versions dir: only workers serve them)."""
    settings, engine, store = parts.settings, parts.engine, parts.store
    predictions, trainings = parts.predictions(), parts.trainings()
    builds = BuildActivities(settings, engine, store)
    orchestration = Worker(
        client,
        task_queue=settings.orchestration_queue,
        workflows=[
            PredictionWorkflow,
            DeploymentWorkflow,
            TrainingWorkflow,
            FileExpiryWorkflow,
            StartReconcileWorkflow,
            RetentionSweepWorkflow,
            WebhookDeliveryWorkflow,
        ],
        workflow_runner=WORKFLOW_RUNNER,
        activities=[
            predictions.record_prediction,
            predictions.finish_prediction,
            predictions.abort_prediction,
            predictions.request_workflow_cancel,
            predictions.remove_prediction_data,
            FileActivities(settings, engine, store).stage_inputs,
            ExpiryActivities(engine, store, settings.build_timeout).remove_expired_files,
            ReconcileActivities(engine, client, store).reconcile_starts,
            RetentionActivities(engine, store, client).remove_overdue_prediction_data,
            parts.webhooks.send_webhook,
            start_webhook_delivery,
            DeploymentActivities(engine).observe_deployment,
            trainings.stage_training_inputs,
            trainings.finish_training,
            trainings.complete_training,
            trainings.send_training_webhook,
        ],
    )
    build = Worker(
        client,
        task_queue=settings.build_queue,
        workflows=[BuildVersionWorkflow],
        workflow_runner=WORKFLOW_RUNNER,
        activities=[builds.build_version, builds.fail_build],
        max_concurrent_activities=settings.max_concurrent_builds,
    )
    return [orchestration, build]


async def run_worker(
    settings: Settings, *, orchestration: bool = True, hardware: list[str] | None = None
) -> None:
    """Run until SIGINT/SIGTERM, then let running predictions end within the grace
    (``worker_stop_grace``, a deployment's ``STOP_GRACE``) and stop every model process."""
    unknown = sorted(set(hardware or []) - set(settings.hardware))
    if unknown:
        raise SystemExit(f"unknown hardware: {', '.join(unknown)}")
    engine = make_engine(settings.resolved_database_url)
    init_db(engine)
    tracing.start(settings, "worker")
    client = await connect(settings)
    parts = WorkerParts.build(settings, engine)
    slots = settings.hardware if hardware is None else {s: settings.hardware[s] for s in hardware}
    served, gpu_pools = gpu_slot_pools(
        settings,
        slots,
        parts.sink,
        parts.weights,
        parts.budget,
        parts.cgroups,
        on_failure=parts.note_failure,
    )
    pool = parts.pool(
        # Every slot may hold a busy process of its own: a smaller pool would evict and
        # re-boot processes between back-to-back runs.
        max(settings.max_warm_runners, sum(slots[sku] for sku in served)),
        memory_budget=parts.budget,
        # Fine-tunes boot from a standby process of their base version (see keep_standby).
        standby=True,
    )
    pools = [pool, *gpu_pools.values()]
    for each in pools:
        await each.start()
    workers = build_workers(
        client, parts, pool, orchestration=orchestration, hardware=served, pools=gpu_pools
    )
    if orchestration:
        try:  # the sweeps of expired uploaded files and of overdue prediction data
            await ensure_schedules(client, settings)
        except Exception:
            log.warning("event=schedules_not_registered", exc_info=True)
    # Deployment instances run on the workers of their hardware.
    host = deployment_host(client, parts, gpu_pools, served)
    if host is not None:
        workers += host.control_workers()
    await _serve(client, engine, workers, host)
    # Only now: a run within the grace needed its model process to the end.
    for each in pools:
        await each.close()
    tracing.stop()  # the spans still batched
    log.info("event=worker_stopped")


def deployment_host(
    client: Client, parts: WorkerParts, gpu_pools: Mapping[str, RunnerPool], served: list[str]
) -> DeploymentHost | None:
    """The host of the deployment instances of the ``served`` hardware (None: none)."""
    if not served:
        return None

    def instance_pool(sku: str) -> RunnerPool:
        own = gpu_pools.get(sku)
        # On a GPU SKU an instance takes a slot of its own from the SKU's devices.
        devices = own.device_slots if own is not None else None
        return parts.pool(1, devices=devices, keep_devices=True)

    return DeploymentHost(
        client,
        parts.engine,
        served,
        connect=lambda: connect(parts.settings),
        make_pool=instance_pool,
        make_activities=parts.predictions,
    )


async def _serve(
    client: Client, engine: Engine, workers: list[Worker], host: DeploymentHost | None
) -> None:
    """Run ``workers`` until SIGINT/SIGTERM, telling ``/health`` meanwhile; then shut them
    down (deployment instances drain beside the hardware queues' grace, not after it)."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    queues = [w.task_queue for w in workers]
    log.info("event=worker_started queues=%s", ",".join(queues))
    tasks = [asyncio.create_task(w.run()) for w in workers]
    identity = f"{client.identity}-{uuid.uuid4().hex[:8]}"
    beating = asyncio.create_task(_heartbeat(engine, identity, queues))
    try:
        await stop.wait()
    finally:
        beating.cancel()
        await asyncio.to_thread(heartbeats.forget, engine, identity)
        closing = [host.close()] if host is not None else []
        await asyncio.gather(*(w.shutdown() for w in workers), *closing, return_exceptions=True)
        await asyncio.gather(*tasks, return_exceptions=True)
