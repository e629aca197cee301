"""A hardware queue's slots, shared by the runs of models that serve several at once.

A worker takes at most its SKU's slot count of runs from the hardware queue, one model
process each. A model with ``concurrency: max: N`` in cog.yaml serves N runs in one process,
so a run of such a version joins its process while it has room, without a slot of its own:
a one-slot worker runs up to N predictions of that version at once.

Temporal hands a worker a task only once the worker's slot supplier granted a permit, and
that is before the task, so its version, is known. ``RunSlots`` grants a permit while a slot
is free, or while a process of a concurrent version has room that no permit already counts
on and no run waits for a slot. A run that then needs a slot of its own and finds none (a
task of another version took the room) waits in the worker for the next free slot; while it
waits no further permit is granted, so the backlog stays in Temporal's queue, ordered by
fairness (replicant/fairness.py). Without concurrent versions the permits are exactly the
slots, as with a fixed number of activity slots.

``SlotRunner`` is the pool as one hardware queue's activities see it: each run holds its
share of the slots (``RunSlots.acquire``) while the pool runs it. A run in its workflow's own
task (a local activity, workflows/steps.py ``start_run``) came with no permit: it takes its
share the same way, and is left out of the count of permitted tasks still to be placed.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import threading
from dataclasses import dataclass
from typing import Any, Unpack

from temporalio import activity
from temporalio.worker import (
    CustomSlotSupplier,
    FixedSizeSlotSupplier,
    SlotMarkUsedContext,
    SlotPermit,
    SlotReleaseContext,
    SlotReserveContext,
    WorkerTuner,
)

from replicant.runner import CogPrediction, RunnerSpec, RunWith, UploadSink
from workers.runners import RunnerPool

# What temporalio gives workflow tasks and local activities when a worker sets no tuner.
DEFAULT_SLOTS = 100


@dataclass(eq=False)
class Lease:
    """One slot, held by the runs of one key in one process (at most ``capacity``)."""

    key: str
    capacity: int
    runs: int = 0

    @property
    def room(self) -> int:
        """Runs it may still take."""
        return self.capacity - self.runs


class RunSlots(CustomSlotSupplier):
    """The activity slots of one hardware queue's worker (see the module docstring).

    Temporal calls ``try_reserve_slot``, ``mark_slot_used`` and ``release_slot`` from its own
    threads: the counts are kept under a lock, and waiting is woken on the worker's loop.
    """

    def __init__(self, slots: int) -> None:
        self.slots = slots
        self._lock = threading.Lock()
        self._permits = 0
        # Runs placed without a permit (local activities): not tasks of the permits.
        self._local = 0
        self._leases: list[Lease] = []
        self._waiters: collections.deque[tuple[str, int, bool, asyncio.Future[Lease]]] = (
            collections.deque()
        )
        self._loop: asyncio.AbstractEventLoop | None = None
        self._changed: asyncio.Event | None = None

    def tuner(self) -> WorkerTuner:
        """A worker tuner whose activity slots are these (workflow tasks and local activities
        keep their own defaults)."""
        return WorkerTuner.create_composite(
            workflow_supplier=FixedSizeSlotSupplier(DEFAULT_SLOTS),
            activity_supplier=self,
            local_activity_supplier=FixedSizeSlotSupplier(DEFAULT_SLOTS),
            nexus_supplier=FixedSizeSlotSupplier(DEFAULT_SLOTS),
        )

    # -- Temporal's side: permits to poll for a task -------------------------------------

    def _room(self) -> int:
        """Tasks this worker can still take (under the lock): free slots plus the room of
        concurrent processes, less the permits out for tasks not yet placed."""
        if self._waiters:
            return 0
        placed = sum(lease.runs for lease in self._leases) - self._local
        free = self.slots - len(self._leases)
        room = sum(lease.room for lease in self._leases)
        return free + room - (self._permits - placed)

    async def reserve_slot(self, ctx: SlotReserveContext) -> SlotPermit:
        """Wait until the worker can take another task."""
        changed = self._bind()
        while True:
            changed.clear()
            permit = self.try_reserve_slot(ctx)
            if permit is not None:
                return permit
            await changed.wait()

    def try_reserve_slot(self, ctx: SlotReserveContext) -> SlotPermit | None:
        """A permit if the worker can take another task now (eager dispatch asks this)."""
        with self._lock:
            if self._room() <= 0:
                return None
            self._permits += 1
            return SlotPermit()

    def mark_slot_used(self, ctx: SlotMarkUsedContext) -> None:
        """A task arrived on a permit: it is placed when its run asks for a slot."""

    def release_slot(self, ctx: SlotReleaseContext) -> None:
        """A permit is given back (its task ended, or it was never used)."""
        with self._lock:
            self._permits -= 1
        self._wake()

    # -- the runs' side ------------------------------------------------------------------

    async def acquire(self, key: str, capacity: int, local: bool = False) -> Lease:
        """A share of a slot for a run of ``key`` (``capacity``: runs its process serves at
        once): room in a process of the key, else a free slot, else the next one freed.
        ``local``: the run came with no permit (a local activity); release it so too."""
        self._bind()
        with self._lock:
            lease = self._place(key, capacity, local)
            if lease is None:
                waiter: asyncio.Future[Lease] = asyncio.get_running_loop().create_future()
                self._waiters.append((key, capacity, local, waiter))
        if lease is not None:
            self._wake()  # a concurrent process with room: the worker may poll for more
            return lease
        try:
            return await waiter
        except asyncio.CancelledError:
            with self._lock:
                if not waiter.done():
                    kept = (w for w in self._waiters if w[3] is not waiter)
                    self._waiters = collections.deque(kept)
            if waiter.done() and not waiter.cancelled():
                self.release(waiter.result(), local)
            self._wake()
            raise

    def release(self, lease: Lease, local: bool = False) -> None:
        """A run is over: its share goes to a waiting run, or back to the slots."""
        with self._lock:
            lease.runs -= 1
            if local:
                self._local -= 1
            if lease.runs <= 0 and lease in self._leases:
                self._leases.remove(lease)
            while self._waiters:
                key, capacity, local_waiter, waiter = self._waiters[0]
                if waiter.done():
                    self._waiters.popleft()
                    continue
                placed = self._place(key, capacity, local_waiter)
                if placed is None:
                    break
                self._waiters.popleft()
                waiter.set_result(placed)
        self._wake()

    def _place(self, key: str, capacity: int, local: bool = False) -> Lease | None:
        """Under the lock: join a lease of ``key`` with room, or take a free slot."""
        joinable = (lease for lease in self._leases if lease.key == key and lease.room > 0)
        placed = next(joinable, None)
        if placed is not None:
            placed.runs += 1
        elif len(self._leases) < self.slots:
            placed = Lease(key, capacity, runs=1)
            self._leases.append(placed)
        if placed is not None and local:
            self._local += 1
        return placed

    def held(self) -> list[tuple[str, int]]:
        """(key, runs) of each slot in use (diagnostics and tests)."""
        with self._lock:
            return [(lease.key, lease.runs) for lease in self._leases]

    # -- waking ----------------------------------------------------------------------------

    def _bind(self) -> asyncio.Event:
        if self._changed is None:
            self._loop = asyncio.get_running_loop()
            self._changed = asyncio.Event()
        return self._changed

    def _wake(self) -> None:
        loop, changed = self._loop, self._changed
        if loop is not None and changed is not None:
            with contextlib.suppress(RuntimeError):  # the worker's loop has closed
                loop.call_soon_threadsafe(changed.set)


class SlotRunner:
    """The pool as one hardware queue's run activities see it (a ``ModelRunner``): each run
    holds its share of that queue's slots while it runs."""

    def __init__(self, pool: RunnerPool, slots: RunSlots) -> None:
        self.pool = pool
        self.slots = slots

    @property
    def upload(self) -> UploadSink | None:
        """Where the pool stores output files."""
        return self.pool.upload

    async def predict(
        self, spec: RunnerSpec, /, prediction_id: str, input: dict[str, Any], **run: Unpack[RunWith]
    ) -> CogPrediction:
        """The pool's ``predict``, the run holding its ``Lease`` of this queue's slots (room
        in a process of its key, or a slot of its own) until it ends."""
        # A local activity's run (in its workflow's task) came without a permit.
        local = activity.in_activity() and activity.info().is_local
        lease = await self.slots.acquire(spec.key, spec.concurrency, local)
        try:
            return await self.pool.predict(spec, prediction_id, input, **run)
        finally:
            self.slots.release(lease, local)

    def keep_standby(self, spec: RunnerSpec) -> None:
        """Keep a standby for fine-tune ``spec``'s base (see ``RunnerPool.keep_standby``)."""
        self.pool.keep_standby(spec)
