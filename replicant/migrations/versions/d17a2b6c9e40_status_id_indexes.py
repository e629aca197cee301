"""Indexes by status and id behind the reconciler's pages of unfinished rows

Revision ID: d17a2b6c9e40
Revises: c7e52a9d1f36
Create Date: 2026-11-30 13:00:00.000000
"""

from collections.abc import Sequence

from alembic import op

revision: str = "d17a2b6c9e40"
down_revision: str | Sequence[str] | None = "c7e52a9d1f36"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

TABLES = ("prediction", "training", "build")


def upgrade() -> None:
    for table in TABLES:
        with op.batch_alter_table(table, schema=None) as batch_op:
            batch_op.create_index(f"ix_{table}_status_id", ["status", "id"], unique=False)


def downgrade() -> None:
    for table in TABLES:
        with op.batch_alter_table(table, schema=None) as batch_op:
            batch_op.drop_index(f"ix_{table}_status_id")
