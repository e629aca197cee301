"""Example predictions of models

Revision ID: a16e9c3d4f75
Revises: f16d5a1b2c64
Create Date: 2026-11-30 09:10:00.000000
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "a16e9c3d4f75"
down_revision: str | Sequence[str] | None = "f16d5a1b2c64"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "modelexample",
        sa.Column("model_id", sa.Integer(), nullable=False),
        sa.Column("prediction_id", sa.String(), nullable=False),
        sa.Column("is_default", sa.Boolean(), nullable=False),
        sa.Column("added_at", sa.DateTime(), nullable=False),
        sa.ForeignKeyConstraint(["model_id"], ["model.id"]),
        sa.PrimaryKeyConstraint("model_id", "prediction_id"),
    )
    with op.batch_alter_table("modelexample", schema=None) as batch_op:
        batch_op.create_index(
            batch_op.f("ix_modelexample_prediction_id"), ["prediction_id"], unique=False
        )


def downgrade() -> None:
    with op.batch_alter_table("modelexample", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_modelexample_prediction_id"))
    op.drop_table("modelexample")
