"""Creating a prediction: the create pipeline (api/runs.py) with what is a prediction's own,
``Prefer: wait`` (held until terminal, at most ``max_wait`` seconds), and the answer.

Shared by the three create routes (version, model, deployment), which take the request, the
caller and the create headers as one dependency (``PredictionCreateDep``); a deployment's
prediction adds its ``Placement``.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
from collections.abc import Awaitable, Callable, Coroutine
from dataclasses import dataclass
from datetime import timedelta
from typing import Annotated, Any

from fastapi import Depends, Header, Request
from fastapi.responses import Response
from pydantic import BaseModel, Field
from sqlmodel import Session
from temporalio.client import WorkflowUpdateHandle, WorkflowUpdateRPCTimeoutOrCancelledError
from temporalio.service import RPCError

from api.admission import arrived_at
from api.deadlines import CancelAfter
from api.deps import CurrentAccount, StateDep
from api.errors import invalid
from api.idempotency import Claim, IdempotencyHeader, claim_for
from api.runs import PREDICTION, PreparedRun, Runs
from api.serialize import json_response, prediction_object
from api.state import AppState, Database
from api.usage import check_spend_limit
from replicant import responses, tracing
from replicant.cogmodel import output_streams
from replicant.contracts import (
    PREDICTION_SHAPE,
    PredictionRequest,
    WebhookEvent,
    prediction_workflow_id,
)
from replicant.ids import new_id
from replicant.tables import TERMINAL_STATUSES, Account, Model, Prediction, Version
from replicant.timeutil import utcnow
from replicant.trainings import version_hardware
from workflows.prediction import PredictionWorkflow

PREFER_WAIT = re.compile(r"^\s*wait(?:\s*=\s*(\d+))?\s*$")


class PredictionInput(BaseModel):
    """Body of the model and deployment create routes."""

    input: dict[str, Any] = Field(default_factory=dict)
    webhook: str | None = None
    webhook_events_filter: list[WebhookEvent] | None = None
    stream: bool | None = None
    # An extension of Replicate's body: Cog's per-request context (``current_scope().context``
    # in the model), names to strings.
    context: dict[str, str] | None = None


class VersionPredictionInput(PredictionInput):
    """Body of ``POST /v1/predictions``: the version is an id or ``owner/name:id``."""

    version: str


@dataclass(frozen=True)
class PredictionCreate:
    """What the three create routes take besides their body and path: the request, the app
    state, the caller's account, and the create headers, ``Prefer`` (wait), ``Cancel-After``
    (a deadline) and ``Idempotency-Key``."""

    request: Request
    state: AppState
    account: Account
    prefer: str | None = None
    cancel_after: timedelta | None = None
    idempotency_key: str | None = None

    @property
    def db(self) -> Database:
        return self.state.db

    def claim(self, body: BaseModel) -> Claim | None:
        """The request's Idempotency-Key claim (None without the header)."""
        if self.idempotency_key is None:
            return None
        return claim_for(
            self.idempotency_key,
            self.account,
            self.request,
            body.model_dump(mode="json"),
            self.state.secret_key,
        )


async def prediction_create(
    request: Request,
    state: StateDep,
    account: CurrentAccount,
    cancel_after: CancelAfter,
    prefer: Annotated[str | None, Header(alias="Prefer")] = None,
    idempotency_key: IdempotencyHeader = None,
) -> PredictionCreate:
    """A create request's parts (async: no thread-pool hop on the create path)."""
    return PredictionCreate(request, state, account, prefer, cancel_after, idempotency_key)


PredictionCreateDep = Annotated[PredictionCreate, Depends(prediction_create)]


@dataclass(frozen=True)
class Placement:
    """Where a deployment's prediction runs: ``task_queue`` (None: its hardware's shared
    queue, as any prediction of the model) with the deployment's ``priority`` key."""

    deployment: str
    hardware: str
    task_queue: str | None
    priority: int | None


def parse_prefer(value: str | None, max_wait: int) -> int | None:
    """Seconds to wait from a ``Prefer`` header (None: async); 422 on anything else."""
    if value is None or not value.strip():
        return None
    match = PREFER_WAIT.match(value)
    if match is None:
        raise invalid(
            [
                {
                    "field": "Prefer",
                    "message": f"must be 'wait' or 'wait=N' with N from 1 to {max_wait}",
                }
            ]
        )
    if match.group(1) is None:
        return max_wait
    seconds = int(match.group(1))
    if not 1 <= seconds <= max_wait:
        raise invalid(
            [{"field": "Prefer", "message": f"wait must be between 1 and {max_wait} seconds"}]
        )
    return seconds


