"""Alembic environment: always run from ``replicant.db`` with a connection it hands over."""

from __future__ import annotations

from typing import Any, Literal

from alembic import context
from sqlmodel import SQLModel
from sqlmodel.sql.sqltypes import AutoString

from replicant import tables

config = context.config


def render_item(kind: str, obj: Any, autogen_context: Any) -> str | Literal[False]:
    """Render Replicant's column types as plain SQLAlchemy ones, so revisions import no app code."""
    if kind == "type" and isinstance(obj, tables.UTCDateTime):
        return "sa.DateTime()"
    if kind == "type" and isinstance(obj, AutoString):
        return f"sa.String(length={obj.length})" if obj.length else "sa.String()"
    return False


def configure(connection: Any) -> None:
    context.configure(
        connection=connection,
        target_metadata=SQLModel.metadata,
        # SQLite alters tables by copying them ("batch" mode); a revision written that way
        # runs on PostgreSQL too (as plain ALTERs), whichever database generated it.
        render_as_batch=True,
        render_item=render_item,
        compare_type=True,
    )


connection = config.attributes.get("connection")
if connection is None:
    raise RuntimeError("run migrations through `replicant db upgrade` (replicant.db.upgrade)")
configure(connection)
with context.begin_transaction():
    context.run_migrations()
