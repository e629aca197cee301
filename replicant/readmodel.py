"""Writes to the prediction read model, shared by the API and the activities.

Every write is an idempotent upsert or a guarded update: once a prediction is terminal,
no late write (a retried activity, a slow heartbeat) can change its status again.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime
from typing import Any

from sqlalchemy import bindparam, insert, update
from sqlalchemy.engine import Connection, Engine
from sqlalchemy.exc import IntegrityError
from sqlmodel import Session, col, select

from replicant.contracts import PredictionRequest
from replicant.tables import TERMINAL_STATUSES, Model, ModelExample, Prediction
from replicant.timeutil import as_utc, utcnow
from replicant.usage import with_cost


def prediction_from_request(req: PredictionRequest) -> Prediction:
    return Prediction(
        id=req.id,
        owner=req.owner,
        model=req.model,
        version=req.version,
        deployment=req.deployment,
        # No task queue of its own: a deployment's prediction waits on the shared hardware queue.
        deployment_shared=req.deployment is not None and req.task_queue is None,
        source=req.source,
        input=req.input,
        webhook=req.webhook,
        webhook_events_filter=list(req.webhook_events_filter)
        if req.webhook_events_filter is not None
        else None,
        stream=req.stream,
        hardware=req.hardware,
        created_at=req.created_at or utcnow(),
        deadline=req.deadline,
        trace_id=req.trace_id,
    )


PREDICTION_COLUMNS = list(Prediction.__table__.columns)  # type: ignore[attr-defined]


# Built once: the two statements of every create (the ORM's unit of work costs more than the
# statements themselves, and so does building them again for each).
_INSERT_PREDICTION = insert(Prediction)
_COUNT_RUN = (
    update(Model)
    .where(col(Model.owner) == bindparam("run_owner"), col(Model.name) == bindparam("run_name"))
    .values(run_count=col(Model.run_count) + 1)
)


def record_new_prediction(conn: Connection, req: PredictionRequest) -> None:
    """INSERT the prediction's row and count one more run of its model, in the caller's
    transaction. Plain statements: this is on every prediction's path."""
    row = prediction_from_request(req)
    conn.execute(_INSERT_PREDICTION, {c.name: getattr(row, c.name) for c in PREDICTION_COLUMNS})
    # One UPDATE, so concurrent predictions never lose a count.
    owner, _, name = req.model.partition("/")
    conn.execute(_COUNT_RUN, {"run_owner": owner, "run_name": name})


def insert_prediction(engine: Engine, req: PredictionRequest) -> bool:
    """Create the row of a prediction started outside the API and count its run, unless the
    row exists (a retried activity): a prediction counts once, whoever started it."""
    try:
        with engine.begin() as conn:
            record_new_prediction(conn, req)
    except IntegrityError:
        with Session(engine) as session:
            if session.get(Prediction, req.id) is None:
                raise
        return False
    return True


def update_open_stmt(table: Any, row_id: str, values: dict[str, Any]) -> Any:
    """An UPDATE of a row of ``table`` (predictions, trainings) that is not terminal yet."""
    return (
        update(table)
        .where(col(table.id) == row_id)
        .where(col(table.status).not_in(TERMINAL_STATUSES))
        .values(**values)
    )


def update_open(
    engine: Engine, row_id: str, values: dict[str, Any], table: Any = Prediction
) -> bool:
    """Update a row that is not terminal yet; False when it already was."""
    with engine.begin() as conn:
        return bool(conn.execute(update_open_stmt(table, row_id, values)).rowcount)


def _update_open(engine: Engine, prediction_id: str, values: dict[str, Any]) -> bool:
    return update_open(engine, prediction_id, values)


def mark_processing(engine: Engine, prediction_id: str, started_at: datetime) -> bool:
    return _update_open(engine, prediction_id, {"status": "processing", "started_at": started_at})


def mark_waiting(engine: Engine, table: Any, run_id: str, waiting: str) -> bool:
    """What a run that holds a slot but has not started waits for (replicant/queueing.py);
    nothing once it started."""
    stmt = (
        update(table)
        .where(col(table.id) == run_id, col(table.status) == "starting")
        .values(waiting=waiting)
    )
    with engine.begin() as conn:
        return bool(conn.execute(stmt).rowcount)


def record_progress(engine: Engine, prediction_id: str, logs: str, output: Any) -> bool:
    """Live logs and partial output while the model runs."""
    return _update_open(engine, prediction_id, {"logs": logs, "output": output})


