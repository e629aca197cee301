"""Collections of models: ``GET /v1/collections`` and ``GET /v1/collections/{slug}``."""

from __future__ import annotations

from fastapi import APIRouter, Request
from sqlmodel import col, select

from api.deps import CurrentAccount, SessionDep, StateDep
from api.errors import not_found
from api.launch import base_url
from api.modellists import model_objects, visible_models
from api.pagination import paginate
from replicant import responses, serialize
from replicant.collections import collection_models
from replicant.tables import Collection

router = APIRouter(prefix="/v1", tags=["collections"])


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
