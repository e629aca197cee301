"""Webhook signing secrets sealed at rest

Revision ID: b24e8c1d7f30
Revises: e17c4a9b2d58
Create Date: 2026-12-07 13:30:00.000000

Each account's ``webhook_secret`` is stored sealed (``replicant.sealing``) under the
installation's ``secret_key``. Run with the key (``replicant db upgrade``, the dev stack),
this seals every plain secret; run without it, the secrets stay as they are and each is
sealed on its first use (``replicant.webhooks.account_webhook_secret``). Downgrading with the
key opens them again.
"""

from collections.abc import Callable, Sequence

import sqlalchemy as sa
from alembic import context, op

from replicant.sealing import SEALED_PREFIX
from replicant.webhooks import open_webhook_secret, seal_webhook_secret

revision: str = "b24e8c1d7f30"
down_revision: str | Sequence[str] | None = "e17c4a9b2d58"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

SECRETS = sa.text("SELECT id, webhook_secret FROM account WHERE webhook_secret IS NOT NULL")
# Guarded on the old value: a process sealing the same row on first use wins or loses whole.
STORE = sa.text("UPDATE account SET webhook_secret = :new WHERE id = :id AND webhook_secret = :old")


def _rewrite(transform: Callable[[str, str, int], str | None]) -> None:
    """Store ``transform(secret_key, stored, account_id)`` for every account's secret (None:
    leave it); nothing without a secret_key."""
    secret_key = context.config.attributes.get("secret_key")
    if not secret_key:
        return
    connection = op.get_bind()
    for account_id, stored in connection.execute(SECRETS).all():
        new = transform(secret_key, stored, account_id)
        if new is not None:
            connection.execute(STORE, {"new": new, "id": account_id, "old": stored})


def _sealed(secret_key: str, stored: str, account_id: int) -> str | None:
    if stored.startswith(SEALED_PREFIX):
        return None
    return seal_webhook_secret(stored, secret_key, account_id)


def _opened(secret_key: str, stored: str, account_id: int) -> str | None:
    if not stored.startswith(SEALED_PREFIX):
        return None
    return open_webhook_secret(stored, secret_key, account_id)


def upgrade() -> None:
    _rewrite(_sealed)


def downgrade() -> None:
    _rewrite(_opened)
