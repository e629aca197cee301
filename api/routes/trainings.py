"""Trainings: create (from a version, to a destination model), get, list, cancel.

Everything that can be refused is refused here, before a workflow starts: an unknown or
invisible base version (404), a version without ``train()`` (422), a destination that does
not exist (404) or belongs to someone else (403), invalid input (422 naming the fields).
Trainings are private to the account that created them; so is a training's page
(``urls.web``, ``/t/{id}``): JSON, or HTML for a client that asks for it.
"""

from __future__ import annotations

import asyncio
import html
import logging
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse, JSONResponse, Response
from pydantic import BaseModel, Field
from sqlmodel import Session, col, select

from api.cancels import signal_cancel
from api.deps import CurrentAccount, DatabaseDep, SessionDep, StateDep
from api.errors import ProblemError, invalid, not_found
from api.idempotency import IdempotencyHeader, claim_for
from api.launch import base_url
from api.listfilters import TrainingFilters
from api.pagination import paginate
from api.runpages import json_block, times_list, wants_html
from api.runs import TRAINING, PreparedRun, Runs
from api.serialize import json_response
from api.state import AppState
from api.usage import check_spend_limit
from replicant import responses, serialize, tracing, trainings
from replicant.catalog import account_names, find_model
from replicant.contracts import TrainingRequest, WebhookEvent
from replicant.ids import new_id
from replicant.lookups import owned_training
from replicant.tables import TERMINAL_STATUSES, Account, Model, Training, Version
from replicant.timeutil import utcnow

router = APIRouter(tags=["trainings"])
log = logging.getLogger("replicant.api")


class TrainingCreate(BaseModel):
    """Body of ``POST /v1/models/{owner}/{name}/versions/{id}/trainings``."""

    destination: str
    input: dict[str, Any] = Field(default_factory=dict)
    webhook: str | None = None
    webhook_events_filter: list[WebhookEvent] | None = None
    # An extension, as for predictions (api/launch.py): Cog's per-request context.
    context: dict[str, str] | None = None


def _render(
    request: Request, state: AppState, rows: list[Training], in_route: bool = False
) -> list[responses.Training]:
    """Training objects; ``output.weights`` is a signed URL of the stored weights. Called
    from a synchronous route's thread (``in_route``), each that has not started says why it
    waits (``queue``)."""
    base = base_url(request, state)
    sign = state.signed_output_url
    secret_key = state.secret_key
    shown = [serialize.training(r, base, secret_key=secret_key, weights_url=sign) for r in rows]
    if in_route:
        state.queue.show_from_thread(rows, shown)
    return shown


def _destination(session: Session, account: Account, ref: str) -> Model:
    """The destination model: 404 when it does not exist (or is someone else's private
    model), 403 when it is someone else's."""
    owner, _, name = ref.partition("/")
    if not owner or not name or "/" in name:
        raise invalid([{"field": "destination", "message": "must be 'owner/name' of a model"}])
    model = session.exec(select(Model).where(Model.owner == owner, Model.name == name)).first()
    mine = account_names(session, account)
    if model is None or (model.owner not in mine and model.visibility != "public"):
        raise ProblemError(
            404,
            f"The destination model {ref} does not exist; create it first",
            title="Destination not found",
        )
    if model.owner not in mine:
        raise ProblemError(
            403,
            f"You cannot push versions to {ref}: it belongs to {owner}",
            title="Forbidden",
        )
    return model


@router.post(
    "/v1/models/{owner}/{name}/versions/{version_id}/trainings",
    status_code=201,
    response_model=responses.Training,
)
async def create_training(
    owner: str,
    name: str,
    version_id: str,
    body: TrainingCreate,
    request: Request,
    state: StateDep,
    db: DatabaseDep,
    account: CurrentAccount,
    idempotency_key: IdempotencyHeader = None,
) -> Response:
    """Train a version into a new version of ``destination`` (the create pipeline,
    api/runs.py); what is a training's own is its destination's checks (``_trainable``)."""
    claim = claim_for(
        idempotency_key,
        account,
        request,
        body.model_dump(mode="json"),
        state.secret_key,
        kind="training",
    )
    runs = Runs(state, TRAINING)
    if claim is not None and (first := await runs.replay(claim)) is not None:
        return await _created(request, state, account, first.id)
    ref = (owner, name, version_id)
    model, version, destination, hardware = await db.read(_trainable, account, ref, body)
    runs.check(body.webhook, model, hardware)
    await check_spend_limit(state, account.username)
    training_id = new_id()
    try:
        prepared = await runs.prepare(version, body.input, training_id)
    except KeyError:
        raise invalid(
            [{"field": "version", "message": "this version cannot be trained"}],
            f"{owner}/{name}:{version_id} cannot be trained: it has no training schema",
        ) from None
    trained = (model, version, destination)
    req = _request(state, account, training_id, trained, body, prepared, hardware)
    if (first := await runs.record(req, prepared.shown_input, claim)) is not None:
        return await _created(request, state, account, first.id)
    await runs.launch(req)
    log.info(
        "event=training_created training=%s version=%s destination=%s",
        req.id,
        req.version,
        req.destination,
    )
    return await _created(request, state, account, req.id)


