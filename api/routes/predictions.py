"""Predictions: create (by version or by model), get, list, cancel."""

from __future__ import annotations

import asyncio
from datetime import datetime
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Header, Query, Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field
from sqlalchemy import and_, or_
from sqlmodel import Session, col, select
from temporalio.service import RPCError

from api.deps import CurrentAccount, StateDep
from api.errors import ProblemError, invalid, not_found
from api.launch import base_url, launch_prediction
from api.serialize import decode_cursor, encode_cursor, prediction_json
from api.state import AppState
from replicant import readmodel
from replicant.catalog import find_model, find_version, resolve_version_ref
from replicant.contracts import WebhookEvent
from replicant.tables import TERMINAL_STATUSES, Account, Prediction
from replicant.timeutil import utcnow
from workflows.prediction import PredictionWorkflow

router = APIRouter(prefix="/v1", tags=["predictions"])

PAGE_SIZE = 100


class PredictionInput(BaseModel):
    """Body of the model and deployment create routes."""

    input: dict[str, Any] = Field(default_factory=dict)
    webhook: str | None = None
    webhook_events_filter: list[WebhookEvent] | None = None
    stream: bool | None = None


class VersionPredictionInput(PredictionInput):
    """Body of ``POST /v1/predictions``: the version is an id or ``owner/name:id``."""

    version: str


PreferHeader = Annotated[str | None, Header(alias="Prefer")]


@router.post("/predictions", status_code=201)
async def create_prediction(
    body: VersionPredictionInput,
    request: Request,
    state: StateDep,
    account: CurrentAccount,
    prefer: PreferHeader = None,
) -> JSONResponse:
    def resolve() -> Any:
        with Session(state.engine) as session:
            return resolve_version_ref(session, account, body.version)

    found = await asyncio.to_thread(resolve)
    if found is None:
        raise ProblemError(404, f"Version {body.version} not found", title="Invalid version")
    model, version = found
    return await launch_prediction(
        request,
        state,
        account,
        model,
        version,
        body.input,
        webhook=body.webhook,
        webhook_events_filter=body.webhook_events_filter,
        prefer=prefer,
    )


@router.post("/models/{owner}/{name}/predictions", status_code=201)
async def create_model_prediction(
    owner: str,
    name: str,
    body: PredictionInput,
    request: Request,
    state: StateDep,
    account: CurrentAccount,
    prefer: PreferHeader = None,
) -> JSONResponse:
    def resolve() -> Any:
        with Session(state.engine) as session:
            model = find_model(session, account, owner, name)
            if model is None:
                return None
            if model.latest_version_id is None:
                return model, None
            return find_version(session, account, model.latest_version_id, model)

    found = await asyncio.to_thread(resolve)
    if found is None:
        raise not_found(f"Model {owner}/{name}")
    model, version = found
    if version is None:
        raise ProblemError(404, f"Model {owner}/{name} has no versions", title="Not found")
    return await launch_prediction(
        request,
        state,
        account,
        model,
        version,
        body.input,
        webhook=body.webhook,
        webhook_events_filter=body.webhook_events_filter,
        prefer=prefer,
    )


def _own_prediction(state: AppState, account: Account, prediction_id: str) -> Prediction:
    with Session(state.engine) as session:
        row = session.get(Prediction, prediction_id)
    if row is None or row.owner != account.username:
        raise not_found(f"Prediction {prediction_id}")
    return row


@router.get("/predictions/{prediction_id}")
async def get_prediction(
    prediction_id: str, request: Request, state: StateDep, account: CurrentAccount
) -> dict[str, Any]:
    row = await asyncio.to_thread(_own_prediction, state, account, prediction_id)
    return prediction_json(row, base_url(request, state))


@router.post("/predictions/{prediction_id}/cancel")
async def cancel_prediction(
    prediction_id: str, request: Request, state: StateDep, account: CurrentAccount
) -> dict[str, Any]:
    row = await asyncio.to_thread(_own_prediction, state, account, prediction_id)
    if row.status not in TERMINAL_STATUSES:
        client = await state.temporal()
        handle = client.get_workflow_handle(f"prediction-{prediction_id}")
        try:
            await handle.signal(PredictionWorkflow.cancel)
        except RPCError:
            # No running workflow is left to tell: the read model is all there is.
            await asyncio.to_thread(
                readmodel.finish_prediction,
                state.engine,
                prediction_id,
                status="canceled",
                completed_at=utcnow(),
            )
        row = await asyncio.to_thread(_own_prediction, state, account, prediction_id)
    return prediction_json(row, base_url(request, state))


@router.get("/predictions")
async def list_predictions(
    request: Request,
    state: StateDep,
    account: CurrentAccount,
    cursor: str | None = None,
    created_after: datetime | None = None,
    created_before: datetime | None = None,
    source: Literal["web", "api"] | None = None,
    page_size: Annotated[int, Query(ge=1, le=PAGE_SIZE)] = PAGE_SIZE,
) -> dict[str, Any]:
    """The caller's predictions, newest first, 100 a page, with absolute cursor URLs."""
    try:
        direction, at, at_id = decode_cursor(cursor) if cursor else ("next", None, None)
    except (ValueError, TypeError) as err:
        raise invalid([{"field": "cursor", "message": "is not a valid cursor"}]) from err

    def query() -> tuple[list[Prediction], bool]:
        stmt = select(Prediction).where(Prediction.owner == account.username)
        if created_after is not None:
            stmt = stmt.where(col(Prediction.created_at) >= created_after)
        if created_before is not None:
            stmt = stmt.where(col(Prediction.created_at) < created_before)
        if source is not None:
            stmt = stmt.where(Prediction.source == source)
        created, pid = col(Prediction.created_at), col(Prediction.id)
        if at is not None and direction == "next":
            stmt = stmt.where(or_(created < at, and_(created == at, pid < at_id)))
        elif at is not None:
            stmt = stmt.where(or_(created > at, and_(created == at, pid > at_id)))
        order = (created.desc(), pid.desc()) if direction == "next" else (created, pid)
        with Session(state.engine) as session:
            rows = list(session.exec(stmt.order_by(*order).limit(page_size + 1)).all())
        more = len(rows) > page_size
        rows = rows[:page_size]
        if direction == "previous":
            rows.reverse()
        return rows, more

    rows, more = await asyncio.to_thread(query)
    base = base_url(request, state)
    page = f"{base}/v1/predictions"
    has_next = more if direction == "next" else at is not None
    has_previous = (at is not None) if direction == "next" else more
    next_url = previous_url = None
    if rows and has_next:
        last = rows[-1]
        next_url = f"{page}?cursor={encode_cursor(last.created_at, last.id, 'next')}"
    if rows and has_previous:
        first = rows[0]
        previous_url = f"{page}?cursor={encode_cursor(first.created_at, first.id, 'previous')}"
    return {
        "next": next_url,
        "previous": previous_url,
        "results": [prediction_json(r, base) for r in rows],
    }
