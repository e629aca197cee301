"""Worker entry point: the orchestration queue and one queue per hardware SKU."""

from __future__ import annotations

import asyncio
import logging
import signal
import uuid
from datetime import timedelta

from sqlalchemy.engine import Engine
from temporalio.client import Client
from temporalio.worker import Worker
from temporalio.worker.workflow_sandbox import SandboxedWorkflowRunner, SandboxRestrictions

from activities.deployments import DeploymentActivities
from activities.expiry import ExpiryActivities
from activities.files import FileActivities, OutputSink
from activities.predictions import PredictionActivities
from activities.reconcile import ReconcileActivities
from activities.trainings import TrainingActivities
from activities.webhooks import WebhookActivities
from replicant import heartbeats
from replicant.db import init_db, make_engine
from replicant.settings import Settings
from replicant.storage import ObjectStore, open_store
from replicant.temporal import connect
from replicant.weights import WeightsCache
from workers.deployments import DeploymentHost
from workers.runners import RunnerPool
from workers.schedules import ensure_schedules
from workflows.deployment import DeploymentWorkflow
from workflows.expiry import FileExpiryWorkflow
from workflows.prediction import PredictionWorkflow
from workflows.reconcile import StartReconcileWorkflow
from workflows.training import TrainingWorkflow

log = logging.getLogger("replicant.worker")


async def _heartbeat(engine: Engine, identity: str, queues: list[str]) -> None:
    """Tell ``/health`` every few seconds that this worker serves ``queues``."""
    while True:
        try:
            await asyncio.to_thread(heartbeats.beat, engine, identity, queues)
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


def build_workers(
    client: Client,
    settings: Settings,
    engine: Engine,
    pool: RunnerPool,
    *,
    orchestration: bool = True,
    hardware: list[str] | None = None,
    store: ObjectStore | None = None,
) -> list[Worker]:
    """The Temporal workers of one process: orchestration plus the given hardware queues."""
    store = store or open_store(settings)
    webhooks = WebhookActivities(engine, settings)
    acts = PredictionActivities(engine, pool, webhooks, store)
    training = TrainingActivities(engine, settings, pool, lambda: store, webhooks)
    workers: list[Worker] = []
    if orchestration:
        workers.append(
            Worker(
                client,
                task_queue=settings.orchestration_queue,
                workflows=[
                    PredictionWorkflow,
                    DeploymentWorkflow,
                    TrainingWorkflow,
                    FileExpiryWorkflow,
                    StartReconcileWorkflow,
                ],
                workflow_runner=WORKFLOW_RUNNER,
                activities=[
                    acts.record_prediction,
                    acts.finish_prediction,
                    acts.abort_prediction,
                    acts.remove_prediction_data,
                    FileActivities(settings, engine, store).stage_inputs,
                    ExpiryActivities(engine, store).remove_expired_files,
                    ReconcileActivities(engine, client, store).reconcile_starts,
                    webhooks.send_webhook,
                    DeploymentActivities(engine).observe_deployment,
                    training.stage_training_inputs,
                    training.finish_training,
                    training.complete_training,
                    training.send_training_webhook,
                ],
            )
        )
    skus = settings.hardware if hardware is None else {s: settings.hardware[s] for s in hardware}
    for sku, slots in skus.items():
        workers.append(
            Worker(
                client,
                task_queue=settings.task_queue(sku),
                # Predictions started by the API run their workflow here too (see
                # api/launch.py); the two local activities are all it runs beside the model.
                workflows=[PredictionWorkflow],
                workflow_runner=WORKFLOW_RUNNER,
                activities=[
                    acts.run_prediction,
                    training.run_training,
                    acts.record_prediction,
                    acts.finish_prediction,
                    acts.abort_prediction,
                ],
                # Waiting in this queue IS waiting for a hardware slot.
                max_concurrent_activities=slots,
                max_heartbeat_throttle_interval=HEARTBEAT_THROTTLE,
                default_heartbeat_throttle_interval=HEARTBEAT_THROTTLE,
            )
        )
    return workers


async def run_worker(
    settings: Settings, *, orchestration: bool = True, hardware: list[str] | None = None
) -> None:
    """Run until SIGINT/SIGTERM, then drain and stop every model process."""
    unknown = sorted(set(hardware or []) - set(settings.hardware))
    if unknown:
        raise SystemExit(f"unknown hardware: {', '.join(unknown)}")
    engine = make_engine(settings.resolved_database_url)
    init_db(engine)
    client = await connect(settings)
    store = open_store(settings)
    # Fine-tunes' weights, fetched once per worker and served to their model processes (the
    # hardware queues' pool and every deployment instance's).
    weights = WeightsCache(lambda: store, settings.data_dir / "weights-cache")
    # Output files go from coglet straight into the object store (see OutputSink).
    slots = settings.hardware if hardware is None else {s: settings.hardware[s] for s in hardware}
    pool = RunnerPool(
        # Every slot may hold a busy process of its own: a smaller pool would evict and
        # re-boot processes between back-to-back runs.
        max_warm=max(settings.max_warm_runners, sum(slots.values())),
        boot_timeout=settings.setup_timeout,
        # Streams need their chunks soon (time to first token); the run activity throttles
        # its own read-model writes and webhooks.
        update_interval=0.05,
        upload=OutputSink(settings, store),
        weights=weights,
        # Fine-tunes boot from a standby process of their base version (see keep_standby).
        standby=True,
    )
    await pool.start()
    workers = build_workers(
        client, settings, engine, pool, orchestration=orchestration, hardware=hardware, store=store
    )
    if orchestration:
        try:  # the sweep of expired uploaded files
            await ensure_schedules(client, settings)
        except Exception:
            log.warning("event=schedules_not_registered", exc_info=True)
    # Deployment instances run on the workers of their hardware.
    served = list(settings.hardware) if hardware is None else hardware
    host = None
    if served:
        webhooks = WebhookActivities(engine, settings)

        def instance_pool() -> RunnerPool:
            return RunnerPool(
                max_warm=1,
                boot_timeout=settings.setup_timeout,
                update_interval=0.05,
                upload=OutputSink(settings, store),
                weights=weights,
            )

        host = DeploymentHost(
            client,
            engine,
            served,
            connect=lambda: connect(settings),
            make_pool=instance_pool,
            make_activities=lambda p: PredictionActivities(engine, p, webhooks, store),
        )
    if host is not None:
        workers += host.control_workers()
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
        await asyncio.gather(*(w.shutdown() for w in workers), return_exceptions=True)
        await asyncio.gather(*tasks, return_exceptions=True)
        if host is not None:
            await host.close()
        await pool.close()
        log.info("event=worker_stopped")
