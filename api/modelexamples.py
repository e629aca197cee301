"""A model's examples, as the model routes and a prediction's data removal need them."""

from __future__ import annotations

from sqlalchemy import delete
from sqlmodel import Session, col, select

from api.serialize import prediction_object
from replicant import responses, serialize
from replicant.tables import Model, ModelExample, Prediction


def example_object(
    row: Prediction, base: str, secret_key: str, *, owner_view: bool
) -> responses.Prediction:
    """An example as its viewer is shown it: the owner's view, or the shared one."""
    if owner_view:
        return prediction_object(row, base, secret_key=secret_key)
    return serialize.shared_prediction(row, base, secret_key=secret_key)


def default_example(
    session: Session, model: Model, base: str, secret_key: str, *, owner_view: bool
) -> responses.Prediction | None:
    """The model's default example as a prediction object (the one marked default, else
    the oldest example), or None; ``owner_view`` when the viewer owns the model."""
    row = session.exec(
        select(Prediction)
        .join(ModelExample, col(ModelExample.prediction_id) == col(Prediction.id))
        .where(ModelExample.model_id == model.id)
        .order_by(col(ModelExample.is_default).desc(), col(ModelExample.added_at))
    ).first()
    if row is None:
        return None
    return example_object(row, base, secret_key, owner_view=owner_view)


def forget_examples(
    session: Session, *, model_id: int | None = None, prediction_id: str | None = None
) -> None:
    """Drop example marks of a model being deleted or a prediction whose data goes."""
    if model_id is None and prediction_id is None:
        raise ValueError("forget_examples needs a model or a prediction")
    stmt = delete(ModelExample)
    if model_id is not None:
        stmt = stmt.where(col(ModelExample.model_id) == model_id)
    if prediction_id is not None:
        stmt = stmt.where(col(ModelExample.prediction_id) == prediction_id)
    session.execute(stmt)
