"""A version's health check and boot log

Revision ID: e28b6c4f1a93
Revises: d30f7a2c9e41
Create Date: 2026-12-07 16:10:00.000000

Whether the version's predictor has a ``healthcheck()`` (found at push; NULL for a version
pushed before, read from its predictor file instead), and the log of the states its model
processes were stopped for (setup failed, defunct, unhealthy).
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "e28b6c4f1a93"
down_revision: str | Sequence[str] | None = "d30f7a2c9e41"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("version") as batch:
        batch.add_column(sa.Column("healthcheck", sa.Boolean(), nullable=True))
        batch.add_column(sa.Column("boot_logs", sa.Text(), nullable=False, server_default=""))


def downgrade() -> None:
    with op.batch_alter_table("version") as batch:
        batch.drop_column("boot_logs")
        batch.drop_column("healthcheck")
