"""The account of the caller's API token: a user or an organization."""

from __future__ import annotations

from fastapi import APIRouter

from api.deps import CurrentAccount
from replicant import responses, serialize

router = APIRouter(prefix="/v1", tags=["account"])


@router.get("/account", response_model_exclude_unset=True)
async def get_account(account: CurrentAccount) -> responses.Account:
    """``{type, username, name, github_url}``; an unset github_url is left out (spec: a URI).

    Beyond Replicate: ``fairness_weight``, the account's share of busy hardware queues.
    """
    return serialize.account(account)
