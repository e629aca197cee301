"""Webhook deliveries: the account's signing secret, Standard Webhooks signatures, one POST.

Each account's signing secret is stored sealed (``replicant.sealing``, under the
installation's ``secret_key``): a copy of the database alone does not let anyone forge
webhooks.

Signed as Replicate signs them (https://www.standardwebhooks.com): ``webhook-id`` (the same
for every retry of one event), ``webhook-timestamp`` (of this attempt, so a verifier's
five-minute tolerance holds for late retries) and ``webhook-signature``.
"""

from __future__ import annotations

import base64
import binascii
import json
import logging
import re
import secrets
from datetime import UTC, datetime
from typing import Any
from urllib.parse import urlsplit

import httpx
from sqlalchemy import update
from sqlalchemy.engine import Engine
from sqlmodel import Session, col, select
from standardwebhooks import Webhook

from replicant.netguard import BlockedURL, check_target
from replicant.safefetch import address_policy, pinned, resolve
from replicant.sealing import SEALED_PREFIX, UnsealError, seal, unseal
from replicant.settings import get_settings
from replicant.tables import Account

log = logging.getLogger("replicant.webhooks")

SECRET_PREFIX = "whsec_"
# Standard base64 only: verifiers decode the part after "whsec_" with b64decode, and
# Replicate's own client splits the key on "_".
_SECRET_BODY = re.compile(r"^[A-Za-z0-9+/]+={0,2}$")


def new_secret() -> str:
    return SECRET_PREFIX + base64.b64encode(secrets.token_bytes(24)).decode()


def valid_secret(secret: str | None) -> bool:
    if not secret or not secret.startswith(SECRET_PREFIX):
        return False
    body = secret[len(SECRET_PREFIX) :]
    if not _SECRET_BODY.match(body):
        return False
    try:
        return len(base64.b64decode(body, validate=True)) >= 16
    except binascii.Error:
        return False


def _sealing_context(account_id: int | None) -> str:
    # Binds a sealed secret to its account: copied to another row it does not open.
    return f"account:{account_id}:webhook_secret"


def seal_webhook_secret(secret: str, secret_key: str, account_id: int | None) -> str:
    """An account's signing secret as it is stored: sealed (``replicant.sealing``)."""
    return seal(secret, secret_key, _sealing_context(account_id))


def _stored(engine: Engine, username: str) -> tuple[int | None, str | None]:
    with Session(engine) as session:
        account = session.exec(select(Account).where(Account.username == username)).first()
        if account is None:
            raise LookupError(f"account {username} does not exist")
        return account.id, account.webhook_secret


def open_webhook_secret(stored: str | None, secret_key: str, account_id: int | None) -> str | None:
    """The plain secret of a stored one (sealed, or plain from an older release); None when
    there is none or it was sealed under another ``secret_key``."""
    if not stored:
        return None
    try:
        return unseal(stored, secret_key, _sealing_context(account_id))
    except UnsealError:
        log.warning(
            "event=webhook_secret_unreadable account_id=%s (secret_key changed)", account_id
        )
        return None


def account_webhook_secret(engine: Engine, username: str, secret_key: str | None = None) -> str:
    """The account's signing secret. It is stored sealed under ``secret_key`` (the process's
    settings' when None): a plain one (an older release's) is sealed in place, and one that
    verifiers cannot decode, or that another ``secret_key`` sealed, is replaced, once."""
    key = secret_key or get_settings().ensure_secret_key()
    account_id, stored = _stored(engine, username)
    current = open_webhook_secret(stored, key, account_id)
    if valid_secret(current) and stored is not None and stored.startswith(SEALED_PREFIX):
        assert current is not None
        return current
    # Sealed at rest from now on: the plain secret, or a new one when it is not usable.
    value = current if valid_secret(current) and current is not None else new_secret()
    # Guarded on the old value: concurrent callers (API, workers) end up with one secret.
    stmt = (
        update(Account)
        .where(col(Account.username) == username)
        .where(
            col(Account.webhook_secret) == stored
            if stored
            else col(Account.webhook_secret).is_(None)
        )
        .values(webhook_secret=seal_webhook_secret(value, key, account_id))
    )
    with engine.begin() as conn:
        conn.execute(stmt)
    account_id, stored = _stored(engine, username)
    opened = open_webhook_secret(stored, key, account_id)
    assert opened is not None
    return opened


