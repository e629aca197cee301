"""The training read model: guarded writes, the fine-tune version, and the training object.

Writes follow ``replicant.readmodel``: idempotent inserts and updates guarded by "not terminal
yet", so a late write (a retried activity, a slow heartbeat) never changes how a training
ended. The new version and the training's success are one transaction
(``complete_training``): a training that did not succeed leaves no version behind.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from datetime import datetime
from typing import Any

from sqlalchemy.engine import Engine
from sqlmodel import Session, select

from replicant.contracts import StoredWeights, TrainingRequest
from replicant.db import cacheable
from replicant.readmodel import update_open, update_open_stmt, with_model_metrics
from replicant.tables import TERMINAL_STATUSES, Model, Training, Version
from replicant.timeutil import as_utc, utcnow
from replicant.usage import with_cost
from replicant.weights import store_ref


class DestinationGone(LookupError):
    """The destination model was deleted while the training ran."""


@cacheable(key=lambda model, version: (model.id, model.hardware, version.id))
def version_hardware(session: Session, model: Model, version: Version) -> str:
    """The hardware a version runs on: its model's, or, for a fine-tune, the hardware of the
    base model it was trained from."""
    if version.base_version_id:
        base = session.get(Version, version.base_version_id)
        base_model = session.get(Model, base.model_id) if base is not None else None
        if base_model is not None:
            return base_model.hardware
    return model.hardware


def training_from_request(req: TrainingRequest) -> Training:
    """The read-model row of a new training."""
    return Training(
        id=req.id,
        owner=req.owner,
        model=req.model,
        version=req.version,
        destination=req.destination,
        input=req.input,
        webhook=req.webhook,
        webhook_events_filter=list(req.webhook_events_filter)
        if req.webhook_events_filter is not None
        else None,
        hardware=req.hardware,
        created_at=req.created_at or utcnow(),
        trace_id=req.trace_id,
    )


def insert_training(engine: Engine, req: TrainingRequest) -> None:
    """Create the row for a new training unless it exists."""
    with Session(engine) as session:
        if session.get(Training, req.id) is None:
            session.add(training_from_request(req))
            session.commit()


def get_training(engine: Engine, training_id: str) -> Training | None:
    with Session(engine, expire_on_commit=False) as session:
        return session.get(Training, training_id)


def mark_processing(engine: Engine, training_id: str, started_at: datetime) -> bool:
    """The trainer has the input (every attempt; the first start time is kept)."""
    row = get_training(engine, training_id)
    values: dict[str, Any] = {"status": "processing"}
    if row is not None and row.started_at is None:
        values["started_at"] = started_at
    return update_open(engine, training_id, values, Training)


def record_logs(
    engine: Engine,
    training_id: str,
    logs: str | None,
    *,
    model_metrics: dict[str, Any] | None = None,
) -> bool:
    """The trainer's logs so far; at its end, the metrics it recorded too (kept until the
    training's end adds Replicant's own timings to them)."""
    values: dict[str, Any] = {}
    if logs is not None:
        values["logs"] = logs
    if model_metrics:
        values["metrics"] = with_model_metrics(model_metrics, {})
    return bool(values) and update_open(engine, training_id, values, Training)


def _metrics(
    row: Training, completed_at: datetime, prices: Mapping[str, float] | None
) -> dict[str, Any]:
    """The row's metrics so far (the trainer's own), Replicant's timings and cost."""
    metrics = with_model_metrics(
        row.metrics, {"total_time": (completed_at - as_utc(row.created_at)).total_seconds()}
    )
    if row.started_at is not None:
        metrics["predict_time"] = (completed_at - as_utc(row.started_at)).total_seconds()
    return with_cost(metrics, row.hardware, prices)


def finish_training(
    engine: Engine,
    training_id: str,
    *,
    status: str,
    completed_at: datetime,
    error: str | None = None,
    logs: str | None = None,
    prices: Mapping[str, float] | None = None,
) -> bool:
    """Record a terminal state without a new version (failed, canceled, aborted); with
    ``prices``, its cost (replicant/usage.py)."""
    row = get_training(engine, training_id)
    if row is None or row.status in TERMINAL_STATUSES:
        return False
    values: dict[str, Any] = {
        "status": status,
        "completed_at": completed_at,
        "error": error,
        "metrics": _metrics(row, completed_at, prices),
    }
    if logs is not None:
        values["logs"] = logs
    return update_open(engine, training_id, values, Training)


def finetune_version_id(base_version_id: str, sha256: str, destination: str) -> str:
    """A fine-tune's version id: the same base, weights and destination give the same id."""
    raw = f"replicant-finetune\0{base_version_id}\0{sha256}\0{destination}"
    return hashlib.sha256(raw.encode()).hexdigest()


def complete_training(
    engine: Engine,
    training_id: str,
    weights: StoredWeights,
    completed_at: datetime,
    prices: Mapping[str, float] | None = None,
) -> str | None:
    """Create the fine-tune version on the destination and mark the training succeeded,
    in one transaction. Returns ``owner/name:version_id``; None when the training had ended
    already (canceled meanwhile: nothing is created). Idempotent: a retry finds the version.
    ``DestinationGone`` when the destination model no longer exists.
    """
    with Session(engine) as session:
        row = session.get(Training, training_id)
        if row is None:
            return None
        if row.status in TERMINAL_STATUSES:
            output = row.output or {}
            done = row.status == "succeeded" and output.get("version")
            return str(output["version"]) if done else None
        base = session.get(Version, row.version)
        owner, _, name = row.destination.partition("/")
        dest = session.exec(select(Model).where(Model.owner == owner, Model.name == name)).first()
        if base is None or dest is None or dest.id is None:
            raise DestinationGone(f"the destination model {row.destination} no longer exists")
        version_id = finetune_version_id(base.id, weights.sha256, row.destination)
        ref = f"{row.destination}:{version_id}"
        values = {
            "status": "succeeded",
            "completed_at": completed_at,
            "output": {"version": ref},
            "weights_key": weights.key,
            "metrics": _metrics(row, completed_at, prices),
            "error": None,
        }
        # The guarded update comes first: it takes the row's write lock, so a concurrent
        # cancel either ended the training before (nothing is created) or waits for this.
        result: Any = session.execute(update_open_stmt(Training, training_id, values))
        if not result.rowcount:
            session.rollback()
            return None
        if session.get(Version, version_id) is None:
            session.add(
                Version(
                    id=version_id,
                    model_id=dest.id,
                    created_at=completed_at,
                    cog_version=base.cog_version,
                    openapi_schema=base.openapi_schema,
                    model_dir=base.model_dir,
                    python=base.python,
                    predict_ref=base.predict_ref,
                    train_ref=base.train_ref,
                    base_version_id=base.id,
                    weights_url=store_ref(weights.key, weights.sha256),
                )
            )
        dest.latest_version_id = version_id
        dest.latest_version_created_at = completed_at
        session.add(dest)
        session.commit()
        return ref
