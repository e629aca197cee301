"""Worker heartbeats in the database: which task queues have a live worker right now.

Temporal keeps listing a killed worker's pollers for minutes; a heartbeat row a few
seconds old says the worker is alive now.
"""

from __future__ import annotations

from datetime import timedelta

from sqlalchemy.engine import Engine
from sqlmodel import Session, col, select

from replicant.tables import WorkerHeartbeat
from replicant.timeutil import utcnow

INTERVAL = 2.0  # seconds between beats
# A worker is live while its last beat is this recent: five beats' time, so that a worker
# process starved of CPU for a few seconds on a busy machine is not taken for dead.
FRESH = timedelta(seconds=INTERVAL * 5)


def beat(engine: Engine, identity: str, queues: list[str]) -> None:
    with Session(engine) as session:
        row = session.get(WorkerHeartbeat, identity) or WorkerHeartbeat(identity=identity)
        row.queues = queues
        row.seen_at = utcnow()
        session.add(row)
        session.commit()


def forget(engine: Engine, identity: str) -> None:
    with Session(engine) as session:
        row = session.get(WorkerHeartbeat, identity)
        if row is not None:
            session.delete(row)
            session.commit()


def live_queues(engine: Engine) -> set[str]:
    """Task queues served by a worker that beat within the last few seconds."""
    with Session(engine) as session:
        rows = session.exec(
            select(WorkerHeartbeat).where(col(WorkerHeartbeat.seen_at) >= utcnow() - FRESH)
        ).all()
    return {queue for row in rows for queue in row.queues}
