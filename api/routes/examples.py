"""Model examples: predictions a model's owner marked as examples of it.

``GET /v1/models/{owner}/{name}/examples`` lists them (as Replicate does); the owner marks one
with ``POST`` (``{"prediction": id, "default": bool}``) and unmarks it with ``DELETE .../{id}``.
The default example (the one marked ``default``, else the oldest) is the model's
``default_example``. Retention leaves an example's input and output in place. The model's
owner sees its examples as its own predictions; everyone else sees them as shared ones
(``serialize.shared_prediction``: no logs, no webhook).
"""

from __future__ import annotations

from fastapi import APIRouter, Request, Response
from pydantic import BaseModel
from sqlalchemy import update
from sqlmodel import col, select

from api.deps import CurrentAccount, SessionDep, StateDep
from api.errors import invalid, not_found
from api.launch import base_url
from api.modelaccess import OwnModelDep, VisibleModelDep, own_model
from api.modelexamples import example_object
from api.pagination import paginate
from api.serialize import json_response, prediction_object
from replicant import responses
from replicant.catalog import account_names
from replicant.tables import ModelExample, Prediction

router = APIRouter(prefix="/v1", tags=["models"])


class ExampleMark(BaseModel):
    """Body of ``POST /v1/models/{owner}/{name}/examples``."""

    prediction: str
    default: bool = False


@router.get("/models/{owner}/{name}/examples", response_model_exclude_unset=True)
def list_examples(scope: VisibleModelDep, cursor: str | None = None) -> responses.PredictionPage:
    """The model's example predictions, newest first (shared views unless the caller owns
    the model)."""
    base, session, secret_key = scope.base, scope.session, scope.state.secret_key
    owner_view = scope.model.owner in account_names(session, scope.account)
    stmt = (
        select(Prediction)
        .join(ModelExample, col(ModelExample.prediction_id) == col(Prediction.id))
        .where(ModelExample.model_id == scope.model.id)
    )
    page = paginate(
        session,
        stmt,
        col(Prediction.created_at),
        col(Prediction.id),
        cursor=cursor,
        page_url=f"{base}/v1/models/{scope.owner}/{scope.name}/examples",
        render=lambda _, rows: [
            example_object(r, base, secret_key, owner_view=owner_view) for r in rows
        ],
    )
    return responses.PredictionPage.model_validate(page)


@router.post(
    "/models/{owner}/{name}/examples", status_code=201, response_model=responses.Prediction
)
def mark_example(
    owner: str,
    name: str,
    body: ExampleMark,
    request: Request,
    state: StateDep,
    session: SessionDep,
    account: CurrentAccount,
) -> Response:
    """Mark one of the caller's succeeded predictions of this model as an example."""
    model = own_model(session, account, owner, name)
    row = session.get(Prediction, body.prediction)
    if row is None or row.owner not in account_names(session, account):
        raise invalid([{"field": "prediction", "message": "no such prediction of yours"}])
    if row.model != f"{model.owner}/{model.name}" or row.status != "succeeded":
        raise invalid([{"field": "prediction", "message": "must be a succeeded run of this model"}])
    if row.data_removed:
        raise invalid([{"field": "prediction", "message": "its data was removed"}])
    if body.default:
        session.execute(
            update(ModelExample)
            .where(col(ModelExample.model_id) == model.id)
            .values(is_default=False)
        )
    existing = session.get(ModelExample, (model.id, row.id))
    example = existing or ModelExample(model_id=model.id or 0, prediction_id=row.id)
    example.is_default = body.default or example.is_default
    session.add(example)
    session.commit()
    return json_response(
        prediction_object(row, base_url(request, state), secret_key=state.secret_key), 201
    )


@router.delete("/models/{owner}/{name}/examples/{prediction_id}", status_code=204)
def unmark_example(prediction_id: str, scope: OwnModelDep) -> Response:
    """Unmark an example (the prediction stays); without a marked default, the oldest
    example is the default."""
    session = scope.session
    example = session.get(ModelExample, (scope.model.id, prediction_id))
    if example is None:
        raise not_found(f"Example {prediction_id} of {scope.owner}/{scope.name}")
    session.delete(example)
    session.commit()
    return Response(status_code=204)