def _request(
    state: AppState,
    account: Account,
    training_id: str,
    trained: tuple[Model, Version, Model],
    body: TrainingCreate,
    prepared: PreparedRun,
    hardware: str,
) -> TrainingRequest:
    """The workflow's input, exactly as it will be recorded and started (``trained``: the
    model, its version and the destination)."""
    settings = state.settings
    model, version, destination = trained
    return TrainingRequest(
        id=training_id,
        owner=account.username,
        model=f"{model.owner}/{model.name}",
        version=version.id,
        destination=f"{destination.owner}/{destination.name}",
        input=prepared.workflow_input,
        staged_files=prepared.staged_files,
        hardware=hardware,
        webhook=body.webhook,
        webhook_events_filter=body.webhook_events_filter,
        context=body.context or {},
        # After the upload: the start grace (api/startguard.py) counts from the row's creation.
        created_at=utcnow(),
        fairness_weight=account.fairness_weight,
        trace_id=tracing.trace_id(),
        timeout=settings.training_timeout,
        heartbeat_timeout=settings.heartbeat_timeout,
        webhook_retry_period=settings.webhook_retry_period,
        webhook_retry_max_interval=settings.webhook_retry_max_interval,
        webhook_timeout=settings.webhook_timeout,
    )


def _trainable(
    session: Session, account: Account, ref: tuple[str, str, str], body: TrainingCreate
) -> tuple[Model, Version, Model, str]:
    """The version ``ref`` (owner, name, id) to train, the destination model and the
    hardware; 404 or 422 when it cannot be trained so."""
    owner, name, version_id = ref
    model = find_model(session, account, owner, name)
    version = session.get(Version, version_id) if model is not None else None
    if model is None or version is None or version.model_id != model.id:
        raise not_found(f"Version {owner}/{name}:{version_id}")
    if not version.train_ref:
        raise invalid(
            [{"field": "version", "message": "this version cannot be trained"}],
            f"{owner}/{name}:{version_id} cannot be trained: it has no train()",
        )
    destination = _destination(session, account, body.destination)
    return model, version, destination, trainings.version_hardware(session, model, version)


async def _created(
    request: Request, state: AppState, account: Account, training_id: str
) -> Response:
    """201 with the training as it is now, as its create answered: one that has not started
    says why it waits (``queue``)."""
    row = await state.db.read(own_training, account, training_id)
    rendered = (await asyncio.to_thread(_render, request, state, [row]))[0]
    if row.status == "starting":  # replicant/queueing.py
        place = await state.queue.place(row)
        if place is not None:
            rendered.queue = place
    return json_response(rendered, 201, {"Location": rendered.urls.get})


def own_training(session: Session, account: Account, training_id: str) -> Training:
    """The caller's training; 404 for anyone else's (they are private)."""
    row = owned_training(session, account.username, training_id)
    if row is None:
        raise not_found(f"Training {training_id}")
    return row


@router.get("/v1/trainings/{training_id}", response_model_exclude_unset=True)
def get_training(
    training_id: str,
    request: Request,
    state: StateDep,
    session: SessionDep,
    account: CurrentAccount,
) -> responses.Training:
    row = own_training(session, account, training_id)
    return _render(request, state, [row], in_route=True)[0]  # with why it waits


@router.post("/v1/trainings/{training_id}/cancel", response_model_exclude_unset=True)
async def cancel_training(
    training_id: str, request: Request, state: StateDep, db: DatabaseDep, account: CurrentAccount
) -> responses.Training:
    """Cancel a training that has not ended; one that is creating its version succeeds."""
    row = await db.read(own_training, account, training_id)
    if row.status not in TERMINAL_STATUSES:
        await signal_cancel(state, "training", training_id)
        row = await db.read(own_training, account, training_id)
    return (await asyncio.to_thread(_render, request, state, [row]))[0]


@router.get("/v1/trainings", response_model_exclude_unset=True)
def list_trainings(
    request: Request,
    state: StateDep,
    session: SessionDep,
    account: CurrentAccount,
    filters: TrainingFilters,
    cursor: str | None = None,
) -> responses.TrainingPage:
    """The caller's trainings, newest first, 100 a page, with absolute cursor URLs;
    filtered by status, model, version, source and creation time."""
    base = base_url(request, state)
    stmt, params = filters.apply(
        select(Training).where(Training.owner == account.username), Training
    )
    page = paginate(
        session,
        stmt,
        col(Training.created_at),
        col(Training.id),
        cursor=cursor,
        page_url=f"{base}/v1/trainings",
        render=lambda _session, rows: _render(request, state, list(rows), in_route=True),
        params=params,
    )
    return responses.TrainingPage.model_validate(page)


def _html_page(view: dict[str, Any]) -> str:
    block = json_block
    times = times_list(view)
    error = f"<h2>Error</h2>{block(view['error'])}" if view.get("error") else ""
    return (
        "<!doctype html><html lang=en><head><meta charset=utf-8>"
        f"<title>{html.escape(view['model'])} training {html.escape(view['id'])}</title>"
        f"</head><body><h1>{html.escape(view['model'])} &rarr; "
        f"{html.escape(view['destination'])}</h1>"
        f"<p>Training <code>{html.escape(view['id'])}</code>: "
        f"<strong>{html.escape(view['status'])}</strong></p>"
        f"<dl>{times}</dl><h2>Input</h2>{block(view['input'])}"
        f"<h2>Output</h2>{block(view.get('output'))}{error}"
        f"<h2>Logs</h2><pre>{html.escape(view['logs'])}</pre></body></html>"
    )


@router.get(
    "/t/{training_id}",
    response_model=responses.Training,
    responses={200: {"content": {"text/html": {}}}},
)
async def training_page(
    training_id: str, request: Request, state: StateDep, db: DatabaseDep, account: CurrentAccount
) -> Response:
    """A training's page (``urls.web``), for its owner only: 404 for anyone else."""
    row = await db.read(own_training, account, training_id)
    view = serialize.body((await asyncio.to_thread(_render, request, state, [row]))[0])
    headers = {"Cache-Control": "no-store"}
    if wants_html(request):
        headers["Content-Security-Policy"] = "default-src 'none'"
        return HTMLResponse(_html_page(view), headers=headers)
    return JSONResponse(view, headers=headers)
