"""The caller's own predictions, as the routes that read, cancel, share or clear one of them
find it (404 for anyone else's) and show it (``PredictionsDep``)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated

from fastapi import Depends, Request
from sqlmodel import Session

from api.deps import CurrentAccount, DatabaseDep, StateDep
from api.errors import not_found
from api.launch import base_url
from api.serialize import prediction_object
from api.state import AppState, Database
from replicant import responses
from replicant.lookups import owned_prediction
from replicant.tables import Account, Prediction


def own_prediction(session: Session, account: Account, prediction_id: str) -> Prediction:
    """The caller's prediction; 404 for anyone else's."""
    row = owned_prediction(session, account.username, prediction_id)
    if row is None:
        raise not_found(f"Prediction {prediction_id}")
    return row


@dataclass(frozen=True)
class OwnPredictions:
    """One request's view of the caller's predictions."""

    request: Request
    state: AppState
    db: Database
    account: Account

    async def get(self, prediction_id: str) -> Prediction:
        return await self.db.read(own_prediction, self.account, prediction_id)

    def show(self, row: Prediction) -> responses.Prediction:
        """The prediction as the API answers it, with this request's absolute URLs."""
        base = base_url(self.request, self.state)
        return prediction_object(row, base, secret_key=self.state.secret_key)


async def _own_predictions(
    request: Request, state: StateDep, db: DatabaseDep, account: CurrentAccount
) -> OwnPredictions:
    return OwnPredictions(request, state, db, account)


PredictionsDep = Annotated[OwnPredictions, Depends(_own_predictions)]
