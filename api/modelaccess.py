"""The models a caller may see and change, as the routes look them up (404 and 403 bodies)."""

from __future__ import annotations

from sqlmodel import Session

from api.errors import ProblemError, not_found
from replicant.catalog import account_names, find_model
from replicant.tables import Account, Model


def visible_model(session: Session, account: Account, owner: str, name: str) -> Model:
    """A model the caller may see: 404 when it cannot (a private model of another account)."""
    model = find_model(session, account, owner, name)
    if model is None:
        raise not_found(f"Model {owner}/{name}")
    return model


def own_model(session: Session, account: Account, owner: str, name: str) -> Model:
    """A model the caller may change: 404 when it cannot see it, 403 when it is not its own."""
    model = visible_model(session, account, owner, name)
    if model.owner not in account_names(session, account):
        raise ProblemError(403, f"You do not own {owner}/{name}", title="Forbidden")
    return model
