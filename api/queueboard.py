"""Each hardware's queue as an API process shows it (the ``queue`` of a run that has not
started, replicant/queueing.py), read once for many requests.

A snapshot of a hardware's queue (a lean read of its live runs, their fair order and
estimated starts) is reused by every request for ``SNAPSHOT_INTERVAL`` seconds, as long as it
lists the runs the request shows; a request that needs a newer one (a run created since, as
in every create's answer) waits for the next read, which all such requests share. At most
one read of a hardware's queue is in flight, in a thread of the board's own (never on the
event loop), so the cost of places is bounded by time, not by the number of requests.
"""

from __future__ import annotations

import asyncio
import functools
import time
from collections.abc import Sequence

import anyio.from_thread
import anyio.to_thread
from sqlalchemy.engine import Engine
from sqlmodel import Session

from replicant import responses
from replicant.queueing import (
    SNAPSHOT_INTERVAL,
    Estimates,
    QueueSnapshot,
    queue_places,
    read_snapshot,
    waits_for_slot,
)
from replicant.settings import Settings
from replicant.tables import Prediction, Training
from replicant.timeutil import utcnow

# Threads (and pool connections) of the board's own: one read at a time for all hardware.
QUEUE_THREADS = 1

Run = Prediction | Training


class QueueBoard:
    """Snapshots of each hardware's queue, shared by the requests of one API process; used on
    the event loop (``places``) or from a synchronous route's thread (``places_from_thread``)."""

    def __init__(self, engine: Engine, settings: Settings) -> None:
        self.engine = engine
        self.settings = settings
        self.latest: dict[str, QueueSnapshot] = {}
        # The read in flight of each hardware: when it began, and the task reading.
        self.flights: dict[str, tuple[float, asyncio.Task[QueueSnapshot]]] = {}
        self.estimates = Estimates()
        self.reads = 0  # snapshots read so far

    @functools.cached_property
    def limiter(self) -> anyio.CapacityLimiter:
        """The board's threads (made on first use, in the loop)."""
        return anyio.CapacityLimiter(QUEUE_THREADS)

    async def places(self, rows: Sequence[Run]) -> dict[str, responses.QueuePlace]:
        """Why each of ``rows`` that has not started waits, by id."""
        needed: dict[str, set[str]] = {}
        for row in rows:
            if waits_for_slot(row):
                needed.setdefault(row.hardware, set()).add(row.id)
        snapshots = {
            hardware: await self.snapshot(hardware, ids) for hardware, ids in needed.items()
        }
        return queue_places(rows, snapshots)

    async def place(self, row: Run) -> responses.QueuePlace | None:
        """Why ``row`` waits, or None once it started (or ended)."""
        return (await self.places([row])).get(row.id)

    async def show(
        self, rows: Sequence[Run], shown: Sequence[responses.Prediction | responses.Training]
    ) -> None:
        """Set ``queue`` on each of ``shown`` (the objects of ``rows``) that has not started."""
        places = await self.places(rows)
        for item in shown:
            place = places.get(item.id)
            if place is not None:
                item.queue = place

    def show_from_thread(
        self, rows: Sequence[Run], shown: Sequence[responses.Prediction | responses.Training]
    ) -> None:
        """``show`` from a synchronous route's thread (one of anyio's)."""
        if any(row.status == "starting" for row in rows):
            anyio.from_thread.run(self.show, rows, shown)

    async def snapshot(self, hardware: str, ids: set[str]) -> QueueSnapshot:
        """A snapshot of ``hardware``'s queue that lists every run of ``ids``, or else one
        read after this call began (a run missing from it has left the queue meanwhile)."""
        asked = time.monotonic()
        latest = self.latest.get(hardware)
        if latest is not None and latest.taken >= asked - SNAPSHOT_INTERVAL and ids <= latest.ids:
            return latest
        flight = self.flights.get(hardware)
        if flight is not None:
            # Shielded: a waiter that gives up does not cancel the read the others share.
            snapshot = await asyncio.shield(flight[1])
            if flight[0] >= asked or ids <= snapshot.ids:
                return snapshot
            # Read before this call's runs were: the next read (begun after this call, by
            # this call or another waiter of the same read) lists them if they still wait.
            flight = self.flights.get(hardware)
        if flight is None:
            flight = self._read(hardware)
        return await asyncio.shield(flight[1])

    def _read(self, hardware: str) -> tuple[float, asyncio.Task[QueueSnapshot]]:
        began = time.monotonic()
        task = asyncio.get_running_loop().create_task(self._take(hardware, began))
        self.flights[hardware] = (began, task)
        task.add_done_callback(self._landed)
        return began, task

    async def _take(self, hardware: str, began: float) -> QueueSnapshot:
        def read() -> QueueSnapshot:
            with Session(self.engine) as session:
                return read_snapshot(
                    session, self.settings, hardware, self.estimates, began, utcnow()
                )

        try:
            snapshot = await anyio.to_thread.run_sync(read, limiter=self.limiter)
        finally:
            # Gone before any waiter resumes: a flight in ``flights`` is always pending.
            del self.flights[hardware]
        self.reads += 1
        latest = self.latest.get(hardware)
        if latest is None or latest.taken <= snapshot.taken:
            self.latest[hardware] = snapshot
        return snapshot

    def _landed(self, task: asyncio.Task[QueueSnapshot]) -> None:
        if not task.cancelled():
            task.exception()  # retrieved: its waiters raise it
