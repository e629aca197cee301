"""Search: ``GET /v1/search?query=`` (models and collections) and ``QUERY /v1/models`` (a
text/plain query; the official clients' ``models.search``).

Every word of the query must appear (case-insensitively) in a model's owner, name,
description or README; hits in the name weigh most. Only models the caller may see.
"""

from __future__ import annotations

import contextlib
import json
from typing import Annotated

from fastapi import APIRouter, Query, Request
from sqlalchemy import or_
from sqlmodel import Session, col, select

from api.deps import CurrentAccount, DatabaseDep, SessionDep, StateDep
from api.errors import ProblemError
from api.launch import base_url
from api.modellists import model_objects, visible_models
from replicant import responses
from replicant.collections import collection_models
from replicant.tables import Account, Collection, Model

router = APIRouter(prefix="/v1", tags=["search"])

MAX_LIMIT = 50
# How much a word found in each field adds to a model's score.
WEIGHTS = (("name", 3.0), ("owner", 2.0), ("description", 2.0), ("readme", 1.0))


def words(query: str) -> list[str]:
    return [w for w in query.lower().split() if w]


def score(model: Model, terms: list[str]) -> float | None:
    """How well ``model`` matches: None unless every term is found somewhere."""
    total = 0.0
    for term in terms:
        found = [w for field, w in WEIGHTS if term in (getattr(model, field) or "").lower()]
        if not found:
            return None
        total += max(found)
    return total


def _matching_models(session: Session, account: Account, terms: list[str]) -> list[Model]:
    columns = [col(Model.owner), col(Model.name), col(Model.description), col(Model.readme)]
    stmt = select(Model)
    for term in terms:  # narrow in SQL, rank in Python
        stmt = stmt.where(or_(*[c.ilike(f"%{term}%") for c in columns]))
    candidates = visible_models(session, account, session.exec(stmt).all())
    ranked = [(s, m) for m in candidates if (s := score(m, terms)) is not None]
    ranked.sort(key=lambda pair: (-pair[0], -pair[1].run_count, pair[1].owner, pair[1].name))
    return [m for _, m in ranked]


def _scores(models: list[Model], terms: list[str]) -> list[float]:
    return [score(m, terms) or 0.0 for m in models]


def _matching_collections(
    session: Session, account: Account, terms: list[str]
) -> list[responses.SearchCollection]:
    """Collections matching every term, each with the models in it the caller may see."""
    out = []
    for row in session.exec(select(Collection).order_by(col(Collection.slug))).all():
        text = f"{row.slug} {row.name} {row.description}".lower()
        if all(t in text for t in terms):
            models = visible_models(session, account, collection_models(session, row))
            refs = [f"{m.owner}/{m.name}" for m in models]
            out.append(
                responses.SearchCollection(
                    name=row.name, slug=row.slug, description=row.description, models=refs
                )
            )
    return out


def query_text(body: bytes) -> str:
    """The query of a ``QUERY /v1/models`` body: plain text, or a JSON string (the npm
    client JSON-encodes it though it says text/plain)."""
    text = body.decode("utf-8", errors="replace")
    stripped = text.strip()
    if len(stripped) >= 2 and stripped[0] == stripped[-1] == '"':
        with contextlib.suppress(ValueError):
            decoded = json.loads(stripped)
            if isinstance(decoded, str):
                return decoded
    return text


def _required(query: str | None) -> list[str]:
    terms = words(query or "")
    if not terms:
        raise ProblemError(400, 'Query parameter "query" is required')
    return terms


@router.get("/search", response_model_exclude_unset=True)
def search(
    request: Request,
    state: StateDep,
    session: SessionDep,
    account: CurrentAccount,
    query: str | None = None,
    limit: Annotated[int, Query(ge=1, le=MAX_LIMIT)] = 20,
) -> responses.SearchResults:
    """Models and collections matching ``query``, best first."""
    terms = _required(query)
    base = base_url(request, state)

    models = _matching_models(session, account, terms)[:limit]
    rendered = model_objects(session, models, base)
    return responses.SearchResults(
        query=query or "",
        models=[
            responses.SearchModel(
                model=m,
                metadata=responses.SearchModelMetadata(
                    generated_description=None, tags=[], score=s
                ),
            )
            for m, s in zip(rendered, _scores(models, terms), strict=True)
        ],
        collections=_matching_collections(session, account, terms)[:limit],
        pages=[],
    )


@router.api_route("/models", methods=["QUERY"], response_model_exclude_unset=True)
async def query_models(
    request: Request, state: StateDep, db: DatabaseDep, account: CurrentAccount
) -> responses.ModelPage:
    """Models matching the text/plain body, best first, as one page of a model list."""
    terms = _required(query_text(await request.body()))
    base = base_url(request, state)

    def run(session: Session) -> list[responses.Model]:
        models = _matching_models(session, account, terms)[:MAX_LIMIT]
        return model_objects(session, models, base)

    return responses.ModelPage(next=None, previous=None, results=await db.run(run))
