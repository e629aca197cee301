"""When a worker took a build

Revision ID: a41e8c3f7b25
Revises: e41b8c3d7f20
Create Date: 2026-12-07 16:15:00.000000

A build's ``started_at``: the moment it left ``starting`` for ``processing``.
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "a41e8c3f7b25"
down_revision: str | Sequence[str] | None = "e41b8c3d7f20"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("build") as batch:
        batch.add_column(sa.Column("started_at", sa.DateTime(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("build") as batch:
        batch.drop_column("started_at")
