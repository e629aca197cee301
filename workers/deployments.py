"""The deployment host: runs the instances that deployment controllers ask a worker for.

An instance is one warm coglet process (its own ``RunnerPool`` entry) plus a Temporal worker
that polls the deployment's task queue with ``max_concurrent_activities`` = the per-instance
concurrency, so a deployment's predictions run only on its own instances. The host is told
what to run by ``ensure_instances`` (from ``DeploymentWorkflow``), which is declarative: the
host starts or drains instances until it runs ``count`` of the given release. Draining stops
the instance's polling and waits for its running predictions (``Worker.shutdown`` with a
graceful timeout as long as a prediction may take), so nothing running is cancelled.

The host writes every instance to the read model (``DeploymentInstance``: booting, ready,
draining), which is what ``GET /v1/deployments/...`` counts.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import secrets
import socket
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

from sqlalchemy import delete, update
from sqlalchemy.engine import Engine
from sqlmodel import Session, col
from temporalio import activity
from temporalio.client import Client
from temporalio.exceptions import ApplicationError
from temporalio.worker import Worker

from activities.deployments import HostActivities
from activities.predictions import PredictionActivities
from activities.running import ensure_env
from replicant.contracts import (
    ActivityName,
    DeploymentConfig,
    ErrorType,
    HostReport,
    InstanceTarget,
    PredictionRequest,
    RunOutcome,
)
from replicant.tables import DeploymentInstance, Version
from replicant.timeutil import utcnow
from workers.runners import BootError, RunnerPool
from workflows.deployment import host_queue_for

log = logging.getLogger("replicant.deployments")

HEARTBEAT_THROTTLE = timedelta(seconds=1)
# On process stop, running predictions get this long before the process goes; the ones still
# running are then stopped without a terminal state and retried on the deployment's next
# instances.
STOP_GRACE = 5.0


async def warm(acts: PredictionActivities, version: Version, hardware: str) -> int:
    """Boot the version's process for ``hardware`` in an instance's pool (``acts.pool``)
    before any prediction; its pid."""
    assert isinstance(acts.pool, RunnerPool)
    await ensure_env(version)
    return await acts.pool.warm(acts.spec(version, hardware))


@dataclass
class Instance:
    id: str
    config: DeploymentConfig
    pool: RunnerPool
    worker: Worker | None = None
    task: asyncio.Task[None] | None = None
    starting: asyncio.Task[None] | None = None
    status: str = "booting"
    running: int = 0
    stopped: asyncio.Event = field(default_factory=asyncio.Event)
    acts: PredictionActivities | None = None
    # The run activities in progress, stopped (for their next attempt) when the process stops.
    in_flight: set[asyncio.Task[Any]] = field(default_factory=set)

    def runs(self, config: DeploymentConfig) -> bool:
        """Whether this instance can serve ``config`` (same version, same hardware)."""
        return (self.config.version, self.config.hardware) == (config.version, config.hardware)


class DeploymentHost:
    """The instances of every deployment this worker process runs."""

    def __init__(
        self,
        client: Client,
        engine: Engine,
        hardware: list[str],
        connect: Callable[[], Awaitable[Client]],
        make_pool: Callable[[str], RunnerPool],
        make_activities: Callable[[RunnerPool], PredictionActivities],
        *,
        warm_timeout: float = 300.0,
    ) -> None:
        self.client = client
        # The SDK allows one worker per task queue and client: each instance connects anew.
        self.connect = connect
        # An instance runs predictions exactly as the hardware queues do, on a pool of its own.
        self.make_pool = make_pool
        self.make_activities = make_activities
        self.engine = engine
        self.hardware = hardware
        self.warm_timeout = warm_timeout
        self.id = f"{socket.gethostname()}-{os.getpid()}-{secrets.token_hex(3)}"
        self.queue = f"replicant-deployhost-{self.id}"
        self._instances: dict[int, list[Instance]] = {}
        self._locks: dict[int, asyncio.Lock] = {}
        self._closed = False

    def control_workers(self) -> list[Worker]:
        """Workers for this host's own control queue and its hardware's shared queues."""
        acts = HostActivities(self)
        queues = [self.queue, *(host_queue_for(sku) for sku in self.hardware)]
        return [
            Worker(self.client, task_queue=queue, activities=[acts.ensure_instances])
            for queue in queues
        ]

    # -- control -----------------------------------------------------------------------------

    async def ensure(self, target: InstanceTarget) -> HostReport:
        """Start or drain instances until ``target.count`` of its release run here."""
        config = target.config
        lock = self._locks.setdefault(config.deployment_id, asyncio.Lock())
        async with lock:
            if self._closed:
                raise RuntimeError("the deployment host is stopping")
            instances = self._instances.setdefault(config.deployment_id, [])
            # Instances whose worker died are gone: the count below replaces them.
            for dead in [i for i in instances if i.task is not None and i.task.done()]:
                if dead.status != "draining":
                    log.warning("event=instance_lost deployment=%s id=%s", config.name, dead.id)
                    self._begin_drain(dead)
            await asyncio.to_thread(self._forget_other_hosts, config.deployment_id)
            live = [i for i in instances if i.status != "draining"]
            for old in [i for i in live if not i.runs(config)]:
                self._begin_drain(old)
            current = [i for i in live if i.runs(config)]
            for instance in current:
                instance.config = config
            if len(current) < target.count:
                for _ in range(target.count - len(current)):
                    instances.append(self._start(target))
            elif len(current) > target.count:
                # Idle instances first, then booting ones, then the least busy.
                surplus = sorted(
                    current, key=lambda i: (i.running > 0, i.status == "ready", i.running)
                )
                for instance in surplus[: len(current) - target.count]:
                    self._begin_drain(instance)
            return self._report(config.deployment_id)

    def _report(self, deployment_id: int) -> HostReport:
        instances = self._instances.get(deployment_id, [])
        return HostReport(
            host_queue=self.queue,
            ready=sum(i.status == "ready" for i in instances),
            booting=sum(i.status == "booting" for i in instances),
            draining=sum(i.status == "draining" for i in instances),
        )

    # -- instances ---------------------------------------------------------------------------

    def _start(self, target: InstanceTarget) -> Instance:
        instance = Instance(
            id=secrets.token_hex(8),
            config=target.config,
            pool=self.make_pool(target.config.hardware),
        )
        instance.starting = asyncio.create_task(self._boot(instance, target))
        return instance

    async def _boot(self, instance: Instance, target: InstanceTarget) -> None:
        config = instance.config
        await asyncio.to_thread(self._record_new, instance)
        log.info(
            "event=instance_starting deployment=%s/%s id=%s release=%d",
            config.owner,
            config.name,
            instance.id,
            config.release,
        )
        acts = instance.acts = self.make_activities(instance.pool)

        @activity.defn(name=ActivityName.RUN_PREDICTION)
        async def run_prediction(req: PredictionRequest) -> RunOutcome:
            instance.running += 1
            task = asyncio.current_task()
            assert task is not None
            instance.in_flight.add(task)
            try:
                return await acts.run_prediction(req)
            except asyncio.CancelledError:
                if not acts.stopping:
                    raise
                # The process stops under it: a retryable failure, so the next attempt runs
                # it on another instance at once (a bare cancel would read as the user's).
                raise ApplicationError(
                    "the worker running it stopped", type=ErrorType.WORKER_STOPPED
                ) from None
            finally:
                instance.running -= 1
                instance.in_flight.discard(task)

        pid: int | None = None
        version = await asyncio.to_thread(self._version, config.version)
        if version is not None:
            try:
                async with asyncio.timeout(self.warm_timeout):
                    pid = await warm(acts, version, config.hardware)
            except (BootError, TimeoutError) as err:
                # Predictions still reach this instance and fail with the setup error.
                log.warning("event=instance_warm_failed id=%s error=%r", instance.id, str(err))
        if instance.status == "draining":
            await instance.pool.close()
            await asyncio.to_thread(self._record_gone, instance)
            instance.stopped.set()
            return
        instance.worker = Worker(
            await self.connect(),
            task_queue=target.task_queue,
            activities=[run_prediction],
            max_concurrent_activities=max(target.concurrency, 1),
            # Draining waits for running predictions rather than cancelling them.
            graceful_shutdown_timeout=timedelta(seconds=target.drain_timeout),
            max_heartbeat_throttle_interval=HEARTBEAT_THROTTLE,
            default_heartbeat_throttle_interval=HEARTBEAT_THROTTLE,
        )
        instance.task = asyncio.create_task(instance.worker.run())
        instance.status = "ready"
        await asyncio.to_thread(self._record_ready, instance, pid)
        log.info(
            "event=instance_ready deployment=%s/%s id=%s pid=%s",
            config.owner,
            config.name,
            instance.id,
            pid,
        )

    def _begin_drain(self, instance: Instance) -> None:
        if instance.status == "draining":
            return
        instance.status = "draining"
        asyncio.create_task(self._drain(instance))

    async def _drain(self, instance: Instance, grace: float | None = None) -> None:
        """Stop polling, let running predictions finish, then stop the model process."""
        await asyncio.to_thread(self._record_status, instance, "draining")
        if instance.starting is not None and not instance.starting.done():
            await asyncio.wait({instance.starting})
        if instance.worker is not None and instance.task is not None:
            shutdown = asyncio.create_task(instance.worker.shutdown())
            done, _ = await asyncio.wait({shutdown}, timeout=grace)
            if not done:
                # Process stop: the predictions still running go back to their queue before
                # the model process goes, rather than fail with it.
                self._abandon_runs(instance)
                await asyncio.wait({shutdown}, timeout=STOP_GRACE)
                instance.task.cancel()
            with contextlib.suppress(BaseException):
                await instance.task
            await asyncio.wait({shutdown}, timeout=STOP_GRACE)
            await instance.pool.close()
            await asyncio.to_thread(self._record_gone, instance)
        instance.stopped.set()
        instances = self._instances.get(instance.config.deployment_id, [])
        if instance in instances:
            instances.remove(instance)
        log.info("event=instance_stopped id=%s", instance.id)

    def _abandon_runs(self, instance: Instance) -> None:
        if instance.acts is not None:
            instance.acts.stopping = True
        for task in instance.in_flight:
            task.cancel()
        if instance.in_flight:
            log.info(
                "event=instance_runs_abandoned id=%s predictions=%d",
                instance.id,
                len(instance.in_flight),
            )

    async def close(self) -> None:
        """Stop every instance (process stop): briefly wait for running predictions."""
        self._closed = True
        everything = [i for group in self._instances.values() for i in group]
        for instance in everything:
            if instance.status != "draining":
                instance.status = "draining"
                asyncio.create_task(self._drain(instance, grace=STOP_GRACE))
        if everything:
            await asyncio.wait(
                [asyncio.create_task(i.stopped.wait()) for i in everything],
                timeout=STOP_GRACE * 3,
            )

    # -- read model --------------------------------------------------------------------------

    def _version(self, version_id: str) -> Version | None:
        with Session(self.engine) as session:
            return session.get(Version, version_id)

    def _record_new(self, instance: Instance) -> None:
        config = instance.config
        with Session(self.engine) as session:
            session.add(
                DeploymentInstance(
                    id=instance.id,
                    deployment_id=config.deployment_id,
                    release=config.release,
                    version=config.version,
                    hardware=config.hardware,
                    host=self.id,
                )
            )
            session.commit()

    def _record_ready(self, instance: Instance, pid: int | None) -> None:
        with self.engine.begin() as conn:
            conn.execute(
                update(DeploymentInstance)
                .where(col(DeploymentInstance.id) == instance.id)
                .where(col(DeploymentInstance.status) == "booting")
                .values(status="ready", pid=pid, ready_at=utcnow())
            )

    def _record_status(self, instance: Instance, status: str) -> None:
        with self.engine.begin() as conn:
            conn.execute(
                update(DeploymentInstance)
                .where(col(DeploymentInstance.id) == instance.id)
                .values(status=status)
            )

    def _record_gone(self, instance: Instance) -> None:
        with self.engine.begin() as conn:
            conn.execute(
                delete(DeploymentInstance).where(col(DeploymentInstance.id) == instance.id)
            )

    def _forget_other_hosts(self, deployment_id: int) -> None:
        """A deployment has one host: rows from earlier hosts (restarted, gone) are stale."""
        with self.engine.begin() as conn:
            conn.execute(
                delete(DeploymentInstance)
                .where(col(DeploymentInstance.deployment_id) == deployment_id)
                .where(col(DeploymentInstance.host) != self.id)
            )
