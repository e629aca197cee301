"""The account's webhook signing secret."""

from __future__ import annotations

import asyncio

from fastapi import APIRouter

from api.deps import CurrentAccount, StateDep
from replicant import responses
from replicant.webhooks import account_webhook_secret

router = APIRouter(prefix="/v1", tags=["webhooks"])


@router.get("/webhooks/default/secret")
async def default_webhook_secret(
    state: StateDep, account: CurrentAccount
) -> responses.WebhookSecret:
    """The key that signs every webhook of the account (Standard Webhooks, ``whsec_...``)."""
    key = await asyncio.to_thread(
        account_webhook_secret, state.engine, account.username, state.secret_key
    )
    return responses.WebhookSecret(key=key)
