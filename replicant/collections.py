"""Collections: curated, named lists of models, managed by an operator (``replicant
collections ...``) and read through ``/v1/collections``."""

from __future__ import annotations

import re
from collections.abc import Sequence

from sqlalchemy import delete
from sqlalchemy.engine import Engine
from sqlmodel import Session, col, select

from replicant.tables import Collection, CollectionModel, Model

SLUG = re.compile(r"^[a-z0-9][a-z0-9-]*$")
BUILTIN_SLUG = "built-in"


class CollectionError(Exception):
    """A collection command that cannot be done (unknown collection or model, bad slug)."""


def _model(session: Session, ref: str) -> Model:
    owner, _, name = ref.partition("/")
    model = session.exec(select(Model).where(Model.owner == owner, Model.name == name)).first()
    if model is None:
        raise CollectionError(f"no model {ref}")
    return model


def _collection(session: Session, slug: str) -> Collection:
    found = session.exec(select(Collection).where(Collection.slug == slug)).first()
    if found is None:
        raise CollectionError(f"no collection {slug}")
    return found


def create_collection(
    engine: Engine,
    slug: str,
    name: str,
    description: str = "",
    full_description: str | None = None,
) -> Collection:
    """Create a collection, or update the name and descriptions of an existing one."""
    if not SLUG.match(slug):
        raise CollectionError(f"{slug!r} is not a slug (lowercase letters, digits, dashes)")
    with Session(engine, expire_on_commit=False) as session:
        found = session.exec(select(Collection).where(Collection.slug == slug)).first()
        row = found or Collection(slug=slug, name=name)
        row.name, row.description = name, description
        if full_description is not None or found is None:
            row.full_description = full_description
        session.add(row)
        session.commit()
        return row


def add_models(engine: Engine, slug: str, refs: Sequence[str]) -> None:
    """Put models (``owner/name``) in a collection; one already there stays as it is."""
    with Session(engine) as session:
        collection = _collection(session, slug)
        for ref in refs:
            model = _model(session, ref)
            if session.get(CollectionModel, (collection.id, model.id)) is None:
                session.add(
                    CollectionModel(collection_id=collection.id or 0, model_id=model.id or 0)
                )
        session.commit()


def remove_models(engine: Engine, slug: str, refs: Sequence[str]) -> None:
    """Take models out of a collection."""
    with Session(engine) as session:
        collection = _collection(session, slug)
        ids = [_model(session, ref).id for ref in refs]
        session.execute(
            delete(CollectionModel)
            .where(col(CollectionModel.collection_id) == collection.id)
            .where(col(CollectionModel.model_id).in_(ids))
        )
        session.commit()


def delete_collection(engine: Engine, slug: str) -> None:
    """Remove a collection (its models stay)."""
    with Session(engine) as session:
        collection = _collection(session, slug)
        session.execute(
            delete(CollectionModel).where(col(CollectionModel.collection_id) == collection.id)
        )
        session.delete(collection)
        session.commit()


def collection_models(session: Session, collection: Collection) -> list[Model]:
    """The models of a collection, in the order they were added."""
    stmt = (
        select(Model)
        .join(CollectionModel, col(CollectionModel.model_id) == col(Model.id))
        .where(CollectionModel.collection_id == collection.id)
        .order_by(col(CollectionModel.added_at), col(Model.id))
    )
    return list(session.exec(stmt).all())


def seed_builtin_collection(engine: Engine, refs: Sequence[str]) -> None:
    """The collection of the built-in example models (idempotent)."""
    create_collection(
        engine,
        BUILTIN_SLUG,
        "Built-in models",
        "The example models every Replicant installation starts with.",
    )
    add_models(engine, BUILTIN_SLUG, refs)
