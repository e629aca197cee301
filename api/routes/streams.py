"""Server-sent events of a streaming prediction: output chunks and logs as they come.

The URL is ``urls.stream`` of the prediction: unguessable (signed with the secret key) and
tokenless, because the JS client sends no token. The source is the read model, which every
API process can read, so a client may connect to any of them, and late: it first gets
everything produced so far, then the rest.
"""

from __future__ import annotations

import asyncio
import hmac
import json
from collections.abc import AsyncIterator
from typing import Annotated, Any

from fastapi import APIRouter, Header
from sqlmodel import Session
from sse_starlette import EventSourceResponse, ServerSentEvent

from api.deps import DatabaseDep, StateDep
from api.errors import not_found
from api.state import AppState
from replicant.serialize import stream_signature
from replicant.tables import TERMINAL_STATUSES, Prediction

router = APIRouter(prefix="/v1", tags=["predictions"])

# How often a stream looks at the read model for new output.
POLL_INTERVAL = 0.05


@router.get("/predictions/{prediction_id}/stream", response_class=EventSourceResponse)
async def stream_prediction(
    prediction_id: str,
    state: StateDep,
    db: DatabaseDep,
    sig: str = "",
    last_event_id: Annotated[str | None, Header(alias="Last-Event-ID")] = None,
) -> EventSourceResponse:
    expected = stream_signature(prediction_id, state.secret_key)
    if not hmac.compare_digest(sig.encode(), expected.encode()):
        raise not_found(f"Prediction {prediction_id}")
    row = await db.read(_load, prediction_id)
    if row is None or not row.stream:
        raise not_found(f"Prediction {prediction_id}")
    outputs, logs = resume_cursor(last_event_id)
    return EventSourceResponse(
        prediction_events(state, prediction_id, outputs, logs),
        ping=state.settings.stream_keepalive,
        headers={"Cache-Control": "no-store"},
    )


def _load(session: Session, prediction_id: str) -> Prediction | None:
    return session.get(Prediction, prediction_id)


def resume_cursor(last_event_id: str | None) -> tuple[int, int]:
    """Resume after ``Last-Event-ID`` (``<outputs sent>:<log characters sent>``)."""
    if last_event_id:
        first, _, second = last_event_id.partition(":")
        if first.isdigit() and second.isdigit():
            return int(first), int(second)
    return 0, 0


def _chunks(output: Any) -> list[Any]:
    if output is None:
        return []
    return output if isinstance(output, list) else [output]


def _data(chunk: Any) -> str:
    return chunk if isinstance(chunk, str) else json.dumps(chunk)


async def prediction_events(
    state: AppState, prediction_id: str, outputs: int, logs: int
) -> AsyncIterator[ServerSentEvent]:
    while True:
        row = await state.db.read(_load, prediction_id)
        if row is None:
            return
        terminal = row.status in TERMINAL_STATUSES
        text = row.logs or ""
        if len(text) > logs:
            # Whole lines only while running; the rest once the prediction is over.
            end = len(text) if terminal else text.rfind("\n", logs) + 1
            if end > logs:
                for line in text[logs:end].splitlines():
                    yield ServerSentEvent(line, event="logs", id=f"{outputs}:{logs}")
                logs = end
        for chunk in _chunks(row.output)[outputs:]:
            outputs += 1
            yield ServerSentEvent(_data(chunk), event="output", id=f"{outputs}:{logs}")
        if terminal:
            cursor = f"{outputs}:{logs}"
            if row.status == "succeeded":
                yield ServerSentEvent("{}", event="done", id=cursor)
            elif row.status == "canceled":
                yield ServerSentEvent('{"reason": "canceled"}', event="done", id=cursor)
            else:
                yield ServerSentEvent(row.error or "Prediction failed", event="error", id=cursor)
                yield ServerSentEvent('{"reason": "error"}', event="done", id=cursor)
            return
        await asyncio.sleep(POLL_INTERVAL)