def webhook_id(prediction_id: str, event: str, sequence: int = 0) -> str:
    """Stable across the retries of one event, distinct between events."""
    return f"msg_{prediction_id}_{event}_{sequence}"


def encode_body(body: dict[str, Any]) -> str:
    return json.dumps(body, separators=(",", ":"), ensure_ascii=False)


def signed_headers(
    secret: str, msg_id: str, payload: str, now: datetime | None = None
) -> dict[str, str]:
    """The Standard Webhooks headers of one attempt."""
    at = now or datetime.now(UTC)
    return {
        "content-type": "application/json",
        "user-agent": "replicant-webhooks/1",
        "webhook-id": msg_id,
        "webhook-timestamp": str(int(at.timestamp())),
        "webhook-signature": Webhook(secret).sign(msg_id, at, payload),
    }


class DeliveryFailed(Exception):
    """The receiver did not answer 2xx (``status`` is its answer, None: no answer)."""

    def __init__(self, message: str, status: int | None = None, permanent: bool = False) -> None:
        super().__init__(message)
        self.status = status
        self.permanent = permanent


async def deliver(
    client: httpx.AsyncClient,
    url: str,
    *,
    secret: str,
    msg_id: str,
    body: dict[str, Any],
    time_limit: float,
    allow_private: bool,
) -> int:
    """POST one signed delivery; the receiver's 2xx status, or ``DeliveryFailed``.

    Redirects are not followed: a 3xx is a permanent failure (never retried); the URL must
    pass the SSRF rules.
    """
    try:
        host = check_target(url, allow_private)
        parts = urlsplit(url)
        port = parts.port or (443 if parts.scheme.lower() == "https" else 80)
        # Connect to the very address that was checked (no second, rebindable lookup).
        address = await resolve(host, port, address_policy(allow_private))
    except BlockedURL as err:
        # A name that does not resolve may resolve later; a refused address will not change.
        permanent = not str(err).endswith("does not resolve")
        raise DeliveryFailed(f"webhook URL refused: {err}", permanent=permanent) from err
    target, host_header, server_name = pinned(url, address)
    payload = encode_body(body)
    headers = signed_headers(secret, msg_id, payload)
    headers["host"] = host_header
    request = client.build_request(
        "POST",
        target,
        content=payload.encode(),
        headers=headers,
        timeout=httpx.Timeout(time_limit),
        extensions={"sni_hostname": server_name},
    )
    try:
        response = await client.send(request, follow_redirects=False)
    except httpx.TimeoutException as err:
        raise DeliveryFailed(f"webhook receiver timed out after {time_limit:g}s") from err
    except httpx.HTTPError as err:
        raise DeliveryFailed(f"webhook receiver unreachable: {type(err).__name__}") from err
    status = response.status_code
    if 200 <= status < 300:
        return status
    if 300 <= status < 400:
        # Following it would skip the SSRF check of the new target, and the receiver will
        # answer the same URL the same way next time: a permanent failure, not retried.
        raise DeliveryFailed(
            f"webhook receiver redirect (not followed, not retried): HTTP {status}",
            status=status,
            permanent=True,
        )
    raise DeliveryFailed(f"webhook receiver answer: HTTP {status}", status=status)


def http_client() -> httpx.AsyncClient:
    # trust_env=False: a proxy from the environment must not decide where webhooks go.
    return httpx.AsyncClient(trust_env=False, follow_redirects=False)
