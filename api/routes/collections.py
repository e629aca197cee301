"""Collections of models: ``GET /v1/collections`` and ``GET /v1/collections/{slug}``."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import Any

from fastapi import APIRouter, Request
from sqlmodel import Session, col, select

from api.deps import CurrentAccount, StateDep
from api.errors import not_found
from api.launch import base_url
from api.pagination import paginate
from api.serialize import model_json
from replicant.catalog import account_names
from replicant.collections import collection_models
from replicant.tables import Account, Collection, Model, Version

router = APIRouter(prefix="/v1", tags=["collections"])


def collection_item(row: Collection) -> dict[str, Any]:
    return {"name": row.name, "slug": row.slug, "description": row.description}


def visible_models(session: Session, account: Account, models: Sequence[Model]) -> list[Model]:
    """The models the caller may see: public ones and those of its own accounts."""
    owners = account_names(session, account)
    return [m for m in models if m.visibility == "public" or m.owner in owners]


def models_json(session: Session, models: Sequence[Model], base: str) -> list[dict[str, Any]]:
    out = []
    for model in models:
        latest = session.get(Version, model.latest_version_id) if model.latest_version_id else None
        out.append(model_json(model, latest, base))
    return out


@router.get("/collections")
async def list_collections(
    request: Request, state: StateDep, account: CurrentAccount, cursor: str | None = None
) -> dict[str, Any]:
    """Every collection, newest first, 100 a page."""
    base = base_url(request, state)
    return await asyncio.to_thread(
        paginate,
        state.engine,
        select(Collection),
        col(Collection.created_at),
        col(Collection.id),
        cursor=cursor,
        page_url=f"{base}/v1/collections",
        render=lambda _, rows: [collection_item(r) for r in rows],
    )


@router.get("/collections/{slug}")
async def get_collection(
    slug: str, request: Request, state: StateDep, account: CurrentAccount
) -> dict[str, Any]:
    """A collection with the models in it that the caller may see."""
    base = base_url(request, state)

    def load() -> dict[str, Any] | None:
        with Session(state.engine) as session:
            row = session.exec(select(Collection).where(Collection.slug == slug)).first()
            if row is None:
                return None
            models = visible_models(session, account, collection_models(session, row))
            return {
                **collection_item(row),
                "full_description": row.full_description,
                "models": models_json(session, models, base),
            }

    body = await asyncio.to_thread(load)
    if body is None:
        raise not_found(f"Collection {slug}")
    return body