def is_streaming(version: Version) -> bool:
    """Models whose output is an iterator stream their output (``urls.stream``)."""
    return output_streams(version.openapi_schema) is True


def base_url(request: Request, state: AppState) -> str:
    if state.settings.public_url:
        return state.settings.public_url.rstrip("/")
    return str(request.base_url).rstrip("/")


async def launch_prediction(
    create: PredictionCreate,
    model: Model,
    version: Version,
    body: PredictionInput,
    placement: Placement | None = None,
    on_started: Callable[[], Coroutine[Any, Any, None]] | None = None,
) -> Response:
    """Create a prediction of ``version`` as the body and headers ask and answer 201
    (``Prefer: wait`` holds it until terminal). ``on_started`` runs once the prediction is
    recorded and its workflow started, before any wait (a deployment wakes its controller);
    a waiting create holds on it until its deadline at most."""
    state = create.state
    if not version.predict_ref:
        raise invalid(
            [{"field": "version", "message": "this version cannot run predictions"}],
            f"{model.owner}/{model.name}:{version.id} has a trainer and no predictor (its "
            "cog.yaml has train: and no predict: or run:): it can be trained, not run",
        )
    wait = parse_prefer(create.prefer, state.settings.max_wait)
    # A wait counts from the request's arrival: the whole create answers by then.
    deadline = None if wait is None else arrived_at(create.request.scope) + wait
    runs = Runs(state, PREDICTION)
    claim = create.claim(body)
    if claim is not None and (first := await runs.replay(claim)) is not None:
        return await _answer(create, first, deadline)
    hardware = placement.hardware if placement is not None else None
    if hardware is None and version.base_version_id:
        # A fine-tune runs on the hardware of the base model it was trained from.
        hardware = await state.db.read(version_hardware, model, version)
    hardware = hardware or model.hardware
    runs.check(body.webhook, model, hardware)
    await check_spend_limit(state, create.account.username)
    prediction_id = new_id()
    prepared = await runs.prepare(version, body.input, prediction_id)
    req = _request(create, model, version, body, prepared, hardware, placement, prediction_id)
    if (first := await runs.record(req, prepared.shown_input, claim)) is not None:
        return await _answer(create, first, deadline)
    started = await runs.launch(req, wait_until=deadline)
    if on_started is not None:
        await _after_start(state, on_started, req.id, deadline)
    if deadline is not None:
        await _wait(state, req.id, started, deadline)
    return await respond(create.request, state, req.id, waited=wait is not None)


async def _after_start(
    state: AppState,
    on_started: Callable[[], Coroutine[Any, Any, None]],
    prediction_id: str,
    deadline: float | None,
) -> None:
    """Run ``on_started``; a waiting create holds on it only until its deadline (a wake
    still under way then goes on after the answer: the answer comes by the deadline)."""
    if deadline is None:
        await on_started()
        return
    waking = state.keep(on_started(), f"wake after the start of {prediction_id}")
    with contextlib.suppress(TimeoutError):
        async with asyncio.timeout_at(deadline):
            await asyncio.shield(waking)


def _request(
    create: PredictionCreate,
    model: Model,
    version: Version,
    body: PredictionInput,
    prepared: PreparedRun,
    hardware: str,
    placement: Placement | None,
    prediction_id: str,
) -> PredictionRequest:
    """The workflow's input, exactly as it will be recorded and started."""
    settings, account = create.state.settings, create.account
    # After the upload: the start grace (api/startguard.py) counts from the row's creation.
    created_at = utcnow()
    task_queue = placement.task_queue if placement is not None else None
    return PredictionRequest(
        id=prediction_id,
        owner=account.username,
        model=f"{model.owner}/{model.name}",
        version=version.id,
        input=prepared.workflow_input,
        staged_files=prepared.staged_files,
        hardware=hardware,
        task_queue=task_queue,
        # On the hardware's queue, its other activities go to the orchestration queue and
        # take no hardware slot (api/runs.py); a deployment's runs on the orchestration queue.
        side_queue=settings.orchestration_queue if task_queue is None else None,
        # "web" only from the dashboard, which marks its in-process calls (api/dashboard).
        source=getattr(create.request.state, "prediction_source", "api"),
        webhook=body.webhook,
        webhook_events_filter=body.webhook_events_filter,
        context=body.context or {},
        deployment=placement.deployment if placement is not None else None,
        stream=is_streaming(version),
        created_at=created_at,
        deadline=created_at + create.cancel_after if create.cancel_after is not None else None,
        recorded=True,
        fairness_weight=account.fairness_weight,
        priority_key=placement.priority if placement is not None else None,
        trace_id=tracing.trace_id(),
        timeout=settings.prediction_timeout,
        retention=settings.prediction_retention,
        heartbeat_timeout=settings.heartbeat_timeout,
        webhook_retry_period=settings.webhook_retry_period,
        webhook_retry_max_interval=settings.webhook_retry_max_interval,
        webhook_timeout=settings.webhook_timeout,
        # The workflow's current shape, without patch markers (replicant/contracts.py).
        shape=PREDICTION_SHAPE,
        local_run=runs_locally(create, version, placement),
    )


