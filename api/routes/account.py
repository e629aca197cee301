"""The account of the caller's API token: a user or an organization."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter

from api.deps import CurrentAccount

router = APIRouter(prefix="/v1", tags=["account"])


@router.get("/account")
async def get_account(account: CurrentAccount) -> dict[str, Any]:
    """``{type, username, name, github_url}``; an unset github_url is left out (spec: a URI).

    Beyond Replicate: ``fairness_weight``, the account's share of busy hardware queues.
    """
    body: dict[str, Any] = {
        "type": account.type,
        "username": account.username,
        "name": account.name or account.username,
        "fairness_weight": account.fairness_weight,
    }
    if account.github_url:
        body["github_url"] = account.github_url
    return body
