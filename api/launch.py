"""Starting a prediction: validate, record, start the workflow, and wait when asked to; and
answering a retry with an ``Idempotency-Key`` (api/idempotency.py) with the first request's.

Shared by the three create routes (version, model, deployment), which take the request, the
caller and the create headers as one dependency (``PredictionCreateDep``).
"""

from __future__ import annotations

import contextlib
import logging
import re
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import timedelta
from typing import Annotated, Any

from fastapi import Depends, Header, Request
from fastapi.responses import Response
from sqlalchemy.engine import Connection
from sqlmodel import Session, col
from temporalio.client import (
    WithStartWorkflowOperation,
    WorkflowUpdateHandle,
    WorkflowUpdateRPCTimeoutOrCancelledError,
    WorkflowUpdateStage,
)
from temporalio.common import WorkflowIDConflictPolicy, WorkflowIDReusePolicy
from temporalio.exceptions import WorkflowAlreadyStartedError

from api.deadlines import CancelAfter
from api.deps import CurrentAccount, StateDep
from api.errors import ProblemError, invalid
from api.idempotency import (
    Claim,
    IdempotencyHeader,
    KeyTaken,
    record_claim,
    replayed,
    wait_done,
)
from api.inputfiles import discard_data_uris, store_data_uris
from api.serialize import json_response, prediction_object
from api.startguard import (
    START_RPC_TIMEOUT,
    crash_point,
    lost_answer_point,
    settle_start,
    start_deadline,
)
from api.state import AppState, Database
from replicant import readmodel, responses
from replicant.cogmodel import output_streams
from replicant.contracts import PredictionRequest, WaitResult, WebhookEvent
from replicant.fairness import task_priority
from replicant.ids import new_id
from replicant.netguard import BlockedURL, check_target
from replicant.objectkeys import prediction_inputs
from replicant.sealing import Sealer
from replicant.tables import TERMINAL_STATUSES, Account, Model, Prediction, Version
from replicant.timeutil import utcnow
from replicant.trainings import version_hardware
from replicant.validation import redact_secrets, validate_input
from workflows.prediction import PredictionWorkflow, search_attributes

log = logging.getLogger("replicant.api")


PREFER_WAIT = re.compile(r"^\s*wait(?:\s*=\s*(\d+))?\s*$")


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


def parse_prefer(value: str | None, max_wait: int) -> int | None:
    """Seconds to wait from a ``Prefer`` header (None: async); 422 on anything else."""
    if value is None or not value.strip():
        return None
    match = PREFER_WAIT.match(value)
    if match is None:
        raise invalid(
            [{"field": "Prefer", "message": "must be 'wait' or 'wait=N' with N from 1 to 60"}]
        )
    if match.group(1) is None:
        return max_wait
    seconds = int(match.group(1))
    if not 1 <= seconds <= max_wait:
        raise invalid(
            [{"field": "Prefer", "message": f"wait must be between 1 and {max_wait} seconds"}]
        )
    return seconds


def check_webhook(url: str, allow_private: bool) -> None:
    """422 unless ``url`` is an http(s) URL Replicant may call (names resolve at delivery)."""
    try:
        check_target(url, allow_private)
    except BlockedURL as err:
        raise invalid([{"field": "webhook", "message": str(err)}]) from None


def check_hardware(offered: dict[str, int], hardware: str, model: Model) -> None:
    """503 when no worker of this installation serves ``hardware`` (no queue would ever take
    the prediction: it would wait in ``starting`` forever)."""
    if hardware not in offered:
        raise ProblemError(
            503,
            f"Model {model.owner}/{model.name} runs on hardware {hardware!r}, which this "
            f"installation does not offer ({', '.join(offered)}); the model's owner can "
            "change its hardware",
        )


def is_streaming(version: Version) -> bool:
    """Models whose output is an iterator stream their output (``urls.stream``)."""
    return output_streams(version.openapi_schema) is True


def base_url(request: Request, state: AppState) -> str:
    if state.settings.public_url:
        return state.settings.public_url.rstrip("/")
    return str(request.base_url).rstrip("/")


