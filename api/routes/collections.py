"""Collections of models: ``GET /v1/collections`` and ``GET /v1/collections/{slug}``."""

from __future__ import annotations

from collections.abc import Sequence

from fastapi import APIRouter, Request
from sqlmodel import Session, col, select

from api.deps import CurrentAccount, SessionDep, StateDep
from api.errors import not_found
from api.launch import base_url
from api.pagination import paginate
from replicant import responses, serialize
from replicant.catalog import account_names
from replicant.collections import collection_models
from replicant.tables import Account, Collection, Model, Version

router = APIRouter(prefix="/v1", tags=["collections"])


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


@router.get("/collections", response_model_exclude_unset=True)
def list_collections(
    request: Request,
    state: StateDep,
    session: SessionDep,
    account: CurrentAccount,
    cursor: str | None = None,
) -> responses.CollectionPage:
    """Every collection, newest first, 100 a page."""
    base = base_url(request, state)
    page = paginate(
        session,
        select(Collection),
        col(Collection.created_at),
        col(Collection.id),
        cursor=cursor,
        page_url=f"{base}/v1/collections",
        render=lambda _, rows: [serialize.collection_summary(r) for r in rows],
    )
    return responses.CollectionPage.model_validate(page)


@router.get("/collections/{slug}", response_model_exclude_unset=True)
def get_collection(
    slug: str, request: Request, state: StateDep, session: SessionDep, account: CurrentAccount
) -> responses.Collection:
    """A collection with the models in it that the caller may see."""
    row = session.exec(select(Collection).where(Collection.slug == slug)).first()
    if row is None:
        raise not_found(f"Collection {slug}")
    models = visible_models(session, account, collection_models(session, row))
    return serialize.collection(row, model_objects(session, models, base_url(request, state)))
