"""Version builds: the build table that pushes' build logs and outcomes go to

Revision ID: b7d41c2e9a05
Revises: a16e9c3d4f75
Create Date: 2026-11-30 09:15:00.000000
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "b7d41c2e9a05"
down_revision: str | Sequence[str] | None = "a16e9c3d4f75"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "build",
        sa.Column("id", sa.String(), nullable=False),
        sa.Column("owner", sa.String(), nullable=False),
        sa.Column("model", sa.String(), nullable=False),
        sa.Column("status", sa.String(), nullable=False),
        sa.Column("version_id", sa.String(), nullable=True),
        sa.Column("created", sa.Boolean(), nullable=False),
        sa.Column("logs", sa.Text(), nullable=False),
        sa.Column("error", sa.JSON(), nullable=True),
        sa.Column("created_at", sa.DateTime(), nullable=False),
        sa.Column("completed_at", sa.DateTime(), nullable=True),
        sa.PrimaryKeyConstraint("id"),
    )
    with op.batch_alter_table("build", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_build_owner"), ["owner"], unique=False)


def downgrade() -> None:
    with op.batch_alter_table("build", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_build_owner"))
    op.drop_table("build")