async def launch_prediction(
    request: Request,
    state: AppState,
    account: Account,
    model: Model,
    version: Version,
    payload: dict[str, Any],
    *,
    webhook: str | None,
    webhook_events_filter: list[WebhookEvent] | None,
    prefer: str | None,
    cancel_after: timedelta | None = None,
    deployment: str | None = None,
    hardware: str | None = None,
    task_queue: str | None = None,
    priority: int | None = None,
    on_started: Callable[[], Awaitable[None]] | None = None,
    idempotency: Claim | None = None,
) -> Response:
    """Create a prediction and answer 201 (``Prefer: wait`` holds it until terminal).

    ``priority`` is a deployment's priority key (replicant/fairness.py). ``on_started`` runs
    once the prediction is recorded and its workflow started, before any wait (a deployment
    wakes its controller there).
    """
    settings = state.settings
    wait = parse_prefer(prefer, settings.max_wait)
    if idempotency is not None and (answered := await replay(request, state, idempotency, wait)):
        return answered
    errors = validate_input(version.openapi_schema, payload)
    if errors:
        raise invalid([e.model_dump() for e in errors])
    if webhook is not None:
        check_webhook(webhook, settings.allow_private_urls)
    if hardware is None and version.base_version_id:
        # A fine-tune runs on the hardware of the base model it was trained from.
        hardware = await state.db.read(version_hardware, model, version)
    hardware = hardware or model.hardware
    check_hardware(settings.hardware, hardware, model)
    prediction_id = new_id()
    # Secret inputs are sealed: their plain value reaches the model only (replicant/sealing.py).
    sealer = Sealer(state.secret_key, prediction_id, version.id)
    sealed = sealer.seal_input(version.openapi_schema, payload)
    # Data URIs go to the object store now: the workflow's input carries references only.
    workflow_input, stored = await store_data_uris(
        state, version.openapi_schema, sealed, prediction_inputs(prediction_id)
    )
    # After the upload: the start grace (api/startguard.py) counts from the row's creation.
    created_at = utcnow()
    req = PredictionRequest(
        id=prediction_id,
        owner=account.username,
        model=f"{model.owner}/{model.name}",
        version=version.id,
        input=workflow_input,
        staged_files=stored,
        hardware=hardware,
        task_queue=task_queue,
        # "web" only from the dashboard, which marks its in-process calls (api/dashboard).
        source=getattr(request.state, "prediction_source", "api"),
        webhook=webhook,
        webhook_events_filter=webhook_events_filter,
        deployment=deployment,
        stream=is_streaming(version),
        created_at=created_at,
        deadline=created_at + cancel_after if cancel_after is not None else None,
        recorded=True,
        fairness_weight=account.fairness_weight,
        priority_key=priority,
        timeout=settings.prediction_timeout,
        retention=settings.prediction_retention,
        heartbeat_timeout=settings.heartbeat_timeout,
        webhook_retry_period=settings.webhook_retry_period,
        webhook_retry_max_interval=settings.webhook_retry_max_interval,
        webhook_timeout=settings.webhook_timeout,
    )
    # The read model keeps the input as the user sent it, its secrets redacted.
    claim = idempotency.with_request(req) if idempotency is not None else None
    try:
        row_req = req.model_copy(update={"input": redact_secrets(version.openapi_schema, payload)})
        await state.db.transaction(_record, row_req, model, claim)
    except KeyTaken:
        if stored:
            await discard_data_uris(state, prediction_inputs(req.id))
        assert idempotency is not None
        return await answer_taken(request, state, idempotency, wait)
    crash_point(settings)
    update: WorkflowUpdateHandle[WaitResult] | None = None
    try:
        update = await _start(state, req, wait)
        lost_answer_point(settings)
    except WorkflowAlreadyStartedError:
        # A retry with this Idempotency-Key started it first (api/idempotency.py): started.
        update = None
    except Exception as err:
        log.error("event=start_failed prediction=%s type=%s", req.id, type(err).__name__)
        # Temporal may have taken the start: ask it; the row (and its key) stay for the
        # reconciler.
        client = await state.temporal()
        settled = await settle_start(
            client,
            f"prediction-{req.id}",
            lambda: _start(state, req, None),
            retry_before=start_deadline(created_at, settings.start_grace),
        )
        if not settled:
            raise ProblemError(503, "The prediction could not be scheduled; try again") from err
        update = None
    if on_started is not None:
        await on_started()
    if wait is not None:
        # When the wait is over, answer with the prediction as it is now.
        if update is not None:
            with contextlib.suppress(WorkflowUpdateRPCTimeoutOrCancelledError):
                await update.result(rpc_timeout=timedelta(seconds=wait))
        else:  # started otherwise (a retry, or the settled start): wait on the workflow
            await wait_done(state, req.id, wait)
    return await respond(request, state, req.id, waited=wait is not None)


