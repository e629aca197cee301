"""Worker entry point: the orchestration queue and one queue per hardware SKU."""

from __future__ import annotations

import asyncio
import logging
import signal
import uuid
from collections.abc import Mapping
from datetime import timedelta

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
from activities.webhooks import WebhookActivities
from replicant import heartbeats
from replicant.db import init_db, make_engine
from replicant.settings import Settings
from replicant.storage import ObjectStore, open_store
from replicant.temporal import connect
from replicant.weights import WeightsCache
from workers.deployments import DeploymentHost
from workers.gpus import gpu_slot_pools
from workers.runners import RunnerPool
from workers.runners.cgroups import model_cgroups
from workers.runners.memory import MemoryBudget
from workers.schedules import ensure_schedules
from workers.slots import RunSlots, SlotRunner
from workflows.build import BuildVersionWorkflow
from workflows.deployment import DeploymentWorkflow
from workflows.prediction import PredictionWorkflow
from workflows.sweeps import FileExpiryWorkflow, RetentionSweepWorkflow, StartReconcileWorkflow
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
    pools: Mapping[str, RunnerPool] | None = None,
) -> list[Worker]:
    """The Temporal workers of one process: orchestration (with version builds) plus the
    given hardware queues; ``pools`` gives a SKU a pool of its own (GPU slots), the others run
    on ``pool``."""
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
                    RetentionSweepWorkflow,
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
                    RetentionActivities(engine, store).remove_overdue_prediction_data,
                    webhooks.send_webhook,
                    DeploymentActivities(engine).observe_deployment,
                    training.stage_training_inputs,
                    training.finish_training,
                    training.complete_training,
                    training.send_training_webhook,
                ],
            )
        )
        # Builds need build tools and the versions dir: only workers serve them, never the API.
        builds = BuildActivities(settings, engine, store)
        workers.append(
            Worker(
                client,
                task_queue=settings.build_queue,
                workflows=[BuildVersionWorkflow],
                workflow_runner=WORKFLOW_RUNNER,
                activities=[builds.build_version, builds.fail_build],
                max_concurrent_activities=settings.max_concurrent_builds,
            )
        )
    skus = settings.hardware if hardware is None else {s: settings.hardware[s] for s in hardware}
    for sku, slots in skus.items():
        # Runs of models that serve several predictions at once share a slot (workers/slots.py).
        run_slots = RunSlots(slots)
        runner = SlotRunner((pools or {}).get(sku) or pool, run_slots)
        acts_sku = PredictionActivities(engine, runner, webhooks, store)
        training_sku = TrainingActivities(engine, settings, runner, lambda: store, webhooks)
        workers.append(
            Worker(
                client,
                task_queue=settings.task_queue(sku),
                # Predictions started by the API run their workflow here too (see
                # api/launch.py); the two local activities are all it runs beside the model.
                workflows=[PredictionWorkflow],
                workflow_runner=WORKFLOW_RUNNER,
                activities=[
                    acts_sku.run_prediction,
                    training_sku.run_training,
                    acts_sku.record_prediction,
                    acts_sku.finish_prediction,
                    acts_sku.abort_prediction,
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
    client = await connect(settings)
    store = open_store(settings)
    # Fine-tunes' weights, fetched once per worker and served to their model processes (the
    # hardware queues' pool and every deployment instance's).
    weights = WeightsCache(lambda: store, settings.data_dir / "weights-cache")
    # Output files go from coglet straight into the object store (see OutputSink).
    slots = settings.hardware if hardware is None else {s: settings.hardware[s] for s in hardware}
    # One memory budget for the warm processes of every hardware pool of this worker.
    budget = None if settings.max_warm_memory is None else MemoryBudget(settings.max_warm_memory)
    # Each model process in a memory cgroup of its own, when there is a limit.
    cgroups = model_cgroups(settings.model_memory_limit, log, settings.model_memory_limits)
    hardware, gpu_pools = gpu_slot_pools(
        settings, slots, OutputSink(settings, store), weights, budget, cgroups
    )
    slots = {sku: slots[sku] for sku in hardware}
    pool = RunnerPool(
        max_warm_memory=budget,
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
        memory_limit=cgroups,
    )
    await pool.start()
    for own in gpu_pools.values():
        await own.start()
    workers = build_workers(
        client,
        settings,
        engine,
        pool,
        orchestration=orchestration,
        hardware=hardware,
        store=store,
        pools=gpu_pools,
    )
    if orchestration:
        try:  # the sweeps of expired uploaded files and of overdue prediction data
            await ensure_schedules(client, settings)
        except Exception:
            log.warning("event=schedules_not_registered", exc_info=True)
    # Deployment instances run on the workers of their hardware.
    served = list(settings.hardware) if hardware is None else hardware
    host = None
    if served:
        webhooks = WebhookActivities(engine, settings)

        def instance_pool(sku: str) -> RunnerPool:
            own = gpu_pools.get(sku)
            return RunnerPool(
                max_warm=1,
                boot_timeout=settings.setup_timeout,
                update_interval=0.05,
                upload=OutputSink(settings, store),
                weights=weights,
                # On a GPU SKU an instance takes a slot of its own from the SKU's devices.
                devices=own.device_slots or () if own is not None else (),
                keep_devices=True,
                memory_limit=cgroups,
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
        # Deployment instances drain beside the hardware queues' grace, not after it.
        closing = [host.close()] if host is not None else []
        await asyncio.gather(*(w.shutdown() for w in workers), *closing, return_exceptions=True)
        await asyncio.gather(*tasks, return_exceptions=True)
        # Only now: a run within the grace needed its model process to the end.
        await pool.close()
        for own in gpu_pools.values():
            await own.close()
        log.info("event=worker_stopped")
