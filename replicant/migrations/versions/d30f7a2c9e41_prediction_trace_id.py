"""A prediction's trace id

Revision ID: d30f7a2c9e41
Revises: c30a7e5d9b12
Create Date: 2026-12-07 14:30:00.000000

The OpenTelemetry trace of a prediction's run, when tracing is on (docs/tracing.md).
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "d30f7a2c9e41"
down_revision: str | Sequence[str] | None = "c30a7e5d9b12"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("prediction") as batch:
        batch.add_column(sa.Column("trace_id", sa.String(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("prediction") as batch:
        batch.drop_column("trace_id")
