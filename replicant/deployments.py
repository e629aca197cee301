"""A deployment's current release and its demand, read from the read model (the API and
the deployment activities both need them)."""

from __future__ import annotations

from sqlalchemy import func
from sqlmodel import Session, col, select

from replicant.contracts import DeploymentConfig
from replicant.tables import Deployment, Prediction


def deployment_config(row: Deployment) -> DeploymentConfig:
    """The current release of a deployment row."""
    assert row.id is not None
    return DeploymentConfig(
        deployment_id=row.id,
        owner=row.owner,
        name=row.name,
        release=row.release,
        model=row.model,
        version=row.version,
        hardware=row.hardware,
        min_instances=row.min_instances,
        max_instances=row.max_instances,
    )


def deployment_demand(session: Session, owner: str, name: str) -> tuple[int, int]:
    """(waiting, running) predictions of a deployment."""
    stmt = (
        select(Prediction.status, func.count())
        .where(Prediction.deployment == f"{owner}/{name}")
        .where(col(Prediction.status).in_(("starting", "processing")))
        .group_by(col(Prediction.status))
    )
    counts = dict(session.exec(stmt).all())
    return int(counts.get("starting", 0)), int(counts.get("processing", 0))
