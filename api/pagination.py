"""Keyset pagination, newest first, as Replicate's lists: ``{next, previous, results}``.

A cursor names a row by (created_at, id) and a direction, so pages stay stable while new
rows arrive and every page is one indexed range scan.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Callable, Sequence
from datetime import datetime
from typing import Any, TypeVar
from urllib.parse import urlencode

from sqlalchemy import and_, or_
from sqlmodel import Session, col
from sqlmodel.sql.expression import SelectOfScalar

from api.errors import invalid
from api.queueboard import QueueBoard
from api.serialize import prediction_object
from replicant import responses
from replicant.tables import Prediction
from replicant.timeutil import as_utc, isoformat

T = TypeVar("T")
PAGE_SIZE = 100


def encode_cursor(created_at: datetime, row_id: object, direction: str) -> str:
    raw = json.dumps([direction, isoformat(as_utc(created_at)), row_id])
    return base64.urlsafe_b64encode(raw.encode()).decode().rstrip("=")


def decode_cursor(cursor: str) -> tuple[str, datetime, Any]:
    """(direction, created_at, id) of a cursor; 422 when it is not one of ours."""
    try:
        padded = cursor + "=" * (-len(cursor) % 4)
        direction, created, row_id = json.loads(base64.urlsafe_b64decode(padded))
        if direction not in ("next", "previous"):
            raise ValueError(direction)
        return direction, as_utc(datetime.fromisoformat(created.replace("Z", "+00:00"))), row_id
    except (ValueError, TypeError) as err:
        raise invalid([{"field": "cursor", "message": "is not a valid cursor"}]) from err


def paginate(
    session: Session,
    stmt: SelectOfScalar[T],
    created: Any,
    row_id: Any,
    *,
    cursor: str | None,
    page_url: str,
    render: Callable[[Session, Sequence[T]], Sequence[Any]],
    page_size: int = PAGE_SIZE,
    params: dict[str, str] | None = None,
    descending: bool = True,
    key: Callable[[Any], datetime] | None = None,
) -> dict[str, Any]:
    """One page of ``stmt`` ordered by (created, id), newest first unless not
    ``descending``, with absolute cursor URLs (``{next, previous, results}``, validated into a
    page model by the route). ``created`` may be an expression: then ``key``
    computes its value for a row (default: the row's ``created_at``)."""
    direction, at, at_id = decode_cursor(cursor) if cursor else ("next", None, None)
    # Whether this page walks toward smaller (created, id) values.
    down = (direction == "next") == descending
    if at is not None and down:
        stmt = stmt.where(or_(created < at, and_(created == at, row_id < at_id)))
    elif at is not None:
        stmt = stmt.where(or_(created > at, and_(created == at, row_id > at_id)))
    order = (created.desc(), row_id.desc()) if down else (created, row_id)
    rows = list(session.exec(stmt.order_by(*order).limit(page_size + 1)).all())
    more = len(rows) > page_size
    rows = rows[:page_size]
    if direction == "previous":
        rows.reverse()
    results = render(session, rows)
    has_next = more if direction == "next" else at is not None
    has_previous = (at is not None) if direction == "next" else more

    def link(row: Any, to: str) -> str:
        value = key(row) if key is not None else row.created_at
        query = {**(params or {}), "cursor": encode_cursor(value, row.id, to)}
        return f"{page_url}?{urlencode(query)}"

    return {
        "next": link(rows[-1], "next") if rows and has_next else None,
        "previous": link(rows[0], "previous") if rows and has_previous else None,
        "results": results,
    }


def prediction_page(
    session: Session,
    stmt: SelectOfScalar[Prediction],
    base: str,
    *,
    secret_key: str,
    cursor: str | None,
    page_url: str,
    page_size: int = PAGE_SIZE,
    params: dict[str, str] | None = None,
    queue: QueueBoard | None = None,
) -> responses.PredictionPage:
    """One page of predictions, newest first, each as the API shows it; with ``queue`` (from
    a synchronous route's thread), each that has not started says why it waits (``queue``,
    replicant/queueing.py)."""

    def render(session: Session, rows: Sequence[Prediction]) -> list[responses.Prediction]:
        shown = [prediction_object(r, base, secret_key=secret_key) for r in rows]
        if queue is not None:
            queue.show_from_thread(rows, shown)
        return shown

    page = paginate(
        session,
        stmt,
        col(Prediction.created_at),
        col(Prediction.id),
        cursor=cursor,
        page_url=page_url,
        render=render,
        page_size=page_size,
        params=params,
    )
    return responses.PredictionPage.model_validate(page)
