"""The retention sweep: the data of API predictions past their retention is removed here.

A prediction's workflow closes when the prediction ends; this sweep (a Schedule, every
``retention_sweep_interval``) removes the data once retention is over. A prediction whose
`completed` webhook is still being delivered (its ``webhook-<id>`` workflow, or the workflow
of a prediction from before workflows closed at the end, is open) keeps its data until the
delivery is over, at most ``webhook_hold`` seconds: that body is the final prediction. The
row stays, with ``data_removed``; a model's examples keep theirs.
"""

from __future__ import annotations

import asyncio
import logging
from datetime import datetime, timedelta

from sqlalchemy.engine import Engine
from sqlmodel import Session, col, select
from temporalio import activity
from temporalio.client import Client, WorkflowExecutionStatus

from replicant import readmodel
from replicant.contracts import (
    ActivityName,
    SweepRetention,
    SweptPredictions,
    prediction_workflow_id,
    webhook_workflow_id,
)
from replicant.objectkeys import prediction_prefix
from replicant.storage import ObjectStore
from replicant.tables import TERMINAL_STATUSES, ModelExample, Prediction
from replicant.temporal import workflow_status
from replicant.timeutil import utcnow

log = logging.getLogger("replicant.retention")

BATCH = 200

# A row as the sweep reads it: id, completed_at, whether its delivery may still be running.
Overdue = tuple[str, datetime, bool]


class RetentionActivities:
    """The sweep, bound to a database and an object store."""

    def __init__(self, engine: Engine, store: ObjectStore, client: Client) -> None:
        self.engine = engine
        self.store = store
        self.client = client

    @activity.defn(name=ActivityName.REMOVE_OVERDUE_PREDICTION_DATA)
    async def remove_overdue_prediction_data(self, job: SweepRetention) -> SweptPredictions:
        """Remove the data of overdue predictions, ``BATCH`` at a time, at most ``job.limit``."""
        removed = 0
        after: tuple[datetime, str] | None = None
        while removed < job.limit:
            rows = await asyncio.to_thread(self._overdue, job, BATCH, after)
            for prediction_id, completed_at, maybe_delivering in rows:
                after = (completed_at, prediction_id)
                if maybe_delivering and await self._delivering(prediction_id):
                    continue
                await asyncio.to_thread(self._remove, prediction_id)
                removed += 1
                if removed >= job.limit:
                    break
            activity.heartbeat(removed)
            if len(rows) < BATCH:
                break
        if removed:
            log.info("event=overdue_data_removed predictions=%d", removed)
        return SweptPredictions(removed=removed)

    async def _delivering(self, prediction_id: str) -> bool:
        """Whether a `completed` webhook of the prediction may still be delivered."""
        for workflow_id in (
            webhook_workflow_id(prediction_id),
            prediction_workflow_id(prediction_id),
        ):
            try:
                status = await workflow_status(self.client, workflow_id)
            except Exception:
                return True  # Temporal did not answer: a later sweep decides
            if status == WorkflowExecutionStatus.RUNNING:
                return True
        return False

    def _overdue(
        self, job: SweepRetention, size: int, after: tuple[datetime, str] | None
    ) -> list[Overdue]:
        now = utcnow()
        ended_before = now - timedelta(seconds=job.retention + job.grace)
        delivered_before = now - timedelta(seconds=job.webhook_hold + job.grace)
        examples = select(ModelExample.prediction_id).where(
            col(ModelExample.prediction_id) == col(Prediction.id)
        )
        query = (
            select(Prediction.id, Prediction.completed_at, Prediction.webhook)
            .where(col(Prediction.data_removed).is_(False))
            .where(col(Prediction.source) == "api")
            .where(col(Prediction.status).in_(sorted(TERMINAL_STATUSES)))
            .where(col(Prediction.completed_at) <= ended_before)
            .where(~examples.exists())
        )
        if after is not None:
            query = query.where(
                (col(Prediction.completed_at) > after[0])
                | ((col(Prediction.completed_at) == after[0]) & (col(Prediction.id) > after[1]))
            )
        with Session(self.engine) as session:
            rows = session.exec(
                query.order_by(col(Prediction.completed_at), col(Prediction.id)).limit(size)
            ).all()
        return [
            (pid, done, webhook is not None and done > delivered_before)
            for pid, done, webhook in rows
            if done is not None
        ]

    def _remove(self, prediction_id: str) -> None:
        # Objects first: a sweep cut short leaves the row to the next one.
        self.store.delete_prefix(prediction_prefix(prediction_id))
        readmodel.remove_data(self.engine, prediction_id, keep_examples=True)
