"""A training's trace id

Revision ID: e41b8c3d7f20
Revises: e28b6c4f1a93
Create Date: 2026-12-07 16:10:00.000000

The OpenTelemetry trace of a training's run, when tracing is on (docs/tracing.md).
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "e41b8c3d7f20"
down_revision: str | Sequence[str] | None = "e28b6c4f1a93"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("training") as batch:
        batch.add_column(sa.Column("trace_id", sa.String(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("training") as batch:
        batch.drop_column("trace_id")
