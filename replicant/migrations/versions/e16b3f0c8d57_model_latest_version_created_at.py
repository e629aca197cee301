"""Models keep when their latest version was created (sorting of the model list)

Revision ID: e16b3f0c8d57
Revises: d16c7e2f9a13
Create Date: 2026-11-30 08:50:00.000000
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "e16b3f0c8d57"
down_revision: str | Sequence[str] | None = "d16c7e2f9a13"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("model", schema=None) as batch_op:
        batch_op.add_column(sa.Column("latest_version_created_at", sa.DateTime(), nullable=True))
    op.execute(
        "UPDATE model SET latest_version_created_at = "
        "(SELECT version.created_at FROM version WHERE version.id = model.latest_version_id)"
    )


def downgrade() -> None:
    with op.batch_alter_table("model", schema=None) as batch_op:
        batch_op.drop_column("latest_version_created_at")
