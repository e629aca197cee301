"""Predictions: create (by version or by model), get, list, cancel."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query, Request
from fastapi.responses import Response
from sqlmodel import Session, select

from api.cancels import signal_cancel
from api.deps import CurrentAccount, SessionDep, StateDep
from api.errors import ProblemError, not_found
from api.launch import (
    PredictionCreateDep,
    PredictionInput,
    VersionPredictionInput,
    base_url,
    launch_prediction,
)
from api.listfilters import PredictionFilters
from api.ownpredictions import PredictionsDep
from api.pagination import PAGE_SIZE, prediction_page
from replicant import responses
from replicant.catalog import find_model, find_version, resolve_version_ref
from replicant.db import cacheable
from replicant.tables import TERMINAL_STATUSES, Account, Model, Prediction, Version

router = APIRouter(prefix="/v1", tags=["predictions"])


@router.post("/predictions", status_code=201, response_model=responses.Prediction)
async def create_prediction(body: VersionPredictionInput, create: PredictionCreateDep) -> Response:
    found = await create.db.read(resolve_version_ref, create.account, body.version)
    if found is None:
        # Replicate's answer: one for a version that is not there or not yours.
        raise ProblemError(
            422,
            f"The specified version {body.version} does not exist (or perhaps you don't have "
            "permission to use it?)",
            title="Invalid version or not permitted",
            invalid_fields=[{"field": "version", "message": "does not exist or is not permitted"}],
        )
    model, version = found
    return await launch_prediction(create, model, version, body)


def _latest_version(
    session: Session, account: Account, owner: str, name: str
) -> tuple[Model, Version | None] | None:
    model = find_model(session, account, owner, name)
    if model is None:
        return None
    if model.latest_version_id is None:
        return model, None
    return find_version(session, account, model.latest_version_id, model)


@cacheable(key=lambda account, owner, name: (account.id, owner, name))
def _runnable_version(
    session: Session, account: Account, owner: str, name: str
) -> tuple[Model, Version] | None:
    """The model's latest version, as every create by the model's name looks it up; None
    when there is none to run (``_latest_version`` says why). Reused for
    ``lookup_cache_ttl``: a new latest version from another process (a worker's build or
    training, another API process) is run within that time."""
    found = _latest_version(session, account, owner, name)
    if found is None or found[1] is None:
        return None
    return found[0], found[1]


@router.post(
    "/models/{owner}/{name}/predictions", status_code=201, response_model=responses.Prediction
)
async def create_model_prediction(
    owner: str, name: str, body: PredictionInput, create: PredictionCreateDep
) -> Response:
    found: tuple[Model, Version | None] | None
    found = await create.db.read(_runnable_version, create.account, owner, name)
    if found is None:  # none to run: say why
        found = await create.db.read(_latest_version, create.account, owner, name)
        if found is None:
            raise not_found(f"Model {owner}/{name}")
    model, version = found
    if version is None:
        raise ProblemError(404, f"Model {owner}/{name} has no versions", title="Not found")
    return await launch_prediction(create, model, version, body)


@router.get("/predictions/{prediction_id}", response_model_exclude_unset=True)
async def get_prediction(prediction_id: str, mine: PredictionsDep) -> responses.Prediction:
    """Beyond Replicate: one that has not started says why it waits (``queue``)."""
    row = await mine.get(prediction_id)
    mine.state.run_times.observe(row)
    shown = mine.show(row)
    if row.status == "starting":  # replicant/queueing.py
        place = await mine.state.queue.place(row)
        if place is not None:
            shown.queue = place
    return shown


@router.post("/predictions/{prediction_id}/cancel", response_model_exclude_unset=True)
async def cancel_prediction(prediction_id: str, mine: PredictionsDep) -> responses.Prediction:
    row = await mine.get(prediction_id)
    if row.status not in TERMINAL_STATUSES:
        await signal_cancel(mine.state, "prediction", prediction_id)
        row = await mine.get(prediction_id)
    return mine.show(row)


@router.get("/predictions", response_model_exclude_unset=True)
def list_predictions(
    request: Request,
    state: StateDep,
    session: SessionDep,
    account: CurrentAccount,
    filters: PredictionFilters,
    cursor: str | None = None,
    page_size: Annotated[int, Query(ge=1, le=PAGE_SIZE)] = PAGE_SIZE,
) -> responses.PredictionPage:
    """The caller's predictions, newest first, 100 a page, with absolute cursor URLs;
    filtered by status, model, version, deployment, source and creation time."""
    stmt = select(Prediction).where(Prediction.owner == account.username)
    stmt, params = filters.apply(stmt, Prediction)
    if page_size != PAGE_SIZE:
        params["page_size"] = str(page_size)
    base = base_url(request, state)
    return prediction_page(
        session,
        stmt,
        base,
        secret_key=state.secret_key,
        cursor=cursor,
        page_url=f"{base}/v1/predictions",
        page_size=page_size,
        params=params,
        queue=state.queue,
    )
