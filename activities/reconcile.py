"""Settling creates that crashed half-way: rows left ``starting`` with no workflow.

The API writes a prediction's (or training's) row before it starts the workflow, so a
process that dies in between leaves a row that nothing will ever move. A row ``starting``
for longer than the grace period is checked against Temporal: a row whose workflow exists
is waiting for a slot (fine) and is not asked about again; one whose workflow does not
exist never started and is failed with a reason that says so, its stored inputs are
removed, and its Idempotency-Key is forgotten. Nothing ran, so the client may create it
again (with the same key too). A pass
asks Temporal about at most ``ReconcileStarts.asks`` workflows of each kind: a queue of
thousands that a worker is draining is gone over a slice a pass, not all at once beside the
drain. Each pass goes on from the row after the last one the previous pass went over (the
Schedule carries it from run to run) and wraps around to the lowest id, so every row is
checked within ``rows / min(asks, limit)`` passes, however deep the queue and whichever worker
runs the passes.

A build's row is written before its workflow starts too, and only its workflow ends it: a
build still running past the grace whose workflow never started, or has ended without
ending it (terminated from the Temporal UI, timed out), is failed with the reason and its
pushed archive removed. Safe to run concurrently and to repeat: every write is guarded by
status.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Sequence
from datetime import datetime, timedelta
from typing import Any

from cachetools import TTLCache
from sqlalchemy import delete
from sqlalchemy.engine import Engine
from sqlmodel import Session, col, select
from temporalio import activity
from temporalio.client import Client, WorkflowExecutionStatus

from replicant import builds, readmodel, trainings
from replicant.contracts import (
    ActivityName,
    ReconciledStarts,
    ReconcileStarts,
    RunKindName,
    build_workflow_id,
    workflow_id,
)
from replicant.objectkeys import prediction_prefix, training_inputs
from replicant.storage import ObjectStore
from replicant.tables import Build, IdempotencyKey, Prediction, Training
from replicant.temporal import workflow_exists, workflow_status
from replicant.timeutil import utcnow

log = logging.getLogger("replicant.reconcile")

NEVER_STARTED = (
    "Replicant stopped before this {kind} was scheduled, so it never ran; create it again"
)
# Visibility is asked about this many workflow ids at once.
CHUNK = 100
# Workflow ids found to exist are not asked about again for this long (a workflow, once
# started, moves its row itself): a deep queue costs Temporal one question per prediction,
# not one per prediction on every pass. Bounded: past it, a row is asked about once more.
KNOWN_STARTED_TTL = 24 * 3600.0
KNOWN_STARTED_MAX = 200_000
TABLES: tuple[tuple[RunKindName, Any], ...] = (("prediction", Prediction), ("training", Training))
# How a build's workflow ended without ending the build; None: it never started.
Ended = WorkflowExecutionStatus | None


class ReconcileActivities:
    """The reconcile pass, bound to a database, a Temporal client and an object store."""

    def __init__(self, engine: Engine, client: Client, store: ObjectStore) -> None:
        self.engine = engine
        self.client = client
        self.store = store
        self.known_started: TTLCache[str, bool] = TTLCache(
            maxsize=KNOWN_STARTED_MAX, ttl=KNOWN_STARTED_TTL
        )

    @activity.defn(name=ActivityName.RECONCILE_STARTS)
    async def reconcile_starts(self, job: ReconcileStarts) -> ReconciledStarts:
        """Fail the ``starting`` rows older than ``job.grace`` whose workflow does not exist,
        and the running builds whose workflow will never end them."""
        cutoff = utcnow() - timedelta(seconds=job.grace)
        result = ReconciledStarts()
        for kind, table in TABLES:
            budget = job.asks
            async for ids in self._scan(kind, table, ("starting",), cutoff, job):
                # The rows up to the first unknown one past the budget are gone over; the
                # rest wait for the next passes (a deep queue, asked bit by bit).
                rows: dict[str, str] = {}  # workflow id -> row id
                done = len(ids)
                for at, row_id in enumerate(ids):
                    wid = workflow_id(kind, row_id)
                    if wid in self.known_started:
                        continue
                    if len(rows) == budget:
                        done = at
                        break
                    rows[wid] = row_id
                budget -= len(rows)
                result.asked += len(rows)
                for wid in await self._missing(list(rows)) if rows else []:
                    row_id = rows[wid]
                    if await asyncio.to_thread(self._fail, kind, row_id):
                        log.warning("event=start_reconciled %s=%s outcome=failed", kind, row_id)
                        result.failed.append(wid)
                self._went_over(kind, ids[:done], result)
                if done < len(ids):
                    break
        async for ids in self._scan("build", Build, builds.RUNNING, cutoff, job):
            for build_id, status in await self._stopped(ids):
                ended = builds.end_orphaned
                if await asyncio.to_thread(ended, self.engine, self.store, build_id, status):
                    how = "never_started" if status is None else status.name.lower()
                    log.warning("event=build_reconciled build=%s workflow=%s", build_id, how)
                    result.failed.append(build_workflow_id(build_id))
            self._went_over("build", ids, result)
        return result

    @staticmethod
    def _went_over(kind: str, ids: list[str], result: ReconciledStarts) -> None:
        """Count ``ids`` checked, and the next pass goes on after the last of them."""
        if ids:
            result.checked += len(ids)
            result.after[kind] = ids[-1]
            activity.heartbeat(result.checked)

    async def _scan(
        self,
        kind: str,
        table: Any,
        statuses: Sequence[str],
        cutoff: datetime,
        job: ReconcileStarts,
    ) -> AsyncIterator[list[str]]:
        """Pages of ``_page``, at most ``job.limit`` ids in all: from just after
        ``job.after[kind]`` (where the last pass stopped) to the highest id, then from the
        lowest up to it. Every row is reached within a bounded number of passes however many
        wait, and whichever worker runs them."""
        start = job.after.get(kind, "")
        spans = ((start, None), ("", start)) if start else (("", None),)
        left = job.limit
        for after, until in spans:
            while left > 0:
                page = await asyncio.to_thread(
                    self._page, table, statuses, cutoff, after, until, min(CHUNK, left)
                )
                if not page:
                    break
                left -= len(page)
                after = page[-1]
                yield page

    def _page(
        self,
        table: Any,
        statuses: Sequence[str],
        cutoff: datetime,
        after: str,
        until: str | None,
        size: int,
    ) -> list[str]:
        """The next ``size`` ids (in id order, after ``after``, up to ``until`` if given) of
        rows in one of ``statuses`` since before ``cutoff``."""
        query = (
            select(table.id)
            .where(col(table.status).in_(statuses))
            .where(col(table.created_at) < cutoff)
            .where(col(table.id) > after)
        )
        if until is not None:
            query = query.where(col(table.id) <= until)
        with Session(self.engine) as session:
            return list(session.exec(query.order_by(col(table.id)).limit(size)).all())

    async def _missing(self, workflow_ids: list[str]) -> list[str]:
        """The ids Temporal has no workflow for: visibility narrows the list in one call,
        then the server itself confirms each absence (visibility may lag)."""
        quoted = ", ".join(f"'{w}'" for w in workflow_ids)
        seen = {w.id async for w in self.client.list_workflows(f"WorkflowId IN ({quoted})")}
        missing = []
        for wid in workflow_ids:
            if wid in seen or await workflow_exists(self.client, wid):
                self.known_started[wid] = True
            else:
                missing.append(wid)
        return missing

    async def _stopped(
        self, build_ids: list[str]
    ) -> list[tuple[str, WorkflowExecutionStatus | None]]:
        """The builds whose workflow is not running, with its status (None: it never
        started): visibility narrows the list, the server confirms each."""
        quoted = ", ".join(f"'build-{i}'" for i in build_ids)
        query = f"WorkflowId IN ({quoted}) AND ExecutionStatus = 'Running'"
        running = {w.id async for w in self.client.list_workflows(query)}
        stopped: list[tuple[str, Ended]] = []
        for build_id in build_ids:
            if build_workflow_id(build_id) in running:
                continue
            status = await workflow_status(self.client, build_workflow_id(build_id))
            if status != WorkflowExecutionStatus.RUNNING:
                stopped.append((build_id, status))
        return stopped

    def _fail(self, kind: str, row_id: str) -> bool:
        now = utcnow()
        error = NEVER_STARTED.format(kind=kind)
        if kind == "prediction":
            failed = readmodel.finish_prediction(
                self.engine, row_id, status="failed", completed_at=now, error=error
            )
            if failed:
                self.store.delete_prefix(prediction_prefix(row_id))
                readmodel.remove_data(self.engine, row_id)
        else:
            failed = trainings.finish_training(
                self.engine, row_id, status="failed", completed_at=now, error=error
            )
            if failed:
                self.store.delete_prefix(training_inputs(row_id))
        if failed:
            self._forget_key(kind, row_id)
        return failed

    def _forget_key(self, kind: str, row_id: str) -> None:
        """A retry with the row's Idempotency-Key then creates anew, not replays a row that
        never ran."""
        with Session(self.engine) as session:
            session.exec(
                delete(IdempotencyKey)
                .where(col(IdempotencyKey.kind) == kind)
                .where(col(IdempotencyKey.object_id) == row_id)
            )
            session.commit()
