"""Fair hardware queues: account weight and deployment priority

Revision ID: a7f3c2e91b04
Revises: cd438bbf836e
Create Date: 2026-11-30 08:20:00.000000
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "a7f3c2e91b04"
down_revision: str | Sequence[str] | None = "cd438bbf836e"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("account", schema=None) as batch_op:
        batch_op.add_column(
            sa.Column("fairness_weight", sa.Float(), nullable=False, server_default="1.0")
        )
    with op.batch_alter_table("deployment", schema=None) as batch_op:
        batch_op.add_column(sa.Column("priority", sa.Integer(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("deployment", schema=None) as batch_op:
        batch_op.drop_column("priority")
    with op.batch_alter_table("account", schema=None) as batch_op:
        batch_op.drop_column("fairness_weight")
