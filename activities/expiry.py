"""Removal of uploaded files past their ``expires_at``: the object, then the row; and of
the objects of managed weights no version refers to any more
(``replicant.managedweights.remove_unreferenced``).

Idempotent and safe to interrupt: an object is deleted before its row, so a sweep that
stops half-way leaves rows whose objects may be gone, and the next sweep finishes them
(deleting a missing object is not an error). Expired files are already invisible to the
API and to input staging; this gives their storage back.
"""

from __future__ import annotations

import asyncio
import logging

from sqlalchemy import delete
from sqlalchemy.engine import Engine
from sqlmodel import Session, col, select
from temporalio import activity

from replicant.contracts import ActivityName, ExpiredFiles, ExpireFiles
from replicant.managedweights import remove_unreferenced
from replicant.storage import ObjectStore
from replicant.tables import StoredFile
from replicant.timeutil import utcnow

log = logging.getLogger("replicant.files")

BATCH = 200


class ExpiryActivities:
    """The sweep, bound to a database and an object store."""

    def __init__(self, engine: Engine, store: ObjectStore, weights_grace: float = 7200.0) -> None:
        self.engine = engine
        self.store = store
        # How long a push may hold an object of managed weights before its version is
        # recorded (the build timeout): an object held that recently is kept.
        self.weights_grace = weights_grace

    @activity.defn(name=ActivityName.REMOVE_EXPIRED_FILES)
    async def remove_expired_files(self, job: ExpireFiles) -> ExpiredFiles:
        """Delete expired uploaded files, ``BATCH`` at a time, at most ``job.limit``; then
        at most ``job.limit`` objects of managed weights no version refers to."""
        removed = 0
        while removed < job.limit:
            count = await asyncio.to_thread(self._remove_batch, min(BATCH, job.limit - removed))
            removed += count
            activity.heartbeat(removed)
            if count == 0:
                break
        if removed:
            log.info("event=expired_files_removed files=%d", removed)
        weights = await asyncio.to_thread(
            remove_unreferenced, self.engine, self.store, self.weights_grace, job.limit
        )
        if weights:
            log.info("event=unreferenced_weights_removed objects=%d", weights)
        return ExpiredFiles(removed=removed, weights_removed=weights)

    def _remove_batch(self, size: int) -> int:
        now = utcnow()
        with Session(self.engine) as session:
            rows = session.exec(
                select(StoredFile.id, StoredFile.object_key)
                .where(col(StoredFile.expires_at) <= now)
                .order_by(col(StoredFile.expires_at))
                .limit(size)
            ).all()
        for _, key in rows:
            self.store.delete(key)
        if rows:
            with self.engine.begin() as conn:
                conn.execute(
                    delete(StoredFile)
                    .where(col(StoredFile.id).in_([file_id for file_id, _ in rows]))
                    .where(col(StoredFile.expires_at) <= now)
                )
        return len(rows)
