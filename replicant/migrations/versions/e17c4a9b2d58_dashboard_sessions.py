"""Dashboard sessions kept server-side: the cookie holds a random id, never a token

Revision ID: e17c4a9b2d58
Revises: d17a2b6c9e40
Create Date: 2026-12-07 13:00:00.000000
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "e17c4a9b2d58"
down_revision: str | Sequence[str] | None = "d17a2b6c9e40"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "dashboardsession",
        sa.Column("id_hash", sa.String(), nullable=False),
        sa.Column("token_id", sa.Integer(), nullable=False),
        sa.Column("csrf", sa.String(), nullable=False),
        sa.Column("created_at", sa.DateTime(), nullable=False),
        sa.Column("expires_at", sa.DateTime(), nullable=False),
        sa.ForeignKeyConstraint(["token_id"], ["apitoken.id"]),
        sa.PrimaryKeyConstraint("id_hash"),
    )
    with op.batch_alter_table("dashboardsession", schema=None) as batch_op:
        batch_op.create_index(
            batch_op.f("ix_dashboardsession_token_id"), ["token_id"], unique=False
        )
        batch_op.create_index(
            batch_op.f("ix_dashboardsession_expires_at"), ["expires_at"], unique=False
        )


def downgrade() -> None:
    with op.batch_alter_table("dashboardsession", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_dashboardsession_expires_at"))
        batch_op.drop_index(batch_op.f("ix_dashboardsession_token_id"))
    op.drop_table("dashboardsession")
