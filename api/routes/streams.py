"""Server-sent events of a prediction or a training: logs, output and the end as they come.

The URL is ``urls.stream`` of the prediction (when its model streams) or of the training:
unguessable (signed with the secret key) and tokenless, because the JS client sends no token.
The source is the read model, which every API process can read, so a client may connect to
any of them, and late: it first gets everything produced so far, then the rest. The
dashboard's pages follow the same events (``events_response``).
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import json
from collections.abc import AsyncGenerator, AsyncIterator
from typing import Annotated, Any

from fastapi import APIRouter, Header
from sqlmodel import Session
from sse_starlette import EventSourceResponse, ServerSentEvent

from api.deps import DatabaseDep, StateDep
from api.errors import not_found
from api.state import AppState, Database
from api.streamboard import Follower, Streamed
from replicant.serialize import stream_signature, training_output
from replicant.tables import TERMINAL_STATUSES, Prediction, Training

router = APIRouter(prefix="/v1")

# The table of each kind of stream, by its URL's collection.
TABLES: dict[str, Streamed] = {"predictions": Prediction, "trainings": Training}
LastEventId = Annotated[str | None, Header(alias="Last-Event-ID")]


@router.get(
    "/predictions/{prediction_id}/stream",
    response_class=EventSourceResponse,
    tags=["predictions"],
)
async def stream_prediction(
    prediction_id: str,
    state: StateDep,
    db: DatabaseDep,
    sig: str = "",
    last_event_id: LastEventId = None,
) -> EventSourceResponse:
    row = await _signed(state, db, "predictions", prediction_id, sig)
    if not isinstance(row, Prediction) or not row.stream:
        raise not_found(f"Prediction {prediction_id}")
    return events_response(state, Prediction, prediction_id, last_event_id)


@router.get(
    "/trainings/{training_id}/stream", response_class=EventSourceResponse, tags=["trainings"]
)
async def stream_training(
    training_id: str,
    state: StateDep,
    db: DatabaseDep,
    sig: str = "",
    last_event_id: LastEventId = None,
) -> EventSourceResponse:
    """A training's logs as they are written, its output (the version it produced) and its
    end: the events of a prediction's stream."""
    await _signed(state, db, "trainings", training_id, sig)
    return events_response(state, Training, training_id, last_event_id)


async def _signed(
    state: AppState, db: Database, kind: str, object_id: str, sig: str
) -> Prediction | Training:
    """The row behind a stream URL; 404 for a wrong signature or a missing row alike."""
    expected = stream_signature(object_id, state.secret_key, kind)
    row = None
    if hmac.compare_digest(sig.encode(), expected.encode()):
        row = await db.read(_load, TABLES[kind], object_id)
    if row is None:
        raise not_found(f"{kind[:-1].capitalize()} {object_id}")
    return row


def events_response(
    state: AppState, table: Streamed, object_id: str, cursor: str | None
) -> EventSourceResponse:
    """The stream of one prediction or training, resumed after ``cursor`` (an event id)."""
    outputs, logs = resume_cursor(cursor)
    events = row_events(state, table, object_id, outputs, logs)
    return EventSourceResponse(
        keep_alive(events, state.settings.stream_keepalive),
        ping=0,  # keep_alive sends them, and only while the stream is quiet
        headers={"Cache-Control": "no-store"},
    )


async def keep_alive(
    events: AsyncIterator[ServerSentEvent], quiet: float
) -> AsyncIterator[ServerSentEvent]:
    """``events``, with a keep-alive comment (so proxies keep the connection) after every
    ``quiet`` seconds without an event; none while events flow."""
    pending: asyncio.Task[ServerSentEvent | None] | None = None
    try:
        while True:
            if pending is None:
                pending = asyncio.create_task(_next(events))
            done, _ = await asyncio.wait({pending}, timeout=quiet)
            if not done:
                yield ServerSentEvent(comment="ping")
                continue
            event, pending = pending.result(), None
            if event is None:
                return
            yield event
    finally:
        if pending is not None and not pending.done():
            pending.cancel()
            with contextlib.suppress(BaseException):
                await pending
        if isinstance(events, AsyncGenerator):
            await events.aclose()  # now, not when collected: it counts as an open stream


