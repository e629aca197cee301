"""Lists of models as the collections and search routes show them."""

from __future__ import annotations

from collections.abc import Sequence

from sqlmodel import Session

from replicant import responses, serialize
from replicant.catalog import account_names
from replicant.tables import Account, Model, Version


def visible_models(session: Session, account: Account, models: Sequence[Model]) -> list[Model]:
    """The models the caller may see: public ones and those of its own accounts."""
    owners = account_names(session, account)
    return [m for m in models if m.visibility == "public" or m.owner in owners]


def model_objects(session: Session, models: Sequence[Model], base: str) -> list[responses.Model]:
    """Model objects with their latest versions (no default examples)."""
    out = []
    for model in models:
        latest = session.get(Version, model.latest_version_id) if model.latest_version_id else None
        out.append(serialize.model(model, latest, base))
    return out
