"""Indexes behind the filters of the prediction and training lists

Revision ID: a16f1e7c0d42
Revises: a7f3c2e91b04
Create Date: 2026-11-30 08:30:00.000000
"""

from collections.abc import Sequence

from alembic import op

revision: str = "a16f1e7c0d42"
down_revision: str | Sequence[str] | None = "a7f3c2e91b04"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

FILTERS = {
    "prediction": ("status", "model", "version", "deployment", "source"),
    "training": ("status", "model", "version", "source"),
}


def upgrade() -> None:
    for table, columns in FILTERS.items():
        with op.batch_alter_table(table, schema=None) as batch_op:
            for column in columns:
                batch_op.create_index(
                    f"ix_{table}_owner_{column}_created",
                    ["owner", column, "created_at", "id"],
                    unique=False,
                )


def downgrade() -> None:
    for table, columns in FILTERS.items():
        with op.batch_alter_table(table, schema=None) as batch_op:
            for column in columns:
                batch_op.drop_index(f"ix_{table}_owner_{column}_created")