async def _next(events: AsyncIterator[ServerSentEvent]) -> ServerSentEvent | None:
    return await anext(events, None)


def _load(session: Session, table: Streamed, object_id: str) -> Prediction | Training | None:
    if table is Prediction:
        return session.get(Prediction, object_id)
    return session.get(Training, object_id)


def resume_cursor(last_event_id: str | None) -> tuple[int, int]:
    """Resume after ``Last-Event-ID`` (``<outputs sent>:<log characters sent>``)."""
    if last_event_id:
        first, _, second = last_event_id.partition(":")
        if first.isdigit() and second.isdigit():
            return int(first), int(second)
    return 0, 0


def event_cursor(output: Any, logs: str | None) -> str:
    """The event id after everything in ``output`` and ``logs`` (what a page already shows)."""
    return f"{len(_chunks(output))}:{len(logs or '')}"


def _chunks(output: Any) -> list[Any]:
    if output is None:
        return []
    return output if isinstance(output, list) else [output]


async def _outputs(state: AppState, row: Prediction | Training) -> list[Any]:
    """The output events' data: a prediction's chunks, or a training's output as its
    training object carries it (with the signed weights URL)."""
    if isinstance(row, Prediction):
        return _chunks(row.output)
    if not row.output:
        return []
    await state.store()  # opened in a thread on first use
    return [training_output(row, state.signed_output_url)]


def _data(chunk: Any) -> str:
    return chunk if isinstance(chunk, str) else json.dumps(chunk)


async def row_events(
    state: AppState, table: Streamed, object_id: str, outputs: int, logs: int
) -> AsyncIterator[ServerSentEvent]:
    """``logs`` (a line each), ``output`` (an iterator's chunk each, or the whole output) and
    at the end ``done`` (after an ``error`` when it failed), read from the read model: each
    time the run's row changed, as the process's stream board reads it (api/streamboard.py)."""
    with state.streams.follow(table, object_id) as follower:
        async for event in _row_events(state, follower, outputs, logs):
            yield event


async def _row_events(
    state: AppState, follower: Follower, outputs: int, logs: int
) -> AsyncIterator[ServerSentEvent]:
    while True:
        row = await follower.next()
        if row is None:
            return
        terminal = row.status in TERMINAL_STATUSES
        text = row.logs or ""
        if len(text) > logs:
            # Whole lines only while running; the rest once it is over.
            end = len(text) if terminal else text.rfind("\n", logs) + 1
            if end > logs:
                for line in text[logs:end].splitlines():
                    yield ServerSentEvent(line, event="logs", id=f"{outputs}:{logs}")
                logs = end
        for chunk in (await _outputs(state, row))[outputs:]:
            outputs += 1
            yield ServerSentEvent(_data(chunk), event="output", id=f"{outputs}:{logs}")
        if terminal:
            for event in end_events(row, f"{outputs}:{logs}"):
                yield event
            return


def end_events(row: Prediction | Training, cursor: str) -> list[ServerSentEvent]:
    """The events that end a stream: ``done`` (``{}``, or its ``reason``: ``canceled``, or
    ``error`` after an ``error`` event with the message), carrying the run's ``metrics`` (the
    ones its model recorded, ``predict_time``, ``total_time``) as ``GET`` shows them."""
    done: dict[str, Any] = {}
    events = []
    if row.status == "canceled":
        done["reason"] = "canceled"
    elif row.status != "succeeded":
        failed = f"{type(row).__name__} failed"
        events.append(ServerSentEvent(row.error or failed, event="error", id=cursor))
        done["reason"] = "error"
    if row.metrics:
        done["metrics"] = row.metrics
    events.append(ServerSentEvent(json.dumps(done), event="done", id=cursor))
    return events