def runs_locally(create: PredictionCreate, version: Version, placement: Placement | None) -> bool:
    """Whether the prediction runs in its workflow's own task (``local_run_seconds``): its
    version's recent runs were fast, and it has no deadline (a timer waits for the task's
    heartbeat), no deployment (its own queue) and no stream (a long run, as a rule)."""
    return (
        placement is None
        and create.cancel_after is None
        and not is_streaming(version)
        and create.state.run_times.fast(version.id)
    )


async def _wait(state: AppState, prediction_id: str, started: Any, deadline: float) -> None:
    """Hold the create until ``deadline`` (the event loop's time) for the prediction to end:
    on the update its start carried, else (started by a retry, settled, or not yet answered)
    on its workflow."""
    if isinstance(started, WorkflowUpdateHandle):
        await _until(deadline, started.result())
    else:
        await _wait_done(state, prediction_id, deadline)


async def wait_done(state: AppState, prediction_id: str, wait: float) -> None:
    """Wait up to ``wait`` seconds for a started prediction's workflow to end."""
    await _wait_done(state, prediction_id, asyncio.get_running_loop().time() + wait)


async def _wait_done(state: AppState, prediction_id: str, deadline: float) -> None:
    async def done() -> None:
        client = await state.temporal()
        handle = client.get_workflow_handle(prediction_workflow_id(prediction_id))
        await handle.execute_update(PredictionWorkflow.wait_done)

    await _until(deadline, done())


async def _until(deadline: float, waiting: Awaitable[object]) -> None:
    """Await ``waiting`` until ``deadline`` at most, whatever Temporal does meanwhile (an
    update's call is repeated until the workflow takes it, and it takes it only when a
    worker of its queue is free), and however it ends: the answer shows the run as it is."""
    with contextlib.suppress(TimeoutError, WorkflowUpdateRPCTimeoutOrCancelledError, RPCError):
        async with asyncio.timeout_at(deadline):
            await waiting


async def respond(
    request: Request, state: AppState, prediction_id: str, *, waited: bool = False
) -> Response:
    """201 with the prediction as it is now, as its create answered."""
    row = await state.db.read(_load, prediction_id)
    state.run_times.observe(row)
    body = prediction_object(row, base_url(request, state), secret_key=state.secret_key)
    if waited:
        body = expired_wait_answer(body)
    if row.status == "starting":  # why it waits (replicant/queueing.py)
        place = await state.queue.place(row)
        if place is not None:
            body.queue = place
    return json_response(body, 201, {"Location": body.urls.get})


async def _answer(create: PredictionCreate, first: Prediction, deadline: float | None) -> Response:
    """The answer to a retry of a prediction create: the prediction its first request made,
    waited on until ``deadline`` as this request asks."""
    if deadline is not None and first.status not in TERMINAL_STATUSES:
        await _wait_done(create.state, first.id, deadline)
    return await respond(create.request, create.state, first.id, waited=deadline is not None)


def expired_wait_answer(body: responses.Prediction) -> responses.Prediction:
    """A ``Prefer: wait`` that ran out answers ``starting``, Replicate's documented contract:
    the official clients' ``run()`` polls on only then. ``GET`` shows the true status."""
    if body.status in TERMINAL_STATUSES:
        return body
    return body.model_copy(update={"status": "starting"})


def _load(session: Session, prediction_id: str) -> Prediction:
    row = session.get(Prediction, prediction_id)
    assert row is not None
    return row
