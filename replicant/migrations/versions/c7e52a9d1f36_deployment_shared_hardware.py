"""Deployments on shared hardware: the deployment's flag and its predictions' mark

Revision ID: c7e52a9d1f36
Revises: b7d41c2e9a05
Create Date: 2026-11-30 11:45:00.000000
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "c7e52a9d1f36"
down_revision: str | Sequence[str] | None = "b7d41c2e9a05"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("deployment", schema=None) as batch_op:
        batch_op.add_column(
            sa.Column("shared_hardware", sa.Boolean(), nullable=False, server_default=sa.false())
        )
    with op.batch_alter_table("prediction", schema=None) as batch_op:
        batch_op.add_column(
            sa.Column("deployment_shared", sa.Boolean(), nullable=False, server_default=sa.false())
        )


def downgrade() -> None:
    with op.batch_alter_table("prediction", schema=None) as batch_op:
        batch_op.drop_column("deployment_shared")
    with op.batch_alter_table("deployment", schema=None) as batch_op:
        batch_op.drop_column("shared_hardware")
