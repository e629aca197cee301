"""Activities of ``DeploymentWorkflow``: read a deployment's demand, and run its instances.

``observe_deployment`` runs as a local activity next to the workflow (it only reads and
touches the read model). ``ensure_instances`` runs on a host: a worker process that keeps
the instances (warm model processes, each polling the deployment's task queue).
"""

from __future__ import annotations

import asyncio
from typing import Protocol

from sqlalchemy import update
from sqlalchemy.engine import Engine
from sqlmodel import Session, col, select
from temporalio import activity

from replicant.contracts import (
    ActivityName,
    DeploymentObservation,
    HostReport,
    InstanceTarget,
    ObserveDeployment,
)
from replicant.deployments import (
    deployment_config,
    deployment_demand,
    deployment_runnable,
    stranded_predictions,
)
from replicant.tables import Deployment
from replicant.timeutil import utcnow


def observe(engine: Engine, ref: ObserveDeployment) -> DeploymentObservation:
    with Session(engine) as session:
        row = session.get(Deployment, ref.deployment_id)
        if row is None or (row.owner, row.name) != (ref.owner, ref.name):
            # Deleted: its waiting predictions are stranded, unless a deployment of the same
            # name was made since (its instances serve the same queue).
            again = session.exec(
                select(Deployment.id).where(
                    Deployment.owner == ref.owner, Deployment.name == ref.name
                )
            ).first()
            stranded = (
                [] if again is not None else stranded_predictions(session, ref.owner, ref.name)
            )
            return DeploymentObservation(exists=False, stranded=stranded)
        waiting, running = deployment_demand(session, ref.owner, ref.name, instances_only=True)
        runnable = deployment_runnable(session, row)
        stranded = [] if runnable else stranded_predictions(session, ref.owner, ref.name)
    if ref.busy or waiting or running:
        with engine.begin() as conn:
            conn.execute(
                update(Deployment)
                .where(col(Deployment.id) == ref.deployment_id)
                .values(last_active_at=utcnow())
            )
    return DeploymentObservation(
        exists=True,
        config=deployment_config(row),
        waiting=waiting,
        running=running,
        shared_hardware=row.shared_hardware,
        runnable=runnable,
        stranded=stranded,
    )


class DeploymentActivities:
    """The controller's reads of the read model."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine

    @activity.defn(name=ActivityName.OBSERVE_DEPLOYMENT)
    async def observe_deployment(self, ref: ObserveDeployment) -> DeploymentObservation:
        """The deployment's current release and how many predictions wait or run."""
        return await asyncio.to_thread(observe, self.engine, ref)


class InstanceHost(Protocol):
    """What runs instances: ``workers.deployments.DeploymentHost``."""

    async def ensure(self, target: InstanceTarget) -> HostReport: ...


class HostActivities:
    """The control activity of one host, on its own queue and its hardware's shared queue."""

    def __init__(self, host: InstanceHost) -> None:
        self.host = host

    @activity.defn(name=ActivityName.ENSURE_INSTANCES)
    async def ensure_instances(self, target: InstanceTarget) -> HostReport:
        """Run ``target.count`` instances of the release (starting, draining as needed)."""
        return await self.host.ensure(target)