# The metrics Replicant measures itself: a model's metric of the same name is dropped.
OWN_METRICS = ("predict_time", "total_time")


def with_model_metrics(model_metrics: dict[str, Any] | None, own: dict[str, Any]) -> dict[str, Any]:
    """A run's metrics: the ones its model recorded, then Replicant's own (``own``)."""
    merged = {k: v for k, v in (model_metrics or {}).items() if k not in OWN_METRICS}
    return merged | own


def finish_prediction(
    engine: Engine,
    prediction_id: str,
    *,
    status: str,
    completed_at: datetime,
    error: str | None = None,
    output: Any = None,
    logs: str | None = None,
    started_at: datetime | None = None,
    created_at: datetime | None = None,
    model_metrics: dict[str, Any] | None = None,
    hardware: str | None = None,
    prices: Mapping[str, float] | None = None,
) -> bool:
    """Record the terminal state, with metrics (with ``prices``, the run's cost on its
    ``hardware``, replicant/usage.py); a prediction ends only once.

    ``model_metrics`` are the ones the model recorded (Cog's ``record_metric``): they sit
    beside Replicant's own timings and cost, which they cannot overwrite. With
    ``created_at`` (the row's), ``started_at`` and ``hardware`` known, this is one guarded
    UPDATE; otherwise the row is read first for them.
    """
    if created_at is not None and started_at is not None and hardware is not None:
        started: datetime | None = started_at
    else:
        with Session(engine) as session:
            row = session.get(Prediction, prediction_id)
            if row is None or row.status in TERMINAL_STATUSES:
                return False
            started = started_at or (as_utc(row.started_at) if row.started_at else None)
            created_at = row.created_at
            hardware = row.hardware
    metrics = with_model_metrics(
        model_metrics, {"total_time": (completed_at - as_utc(created_at)).total_seconds()}
    )
    if started is not None:
        metrics["predict_time"] = (completed_at - started).total_seconds()
    metrics = with_cost(metrics, hardware, prices)
    values: dict[str, Any] = {
        "status": status,
        "completed_at": completed_at,
        "error": error,
        "metrics": metrics,
    }
    if started is not None:
        values["started_at"] = started
    if output is not None or status == "succeeded":
        values["output"] = output
    if logs is not None:
        values["logs"] = logs
    return _update_open(engine, prediction_id, values)


def remove_data(engine: Engine, prediction_id: str, *, keep_examples: bool = False) -> bool:
    """Retention: input and output go, the record stays with ``data_removed``. With
    ``keep_examples``, a prediction marked as a model's example keeps them (False)."""
    stmt = (
        update(Prediction)
        .where(col(Prediction.id) == prediction_id)
        .values(input={}, output=None, logs="", data_removed=True)
    )
    if keep_examples:
        example = select(ModelExample).where(col(ModelExample.prediction_id) == prediction_id)
        stmt = stmt.where(~example.exists())
    with engine.begin() as conn:
        return bool(conn.execute(stmt).rowcount)


DEADLINE_ABORTED = "The deadline (Cancel-After) passed before the prediction started"
DEADLINE_CANCELED = "The deadline (Cancel-After) passed while the prediction was running"


def end_at_deadline(
    engine: Engine,
    prediction_id: str,
    completed_at: datetime,
    prices: Mapping[str, float] | None = None,
) -> str | None:
    """The deadline passed: ``aborted`` if the prediction never started, else ``canceled``.

    Returns the status it ended with (its earlier one if it was terminal already), None
    when there is no such prediction.
    """
    with Session(engine) as session:
        row = session.get(Prediction, prediction_id)
    if row is None:
        return None
    if row.status in TERMINAL_STATUSES:
        return row.status
    total = (completed_at - as_utc(row.created_at)).total_seconds()
    values = {
        "status": "aborted",
        "completed_at": completed_at,
        "error": DEADLINE_ABORTED,
        "metrics": {"total_time": total},
    }
    # Guarded by `starting`: a run that starts meanwhile is canceled, never aborted.
    abort = update_open_stmt(Prediction, prediction_id, values).where(
        col(Prediction.status) == "starting"
    )
    with engine.begin() as conn:
        if conn.execute(abort).rowcount:
            return "aborted"
    finish_prediction(
        engine,
        prediction_id,
        status="canceled",
        completed_at=completed_at,
        error=DEADLINE_CANCELED,
        prices=prices,
    )
    with Session(engine) as session:
        ended = session.get(Prediction, prediction_id)
    return ended.status if ended is not None else None
