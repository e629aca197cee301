"""Rows of one account, by id: what the API's routes look up before they answer."""

from __future__ import annotations

from sqlmodel import Session

from replicant.tables import Prediction, StoredFile, Training
from replicant.timeutil import utcnow


def unexpired_file(session: Session, owner: str, file_id: str) -> StoredFile | None:
    """An uploaded file of ``owner`` that has not expired; None otherwise."""
    row = session.get(StoredFile, file_id)
    if row is None or row.owner != owner or row.expires_at <= utcnow():
        return None
    return row


def owned_training(session: Session, owner: str, training_id: str) -> Training | None:
    """A training of ``owner``; None for anyone else's (they are private)."""
    row = session.get(Training, training_id)
    return row if row is not None and row.owner == owner else None


def owned_prediction(session: Session, owner: str, prediction_id: str) -> Prediction | None:
    """A prediction of ``owner``; None for anyone else's."""
    row = session.get(Prediction, prediction_id)
    return row if row is not None and row.owner == owner else None
