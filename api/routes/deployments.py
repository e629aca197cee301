"""Deployments: private endpoints with their own hardware, instances and releases.

The rows (``Deployment``, ``DeploymentRelease``) are written here; the instances belong to
each deployment's ``DeploymentWorkflow``, which every create and change reaches through
update-with-start (so a missing controller is started again) and every prediction wakes.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Sequence
from datetime import timedelta
from typing import Annotated

from fastapi import APIRouter, Request, Response
from pydantic import BaseModel, Field
from sqlalchemy import delete, func, update
from sqlalchemy.exc import IntegrityError
from sqlmodel import Session, col, select
from temporalio.client import WithStartWorkflowOperation
from temporalio.common import WorkflowIDConflictPolicy
from temporalio.service import RPCError

from api.deps import CurrentAccount, DatabaseDep, SessionDep, StateDep
from api.errors import ProblemError, conflict, invalid, not_found
from api.launch import Placement, PredictionCreateDep, PredictionInput, base_url, launch_prediction
from api.pagination import paginate
from api.state import AppState
from replicant import responses, serialize
from replicant.catalog import account_names, find_model
from replicant.contracts import DeploymentConfig, DeploymentState
from replicant.deployments import deployment_config, deployment_demand, owner_may_run
from replicant.fairness import PRIORITY_MAX, PRIORITY_MIN
from replicant.tables import (
    Account,
    Deployment,
    DeploymentInstance,
    DeploymentRelease,
    Model,
    Version,
)
from replicant.timeutil import as_utc, utcnow
from workflows.deployment import DeploymentWorkflow, workflow_id

log = logging.getLogger("replicant.api")
router = APIRouter(prefix="/v1", tags=["deployments"])

NAME = re.compile(r"^[a-z0-9][a-z0-9._-]*$")
MinInstances = Annotated[int, Field(ge=0, le=5)]
MaxInstances = Annotated[int, Field(ge=0, le=20)]
# Temporal priority key of the deployment's predictions: 1 runs first, 5 last (default 3).
PriorityKey = Annotated[int, Field(ge=PRIORITY_MIN, le=PRIORITY_MAX)]


class DeploymentCreate(BaseModel):
    name: str
    model: str
    version: str
    hardware: str
    min_instances: MinInstances
    max_instances: MaxInstances
    priority: PriorityKey | None = None


class DeploymentUpdate(BaseModel):
    version: str | None = None
    hardware: str | None = None
    min_instances: MinInstances | None = None
    max_instances: MaxInstances | None = None
    priority: PriorityKey | None = None


# -- helpers ---------------------------------------------------------------------------------


def _check_bounds(min_instances: int, max_instances: int) -> None:
    if min_instances > max_instances:
        raise invalid(
            [
                {
                    "field": "min_instances",
                    "message": f"must not exceed max_instances ({max_instances})",
                }
            ]
        )


def _check_hardware(state: AppState, sku: str) -> None:
    if sku not in state.settings.hardware:
        known = ", ".join(state.settings.hardware)
        raise invalid(
            [{"field": "hardware", "message": f"unknown hardware {sku!r}; one of {known}"}]
        )


def _find(session: Session, account: Account, owner: str, name: str) -> Deployment:
    """A deployment the caller may see (its own or its organizations'); 404 otherwise."""
    if owner not in account_names(session, account):
        raise not_found(f"Deployment {owner}/{name}")
    row = session.exec(
        select(Deployment).where(Deployment.owner == owner, Deployment.name == name)
    ).first()
    if row is None:
        raise not_found(f"Deployment {owner}/{name}")
    return row


def _check_owner_may_run(session: Session, row: Deployment, model: Model) -> None:
    """403 unless the deployment's owner may still see its model: a model made private by
    another account stops running on deployments of everyone else."""
    if not owner_may_run(session, row.owner, model):
        raise ProblemError(
            403,
            f"Deployment {row.owner}/{row.name} runs {model.owner}/{model.name}, which its "
            "owner can no longer see (the model is private)",
        )


def _version_of(session: Session, model: Model, version_id: str) -> Version:
    version = session.get(Version, version_id)
    if version is None or version.model_id != model.id:
        raise not_found(f"Version {model.owner}/{model.name}:{version_id}")
    if not version.predict_ref:
        raise invalid(
            [{"field": "version", "message": "this version cannot run predictions"}],
            f"{model.owner}/{model.name}:{version_id} has a trainer and no predictor: a "
            "deployment cannot run it",
        )
    return version


def _initial_state(state: AppState, config: DeploymentConfig) -> DeploymentState:
    settings = state.settings
    return DeploymentState(
        config=config,
        task_queue=settings.deployment_queue(config.owner, config.name),
        concurrency=settings.deployment_instance_concurrency,
        idle_timeout=settings.deployment_idle_timeout,
        check_interval=settings.deployment_check_interval,
        # A drained instance waits for its running predictions, however long they may take.
        drain_timeout=settings.prediction_timeout + 600,
    )


def _start_operation(
    state: AppState, config: DeploymentConfig
) -> WithStartWorkflowOperation[DeploymentWorkflow, None]:
    return WithStartWorkflowOperation(
        DeploymentWorkflow.run,
        _initial_state(state, config),
        id=workflow_id(config),
        task_queue=state.settings.orchestration_queue,
        id_conflict_policy=WorkflowIDConflictPolicy.USE_EXISTING,
    )


async def _apply(state: AppState, config: DeploymentConfig) -> None:
    """Hand a release to the controller, starting the controller if it is not running."""
    client = await state.temporal()
    await client.execute_update_with_start_workflow(
        DeploymentWorkflow.apply_release,
        config,
        start_workflow_operation=_start_operation(state, config),
    )


async def _wake(state: AppState, config: DeploymentConfig) -> None:
    """A prediction is waiting: the controller looks now rather than at its next check."""
    try:
        client = await state.temporal()
        await client.start_workflow(
            DeploymentWorkflow.run,
            _initial_state(state, config),
            id=workflow_id(config),
            task_queue=state.settings.orchestration_queue,
            start_signal="wake",
        )
    except RPCError as err:
        # The controller's own check finds the prediction a moment later.
        log.warning(
            "event=deployment_wake_failed deployment=%s/%s err=%s",
            config.owner,
            config.name,
            type(err).__name__,
        )


# -- routes ----------------------------------------------------------------------------------


@router.get("/deployments", response_model_exclude_unset=True)
def list_deployments(
    request: Request,
    state: StateDep,
    session: SessionDep,
    account: CurrentAccount,
    cursor: str | None = None,
) -> responses.DeploymentPage:
    """The caller's deployments (and its organizations'), newest first."""
    visible = account_names(session, account)
    base = base_url(request, state)

    def render(session: Session, rows: Sequence[Deployment]) -> list[responses.Deployment]:
        return [serialize.deployment(session, row) for row in rows]

    page = paginate(
        session,
        select(Deployment).where(col(Deployment.owner).in_(visible)),
        col(Deployment.created_at),
        col(Deployment.id),
        cursor=cursor,
        page_url=f"{base}/v1/deployments",
        render=render,
    )
    return responses.DeploymentPage.model_validate(page)


@router.post("/deployments", response_model_exclude_unset=True)
async def create_deployment(
    body: DeploymentCreate, state: StateDep, db: DatabaseDep, account: CurrentAccount
) -> responses.Deployment:
    """A new deployment, owned by the caller, with release 1; its controller starts now."""
    if not NAME.match(body.name):
        raise invalid(
            [{"field": "name", "message": "use lowercase letters, digits, '-', '_' and '.'"}]
        )
    _check_hardware(state, body.hardware)
    _check_bounds(body.min_instances, body.max_instances)

    def create(session: Session) -> DeploymentConfig:
        owner, _, name = body.model.partition("/")
        model = find_model(session, account, owner, name)
        if model is None:
            raise not_found(f"Model {body.model}")
        version = _version_of(session, model, body.version)
        row = Deployment(
            owner=account.username,
            name=body.name,
            model=f"{model.owner}/{model.name}",
            version=version.id,
            hardware=body.hardware,
            min_instances=body.min_instances,
            max_instances=body.max_instances,
            priority=body.priority,
            release=1,
        )
        session.add(row)
        try:
            session.flush()
        except IntegrityError as err:
            raise conflict(
                f"A deployment named {account.username}/{body.name} already exists",
            ) from err
        assert row.id is not None
        session.add(_release(row, account.username))
        session.commit()
        return deployment_config(row)

    config = await db.run(create)
    try:
        await _apply(state, config)
    except Exception as err:
        log.error(
            "event=deployment_start_failed deployment=%s/%s type=%s",
            config.owner,
            config.name,
            type(err).__name__,
        )
        await db.run(_remove, config.deployment_id)
        raise ProblemError(503, "The deployment could not be started; try again") from err
    return await db.read(_render, config.deployment_id)


def _release(row: Deployment, username: str) -> DeploymentRelease:
    assert row.id is not None
    return DeploymentRelease(
        deployment_id=row.id,
        number=row.release,
        model=row.model,
        version=row.version,
        hardware=row.hardware,
        min_instances=row.min_instances,
        max_instances=row.max_instances,
        created_by=username,
    )


def _render(session: Session, deployment_id: int) -> responses.Deployment:
    row = session.get(Deployment, deployment_id)
    if row is None:
        raise not_found("Deployment")
    return serialize.deployment(session, row)


def _remove(session: Session, deployment_id: int) -> None:
    session.exec(
        delete(DeploymentRelease).where(col(DeploymentRelease.deployment_id) == deployment_id)
    )
    session.exec(delete(Deployment).where(col(Deployment.id) == deployment_id))
    session.commit()


@router.get("/deployments/{owner}/{name}", response_model_exclude_unset=True)
def get_deployment(
    owner: str, name: str, session: SessionDep, account: CurrentAccount
) -> responses.Deployment:
    return serialize.deployment(session, _find(session, account, owner, name))


@router.patch("/deployments/{owner}/{name}", response_model_exclude_unset=True)
async def update_deployment(
    owner: str,
    name: str,
    body: DeploymentUpdate,
    state: StateDep,
    db: DatabaseDep,
    account: CurrentAccount,
) -> responses.Deployment:
    """Any change makes a new release (number + 1), which the controller rolls out."""
    if body.hardware is not None:
        _check_hardware(state, body.hardware)

    def change(session: Session) -> tuple[DeploymentConfig, bool]:
        row = _find(session, account, owner, name)
        changes = body.model_dump(exclude_unset=True, exclude_none=True)
        # Priority orders the queue only: it applies to new predictions, without a release.
        priority = changes.pop("priority", None)
        if "version" in changes:
            model_owner, _, model_name = row.model.partition("/")
            model = session.exec(
                select(Model).where(Model.owner == model_owner, Model.name == model_name)
            ).first()
            if model is None:
                raise not_found(f"Model {row.model}")
            _check_owner_may_run(session, row, model)
            _version_of(session, model, changes["version"])
        _check_bounds(
            changes.get("min_instances", row.min_instances),
            changes.get("max_instances", row.max_instances),
        )
        if priority is not None and row.shared_hardware and priority != row.priority:
            raise ProblemError(
                403,
                f"Deployment {owner}/{name} runs on shared hardware, where the operator "
                "sets its priority",
            )
        if priority is not None:
            row.priority = priority
            session.add(row)
        if all(getattr(row, field) == value for field, value in changes.items()):
            session.commit()
            return deployment_config(row), False
        for field, value in changes.items():
            setattr(row, field, value)
        row.release += 1
        session.add(row)
        session.add(_release(row, account.username))
        try:
            session.commit()
        except IntegrityError as err:
            raise ProblemError(409, "The deployment changed at the same time; try again") from err
        return deployment_config(row), True

    config, changed = await db.run(change)
    if changed:
        try:
            await _apply(state, config)
        except Exception as err:
            # The controller reads the release from the read model at its next check.
            log.warning(
                "event=deployment_apply_failed deployment=%s/%s type=%s",
                owner,
                name,
                type(err).__name__,
            )
    return await db.read(_render, config.deployment_id)


@router.delete("/deployments/{owner}/{name}", status_code=204)
async def delete_deployment(
    owner: str, name: str, state: StateDep, db: DatabaseDep, account: CurrentAccount
) -> Response:
    """Only a deployment that has been offline and unused for the idle period (Replicate's
    rule: 15 minutes) can be deleted; every refusal says why."""
    idle = state.settings.deployment_delete_idle

    def remove(session: Session) -> DeploymentConfig:
        row = _find(session, account, owner, name)
        config = deployment_config(row)
        instances = session.exec(
            select(func.count()).where(DeploymentInstance.deployment_id == row.id)
        ).one()
        if row.min_instances > 0 or instances:
            raise conflict(
                f"The deployment is online ({instances} instances, min_instances "
                f"{row.min_instances}); set min_instances to 0 and wait until it has "
                "no instances before deleting it",
                title="Deployment is online",
            )
        waiting, running = deployment_demand(session, owner, name)
        if waiting or running:
            raise conflict(
                f"The deployment has {waiting + running} predictions in progress",
                title="Deployment is in use",
            )
        quiet = utcnow() - as_utc(row.last_active_at)
        if quiet < timedelta(seconds=idle):
            raise conflict(
                f"The deployment was in use {quiet.total_seconds():.0f} seconds ago; it can "
                f"be deleted once it has been offline and unused for {idle:g} seconds",
                title="Deployment was used recently",
            )
        session.exec(
            delete(DeploymentRelease).where(col(DeploymentRelease.deployment_id) == row.id)
        )
        session.delete(row)
        session.commit()
        return config

    config = await db.run(remove)
    try:
        client = await state.temporal()
        await client.get_workflow_handle(workflow_id(config)).signal(DeploymentWorkflow.retire)
    except RPCError:
        pass  # no controller is running; nothing is left to stop
    return Response(status_code=204)


@router.post(
    "/deployments/{owner}/{name}/predictions",
    status_code=201,
    response_model=responses.Prediction,
)
async def create_deployment_prediction(
    owner: str, name: str, body: PredictionInput, create: PredictionCreateDep
) -> Response:
    """A prediction that runs on the deployment's own instances, or, on shared hardware
    (an operator's choice), on its hardware's shared queue with the deployment's priority."""
    state = create.state
    row, model, version = await create.db.run(_serving, create.account, owner, name)
    config = deployment_config(row)
    shared = row.shared_hardware
    placement = Placement(
        deployment=f"{row.owner}/{row.name}",
        hardware=row.hardware,
        # None: the hardware's shared queue, like any prediction of the model.
        task_queue=None if shared else state.settings.deployment_queue(row.owner, row.name),
        priority=row.priority,
    )
    wake = None if shared else lambda: _wake(state, config)
    return await launch_prediction(create, model, version, body, placement, wake)


def _serving(
    session: Session, account: Account, owner: str, name: str
) -> tuple[Deployment, Model, Version]:
    """The deployment, its model and version, marked active now."""
    row = _find(session, account, owner, name)
    version = session.get(Version, row.version)
    model = session.get(Model, version.model_id) if version is not None else None
    if version is None or model is None:
        raise ProblemError(404, f"The version of deployment {owner}/{name} is gone")
    _check_owner_may_run(session, row, model)
    session.execute(
        update(Deployment).where(col(Deployment.id) == row.id).values(last_active_at=utcnow())
    )
    session.commit()
    return row, model, version
