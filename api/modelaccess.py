"""The models a caller may see and change, as the routes look them up (404 and 403 bodies),
and the route dependencies that find the path's model (``VisibleModelDep``, ``OwnModelDep``)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Annotated

from fastapi import Depends, Request
from sqlmodel import Session

from api.deps import CurrentAccount, SessionDep, StateDep
from api.errors import ProblemError, not_found
from api.launch import base_url
from api.state import AppState
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


@dataclass(frozen=True)
class ModelScope:
    """A route's one model (the path's ``owner``/``name``), found for the caller, with the
    request's session, state and absolute base URL."""

    owner: str
    name: str
    model: Model
    session: Session
    state: AppState
    account: Account
    base: str


def _scoped(find: Callable[[Session, Account, str, str], Model]) -> Callable[..., ModelScope]:
    """The dependency that finds the path's model with ``find`` (its 404/403 rule)."""

    def scope(
        owner: str,
        name: str,
        request: Request,
        state: StateDep,
        session: SessionDep,
        account: CurrentAccount,
    ) -> ModelScope:
        model = find(session, account, owner, name)
        return ModelScope(owner, name, model, session, state, account, base_url(request, state))

    return scope


# A model the caller may see (404 otherwise), and one it may change (404, or 403).
VisibleModelDep = Annotated[ModelScope, Depends(_scoped(visible_model))]
OwnModelDep = Annotated[ModelScope, Depends(_scoped(own_model))]
