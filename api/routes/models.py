"""Models and their versions (read side)."""

from __future__ import annotations

import asyncio
from typing import Any

from fastapi import APIRouter, Request
from sqlmodel import Session, col, select

from api.deps import CurrentAccount, StateDep
from api.errors import not_found
from api.launch import base_url
from api.serialize import model_json, version_json
from replicant.catalog import find_model
from replicant.tables import Version

router = APIRouter(prefix="/v1", tags=["models"])


@router.get("/models/{owner}/{name}")
async def get_model(
    owner: str, name: str, request: Request, state: StateDep, account: CurrentAccount
) -> dict[str, Any]:
    def load() -> dict[str, Any] | None:
        with Session(state.engine) as session:
            model = find_model(session, account, owner, name)
            if model is None:
                return None
            latest = (
                session.get(Version, model.latest_version_id) if model.latest_version_id else None
            )
            return model_json(model, latest, base_url(request, state))

    body = await asyncio.to_thread(load)
    if body is None:
        raise not_found(f"Model {owner}/{name}")
    return body


@router.get("/models/{owner}/{name}/versions")
async def list_versions(
    owner: str, name: str, state: StateDep, account: CurrentAccount
) -> dict[str, Any]:
    def load() -> list[dict[str, Any]] | None:
        with Session(state.engine) as session:
            model = find_model(session, account, owner, name)
            if model is None:
                return None
            stmt = (
                select(Version)
                .where(Version.model_id == model.id)
                .order_by(col(Version.created_at).desc())
            )
            return [version_json(v) for v in session.exec(stmt).all()]

    results = await asyncio.to_thread(load)
    if results is None:
        raise not_found(f"Model {owner}/{name}")
    return {"next": None, "previous": None, "results": results}


@router.get("/models/{owner}/{name}/versions/{version_id}")
async def get_version(
    owner: str, name: str, version_id: str, state: StateDep, account: CurrentAccount
) -> dict[str, Any]:
    def load() -> dict[str, Any] | None:
        with Session(state.engine) as session:
            model = find_model(session, account, owner, name)
            version = session.get(Version, version_id) if model is not None else None
            if model is None or version is None or version.model_id != model.id:
                return None
            return version_json(version)

    body = await asyncio.to_thread(load)
    if body is None:
        raise not_found(f"Version {owner}/{name}:{version_id}")
    return body
