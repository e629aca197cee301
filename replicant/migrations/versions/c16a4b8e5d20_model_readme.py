"""Models keep their README

Revision ID: c16a4b8e5d20
Revises: b16e2d9a7f31
Create Date: 2026-11-30 08:35:00.000000
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "c16a4b8e5d20"
down_revision: str | Sequence[str] | None = "b16e2d9a7f31"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("model", schema=None) as batch_op:
        batch_op.add_column(sa.Column("readme", sa.Text(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("model", schema=None) as batch_op:
        batch_op.drop_column("readme")
