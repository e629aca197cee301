"""Sharing a prediction: its owner makes it public at ``urls.web`` (``/p/{id}``) and back.

The public view holds what Replicate's shared page shows (input, output, status, times) and
never the webhook URL or the logs; unsharing takes it down on the next request.
"""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response
from sqlalchemy import update
from sqlmodel import Session, col

from api.dashboard.shared import shared_page
from api.deps import SessionDep, StateDep
from api.errors import not_found
from api.launch import base_url
from api.ownpredictions import PredictionsDep
from api.runpages import wants_html
from replicant import responses, serialize
from replicant.tables import Account, Prediction

router = APIRouter(tags=["sharing"])

# Shared pages change the moment the owner unshares: no cache may keep them.
NO_STORE = {"Cache-Control": "no-store"}


def _set_shared(session: Session, account: Account, prediction_id: str, shared: bool) -> Prediction:
    """Flip ``shared`` on the caller's own prediction; 404 for anyone else's."""
    stmt = (
        update(Prediction)
        .where(col(Prediction.id) == prediction_id)
        .where(col(Prediction.owner) == account.username)
        .values(shared=shared)
    )
    changed = getattr(session.execute(stmt), "rowcount", 0)
    session.commit()
    row = session.get(Prediction, prediction_id)
    if not changed or row is None:
        raise not_found(f"Prediction {prediction_id}")
    return row


@router.post("/v1/predictions/{prediction_id}/share", response_model_exclude_unset=True)
async def share_prediction(prediction_id: str, mine: PredictionsDep) -> responses.Prediction:
    """Make the prediction readable by anyone at its ``urls.web`` address."""
    return mine.show(await mine.db.run(_set_shared, mine.account, prediction_id, True))


@router.post("/v1/predictions/{prediction_id}/unshare", response_model_exclude_unset=True)
async def unshare_prediction(prediction_id: str, mine: PredictionsDep) -> responses.Prediction:
    """Make the prediction private again; its public page answers 404 from now on."""
    return mine.show(await mine.db.run(_set_shared, mine.account, prediction_id, False))


@router.get(
    "/p/{prediction_id}",
    response_model=responses.PublicPrediction,
    responses={200: {"content": {"text/html": {}}}},
)
def shared_prediction(
    prediction_id: str, request: Request, state: StateDep, session: SessionDep
) -> Response:
    """The public page of a shared prediction: JSON, or HTML when the client asks for it."""
    row = session.get(Prediction, prediction_id)
    if row is None or not row.shared:
        raise not_found(f"Prediction {prediction_id}")
    view = serialize.body(serialize.public_prediction(row, base_url(request, state)))
    if wants_html(request):
        return shared_page(request, view)  # drawn by the dashboard: output by kind
    return JSONResponse(view, headers=NO_STORE)
