"""The retention sweep: data of API predictions past their retention that still hold it.

A prediction's workflow removes its data when retention ends (and its `completed` webhook
is delivered or given up); a workflow terminated or reset from the Temporal UI never does.
The sweep finds those rows and removes their data as the workflow would have (the row
stays, with ``data_removed``; a model's examples keep theirs).
"""

from __future__ import annotations

import asyncio
import logging
from datetime import timedelta

from sqlalchemy.engine import Engine
from sqlmodel import Session, col, select
from temporalio import activity

from replicant import readmodel
from replicant.contracts import ActivityName, SweepRetention, SweptPredictions
from replicant.objectkeys import prediction_prefix
from replicant.storage import ObjectStore
from replicant.tables import TERMINAL_STATUSES, ModelExample, Prediction
from replicant.timeutil import utcnow

log = logging.getLogger("replicant.retention")

BATCH = 200


class RetentionActivities:
    """The sweep, bound to a database and an object store."""

    def __init__(self, engine: Engine, store: ObjectStore) -> None:
        self.engine = engine
        self.store = store

    @activity.defn(name=ActivityName.REMOVE_OVERDUE_PREDICTION_DATA)
    async def remove_overdue_prediction_data(self, job: SweepRetention) -> SweptPredictions:
        """Remove the data of overdue predictions, ``BATCH`` at a time, at most ``job.limit``."""
        removed = 0
        while removed < job.limit:
            ids = await asyncio.to_thread(self._overdue, job, min(BATCH, job.limit - removed))
            for prediction_id in ids:
                await asyncio.to_thread(self._remove, prediction_id)
            removed += len(ids)
            activity.heartbeat(removed)
            if len(ids) < BATCH:
                break
        if removed:
            log.info("event=overdue_data_removed predictions=%d", removed)
        return SweptPredictions(removed=removed)

    def _overdue(self, job: SweepRetention, size: int) -> list[str]:
        now = utcnow()
        ended_before = now - timedelta(seconds=job.retention + job.grace)
        delivered_before = now - timedelta(seconds=job.webhook_hold + job.grace)
        examples = select(ModelExample.prediction_id).where(
            col(ModelExample.prediction_id) == col(Prediction.id)
        )
        with Session(self.engine) as session:
            return list(
                session.exec(
                    select(Prediction.id)
                    .where(col(Prediction.data_removed).is_(False))
                    .where(col(Prediction.source) == "api")
                    .where(col(Prediction.status).in_(sorted(TERMINAL_STATUSES)))
                    .where(col(Prediction.completed_at) <= ended_before)
                    .where(
                        col(Prediction.webhook).is_(None)
                        | (col(Prediction.completed_at) <= delivered_before)
                    )
                    .where(~examples.exists())
                    .order_by(col(Prediction.completed_at))
                    .limit(size)
                ).all()
            )

    def _remove(self, prediction_id: str) -> None:
        # Objects first: a sweep cut short leaves the row to the next one.
        self.store.delete_prefix(prediction_prefix(prediction_id))
        readmodel.remove_data(self.engine, prediction_id, keep_examples=True)