async def respond(
    request: Request, state: AppState, prediction_id: str, *, waited: bool = False
) -> Response:
    """201 with the prediction as it is now, as its create answered."""
    row = await state.db.read(_load, prediction_id)
    body = prediction_object(row, base_url(request, state), secret_key=state.secret_key)
    if waited:
        body = expired_wait_answer(body)
    return json_response(body, 201, {"Location": body.urls.get})


def expired_wait_answer(body: responses.Prediction) -> responses.Prediction:
    """A ``Prefer: wait`` that ran out answers ``starting``, Replicate's documented contract:
    the official clients' ``run()`` polls on only then. ``GET`` shows the true status."""
    if body.status in TERMINAL_STATUSES:
        return body
    return body.model_copy(update={"status": "starting"})


async def replay(
    request: Request, state: AppState, claim: Claim, wait: int | None
) -> Response | None:
    """The answer to a retry of a prediction create (None: create as usual)."""

    async def start(kept: dict[str, Any]) -> object:
        return await _start(state, PredictionRequest.model_validate(kept), None)

    prediction = await replayed(state, claim, Prediction, start)
    if prediction is None:
        return None
    if wait is not None and prediction.status not in TERMINAL_STATUSES:
        await wait_done(state, prediction.id, wait)
    return await respond(request, state, prediction.id, waited=wait is not None)


async def answer_taken(
    request: Request, state: AppState, claim: Claim, wait: int | None
) -> Response:
    """The answer once our insert lost the race for the key: the winner's prediction."""
    answered = await replay(request, state, claim, wait)
    if answered is None:
        raise ProblemError(409, "A request with this Idempotency-Key failed meanwhile; retry")
    return answered


async def _start(
    state: AppState, req: PredictionRequest, wait: int | None
) -> WorkflowUpdateHandle[WaitResult] | None:
    """Start the workflow; with a wait, as update-with-start so no poll is needed."""
    client = await state.temporal()
    settings = state.settings
    if req.task_queue is None:
        # The workflow runs on its hardware's queue, so its worker runs the model at once
        # (Temporal's eager activity dispatch) instead of a second queue handing it over;
        # its other activities go to the orchestration queue and take no hardware slot.
        queue = settings.task_queue(req.hardware)
        req = req.model_copy(update={"side_queue": settings.orchestration_queue})
    else:  # a deployment's instances serve runs only
        queue = settings.orchestration_queue
    options: dict[str, Any] = {
        "id": f"prediction-{req.id}",
        "task_queue": queue,
        "search_attributes": search_attributes(req),
        # Waiting for a hardware slot, accounts take turns (weighted); see replicant/fairness.py.
        "priority": task_priority(req.owner, req.fairness_weight, req.priority_key),
        # A second start under this id (see api/startguard.py) must never run the model twice.
        "id_reuse_policy": WorkflowIDReusePolicy.REJECT_DUPLICATE,
    }
    if wait is None:
        await client.start_workflow(
            PredictionWorkflow.run, req, rpc_timeout=START_RPC_TIMEOUT, **options
        )
        return None
    start = WithStartWorkflowOperation(
        PredictionWorkflow.run,
        req,
        id_conflict_policy=WorkflowIDConflictPolicy.FAIL,
        **options,
    )
    return await client.start_update_with_start_workflow(
        PredictionWorkflow.wait_done,
        start_workflow_operation=start,
        wait_for_stage=WorkflowUpdateStage.ACCEPTED,
        rpc_timeout=START_RPC_TIMEOUT,
    )


def _load(session: Session, prediction_id: str) -> Prediction:
    row = session.get(Prediction, prediction_id)
    assert row is not None
    return row


def _record(
    conn: Connection, req: PredictionRequest, model: Model, claim: Claim | None = None
) -> None:
    """The prediction's row, and one more run on its model's ``run_count``, in one
    transaction (the id is new: no existing row to look for)."""
    if claim is not None:  # first: a key in use fails before anything is written
        record_claim(conn, claim, req.id)
    readmodel.record_new_prediction(conn, req, col(Model.id) == model.id)
