"""Which versions refer to which objects of managed weights

Revision ID: b52d7e1f9a36
Revises: a41e8c3f7b25
Create Date: 2026-12-07 17:00:00.000000

``managedweightref``: a version's objects of cog.yaml's managed weights, so that an object no
version refers to any more can be removed. Versions pushed before are filled in from their
resolved weights (``<model_dir>/.cog/weights.json``) where this host can read them.
"""

import json
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path

import sqlalchemy as sa
from alembic import op

revision: str = "b52d7e1f9a36"
down_revision: str | Sequence[str] | None = "a41e8c3f7b25"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    refs = op.create_table(
        "managedweightref",
        sa.Column("version_id", sa.String(), nullable=False),
        sa.Column("object_key", sa.String(), nullable=False),
        sa.Column("created_at", sa.DateTime(), nullable=False),
        sa.PrimaryKeyConstraint("version_id", "object_key"),
    )
    with op.batch_alter_table("managedweightref", schema=None) as batch_op:
        batch_op.create_index(
            batch_op.f("ix_managedweightref_object_key"), ["object_key"], unique=False
        )
    now = datetime.now(UTC).replace(tzinfo=None)
    rows = []
    versions = op.get_bind().execute(sa.text("SELECT id, model_dir FROM version")).all()
    for version_id, model_dir in versions:
        for key in _keys(Path(model_dir) / ".cog" / "weights.json"):
            rows.append({"version_id": version_id, "object_key": key, "created_at": now})
    if rows and refs is not None:
        op.bulk_insert(refs, rows)


def _keys(manifest: Path) -> set[str]:
    """The object keys a version's resolved weights name (none when unreadable)."""
    try:
        weights = json.loads(manifest.read_text(encoding="utf-8"))["weights"]
        return {str(f["key"]) for w in weights for f in w["files"] if "key" in f}
    except (OSError, ValueError, KeyError, TypeError):
        return set()


def downgrade() -> None:
    with op.batch_alter_table("managedweightref", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_managedweightref_object_key"))
    op.drop_table("managedweightref")
