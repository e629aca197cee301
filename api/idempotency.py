"""Idempotent creates (beyond Replicate): ``Idempotency-Key: <key>`` on a prediction create.

The same key from the same account within 24 hours answers the prediction the first request
made (201, the prediction as it is now), never a second run: also while the first request is
still in flight (the key's row commits with the prediction's, and the unique constraint makes
the second insert wait for the first and fail), and after the API process that took it died
between recording the prediction and starting its workflow (a retry starts it from the
workflow input kept with the key, while ``start_grace`` leaves time for that start to land;
later the reconciler fails it and forgets the key, so a retry creates it anew). A retry may
start the workflow before the first request does: that request takes it as started. A
different body with a used key is refused with 422.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, replace
from datetime import timedelta
from typing import Annotated, Any

from fastapi import Header, Request
from pydantic import BaseModel
from sqlalchemy import delete, insert
from sqlalchemy.engine import Connection
from sqlalchemy.exc import IntegrityError
from sqlmodel import Session, col, select
from temporalio.exceptions import WorkflowAlreadyStartedError

from api.errors import invalid
from api.startguard import start_deadline, start_failed
from api.state import AppState
from replicant.tables import Account, IdempotencyKey
from replicant.timeutil import as_utc, utcnow

log = logging.getLogger("replicant.api")

KEY_LIFETIME = timedelta(hours=24)
MAX_KEY_LENGTH = 255

IdempotencyHeader = Annotated[str | None, Header(alias="Idempotency-Key")]


@dataclass(frozen=True)
class Claim:
    """A create request's key, the hash of what it asked for, and (once built) the workflow
    input to keep with it."""

    owner: str
    key: str
    request_hash: str
    kind: str = "prediction"
    request: dict[str, Any] | None = None

    def with_request(self, req: BaseModel) -> Claim:
        return replace(self, request=req.model_dump(mode="json"))


class KeyTaken(Exception):
    """Another request recorded this key first (its transaction committed before ours)."""

    def __init__(self, discarded_id: str) -> None:
        super().__init__(discarded_id)
        self.discarded_id = discarded_id


def claim_for(
    key: str | None,
    account: Account,
    request: Request,
    body: dict[str, Any],
    secret_key: str,
    kind: str = "prediction",
) -> Claim | None:
    """The claim of a create request (None without the header); 422 for a malformed key.
    Its hash is keyed with ``secret_key``: a ``Secret`` input in the body cannot be guessed
    from the stored hash."""
    if key is None:
        return None
    if not 1 <= len(key) <= MAX_KEY_LENGTH or not key.isprintable():
        raise invalid(
            [
                {
                    "field": "Idempotency-Key",
                    "message": f"must be 1 to {MAX_KEY_LENGTH} printable characters",
                }
            ]
        )
    canonical = json.dumps({"path": request.url.path, "body": body}, sort_keys=True)
    digest = hmac.new(secret_key.encode(), canonical.encode(), hashlib.sha256).hexdigest()
    return Claim(owner=account.username, key=key, request_hash=digest, kind=kind)


def record_claim(conn: Connection, claim: Claim, object_id: str) -> None:
    """Insert the key's row in the caller's transaction (beside the object's own row); an
    expired row of the same key goes first. Raises ``KeyTaken`` when the key is in use."""
    expired = (
        delete(IdempotencyKey)
        .where(col(IdempotencyKey.owner) == claim.owner)
        .where(col(IdempotencyKey.key) == claim.key)
        .where(col(IdempotencyKey.created_at) < utcnow() - KEY_LIFETIME)
    )
    conn.execute(expired)
    values = {
        "owner": claim.owner,
        "key": claim.key,
        "request_hash": claim.request_hash,
        "kind": claim.kind,
        "object_id": object_id,
        "request": claim.request,
        "created_at": utcnow(),
    }
    try:
        conn.execute(insert(IdempotencyKey), values)
    except IntegrityError:  # leaving the transaction rolls back the object's row too
        raise KeyTaken(object_id) from None


def _find(session: Session, claim: Claim, table: Any) -> tuple[IdempotencyKey, Any] | None:
    row = session.exec(
        select(IdempotencyKey)
        .where(IdempotencyKey.owner == claim.owner)
        .where(IdempotencyKey.key == claim.key)
    ).first()
    if row is None or as_utc(row.created_at) < utcnow() - KEY_LIFETIME:
        return None
    return row, session.get(table, row.object_id)


def _forget(session: Session, key_id: int | None) -> None:
    session.exec(delete(IdempotencyKey).where(col(IdempotencyKey.id) == key_id))
    session.commit()


async def claimed(state: AppState, claim: Claim, table: Any) -> tuple[IdempotencyKey, Any] | None:
    """The live key of ``claim`` and the row of ``table`` it made (None: the key is unused,
    or its object was discarded because its workflow never started: create as usual); 422
    when the key was used with another request."""
    found = await state.db.read(_find, claim, table)
    if found is None:
        return None
    key_row, made = found
    if key_row.request_hash != claim.request_hash:
        raise invalid(
            [
                {
                    "field": "Idempotency-Key",
                    "message": "was used with a different request in the last 24 hours",
                }
            ]
        )
    if made is None:  # the first request failed to schedule it and removed it
        await state.db.run(_forget, key_row.id)
        return None
    return key_row, made


async def replayed(
    state: AppState,
    claim: Claim,
    table: Any,
    start: Callable[[dict[str, Any]], Awaitable[object]],
) -> Any | None:
    """The row of ``table`` that a retry with ``claim`` answers (None: the key is unused:
    create as usual). A row still ``starting`` may be one whose API died after recording it,
    or whose start is still on its way: its workflow is started from the kept workflow input
    (``start``), unless it runs or ran already. Only while the start lands inside
    ``start_grace`` (api/startguard.py): later the row is the reconciler's. 503 when
    Temporal refuses (the row and its key stay for a retry)."""
    found = await claimed(state, claim, table)
    if found is None:
        return None
    key_row, row = found
    if row.status != "starting" or key_row.request is None:
        return row
    if utcnow() >= start_deadline(row.created_at, state.settings.start_grace):
        return row
    try:
        await start(key_row.request)
    except WorkflowAlreadyStartedError:
        return row
    except Exception as err:
        raise start_failed(claim.kind, row.id, err) from err
    log.info("event=idempotent_restart %s=%s", claim.kind, row.id)
    return row
