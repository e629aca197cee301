"""What a run that has not started waits for

Revision ID: c30a7e5d9b12
Revises: b24e8c1d7f30
Create Date: 2026-12-07 14:00:00.000000

A prediction's or training's ``waiting``: null while it waits for a hardware slot,
``booting`` or ``building`` once it holds one and its model process or environment is not
ready yet (docs/usage.md, "Why it waits").
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "c30a7e5d9b12"
down_revision: str | Sequence[str] | None = "b24e8c1d7f30"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    for table in ("prediction", "training"):
        with op.batch_alter_table(table) as batch:
            batch.add_column(sa.Column("waiting", sa.String(), nullable=True))


def downgrade() -> None:
    for table in ("prediction", "training"):
        with op.batch_alter_table(table) as batch:
            batch.drop_column("waiting")
