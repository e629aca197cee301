"""A deployment's current release, its demand and whether its owner may still run its model,
read from the read model (the API and the deployment activities both need them), and the
operator's placement of a deployment on shared hardware."""

from __future__ import annotations

from sqlalchemy import func
from sqlalchemy.engine import Engine
from sqlmodel import Session, col, select
from temporalio.service import RPCError, RPCStatusCode

from replicant.catalog import can_see
from replicant.contracts import DeploymentConfig, deployment_workflow_id
from replicant.fairness import PRIORITY_MAX, PRIORITY_MIN
from replicant.settings import Settings
from replicant.tables import Account, Deployment, Model, Prediction, Version
from replicant.temporal import connect


class DeploymentError(ValueError):
    """An operator's change that cannot be made (no such deployment, a bad priority)."""


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


def owner_may_run(session: Session, owner: str, model: Model) -> bool:
    """Whether a deployment's owner (an account's username) may run ``model``: it can see
    it (its own or its organizations', or public)."""
    account = session.exec(select(Account).where(Account.username == owner)).first()
    return account is not None and can_see(session, account, model)


def deployment_runnable(session: Session, row: Deployment) -> bool:
    """Whether a deployment may keep running its release: its model and version still exist
    and its owner may still run the model (not when the model was made private or deleted
    by another account, or the owner left the organization that owns it)."""
    model_owner, _, model_name = row.model.partition("/")
    model = session.exec(
        select(Model).where(Model.owner == model_owner, Model.name == model_name)
    ).first()
    if model is None:
        return False
    version = session.get(Version, row.version)
    if version is None or version.model_id != model.id:
        return False
    return owner_may_run(session, row.owner, model)


def deployment_demand(
    session: Session, owner: str, name: str, *, instances_only: bool = False
) -> tuple[int, int]:
    """(waiting, running) predictions of a deployment; with ``instances_only``, only those
    its own instances serve (not those on the shared hardware queue)."""
    stmt = (
        select(Prediction.status, func.count())
        .where(Prediction.deployment == f"{owner}/{name}")
        .where(col(Prediction.status).in_(("starting", "processing")))
        .group_by(col(Prediction.status))
    )
    if instances_only:
        stmt = stmt.where(col(Prediction.deployment_shared).is_(False))
    counts = dict(session.exec(stmt).all())
    return int(counts.get("starting", 0)), int(counts.get("processing", 0))


# Waiting predictions of a deployment that stopped serving, ended at one check at most.
STRANDED_BATCH = 100


def stranded_predictions(session: Session, owner: str, name: str) -> list[str]:
    """Predictions of ``owner/name`` waiting on its own queue (not on the shared hardware
    queue): when the deployment stops serving, nothing will ever take them."""
    found = session.exec(
        select(Prediction.id)
        .where(Prediction.deployment == f"{owner}/{name}")
        .where(Prediction.status == "starting")
        .where(col(Prediction.deployment_shared).is_(False))
        .order_by(col(Prediction.created_at))
        .limit(STRANDED_BATCH)
    ).all()
    return list(found)


def set_deployment_priority(
    engine: Engine, deployment: str, priority: int, *, shared_hardware: bool | None = None
) -> Deployment:
    """An operator sets the priority of ``owner/name``'s predictions and, when
    ``shared_hardware`` is given, where they run: on the hardware's shared queue, ahead of
    (or behind) everyone's ad-hoc predictions there, or on the deployment's own instances.
    Applies to predictions created from now on."""
    if not PRIORITY_MIN <= priority <= PRIORITY_MAX:
        raise DeploymentError(f"priority must be between {PRIORITY_MIN} and {PRIORITY_MAX}")
    owner, _, name = deployment.partition("/")
    with Session(engine, expire_on_commit=False) as session:
        row = session.exec(
            select(Deployment).where(Deployment.owner == owner, Deployment.name == name)
        ).first()
        if row is None:
            raise DeploymentError(f"no deployment named {deployment!r}")
        row.priority = priority
        if shared_hardware is not None:
            row.shared_hardware = shared_hardware
        session.add(row)
        session.commit()
        return row


async def wake_controller(settings: Settings, row: Deployment) -> None:
    """Have the deployment's controller look now, so a new placement starts or stops its
    instances at once rather than at its next check; nothing to do when none runs."""
    client = await connect(settings)
    handle = client.get_workflow_handle(deployment_workflow_id(deployment_config(row)))
    try:
        await handle.signal("wake")
    except RPCError as err:
        if err.status != RPCStatusCode.NOT_FOUND:
            raise
