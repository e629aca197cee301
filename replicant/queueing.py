"""Why a run that has not started waits, its place in its hardware's queue, and when it
should start.

A prediction or training in ``starting`` waits for one of three things: a slot of its
hardware (``queued for <hardware>``), its model process to boot (``booting the model``) or
its environment to build (``building the environment``); the run activity writes the last
two into the row's ``waiting`` once it holds a slot (``WAITING_DELAY`` after, for a boot, so
a warm run writes nothing). Its place orders the runs waiting for the same hardware as the
fair queues serve them (replicant/fairness.py): accounts take turns in proportion to their
weights, each account's runs first come, first served. Its estimated start plays that order
out on the hardware's slots, each run taking the mean ``predict_time`` of its version's
recent runs. An API process reads a hardware's queue as a snapshot (``read_snapshot``: the
few columns a place needs) shared by its requests for ``SNAPSHOT_INTERVAL`` (api/queueboard.py).
"""

from __future__ import annotations

import heapq
from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import or_
from sqlalchemy import select as sa_select
from sqlmodel import Session, col, select

from replicant import responses
from replicant.fairness import DEFAULT_WEIGHT
from replicant.heartbeats import FRESH
from replicant.settings import Settings
from replicant.tables import Account, Prediction, Training, WorkerHeartbeat
from replicant.timeutil import as_utc, isoformat

BOOTING = "booting"
BUILDING = "building"
REASONS = {BOOTING: "booting the model", BUILDING: "building the environment"}
# A boot shorter than this is never written (a warm process "boots" at once).
WAITING_DELAY = 0.2
# Recent runs of a version its mean run time is taken over.
RECENT_RUNS = 20
# Seconds a run of a version with no finished run yet is expected to take.
UNKNOWN_RUN_SECONDS = 10.0
# Seconds a hardware's queue snapshot (and each estimate in it) is reused for by an API
# process (api/queueboard.py): a run it does not list yet is read anew, never guessed.
SNAPSHOT_INTERVAL = 0.5


@dataclass(frozen=True)
class QueuedRun:
    """A run waiting for (or holding) a slot of one hardware."""

    id: str
    owner: str
    version: str
    created_at: datetime
    started_at: datetime | None = None


def fair_order(waiting: Iterable[QueuedRun], weights: dict[str, float]) -> list[QueuedRun]:
    """``waiting`` in the order the fair queues serve them: the k-th run of an account comes
    at turn k / weight; ties go to the earlier run."""
    by_account: dict[str, list[QueuedRun]] = defaultdict(list)
    for run in waiting:
        by_account[run.owner].append(run)
    turns: list[tuple[float, datetime, str, QueuedRun]] = []
    for owner, runs in by_account.items():
        weight = weights.get(owner, DEFAULT_WEIGHT)
        for k, run in enumerate(sorted(runs, key=lambda r: (r.created_at, r.id)), start=1):
            turns.append((k / weight, run.created_at, run.id, run))
    return [turn[3] for turn in sorted(turns, key=lambda t: (t[0], t[1], t[2]))]


def estimated_waits(
    order: Sequence[QueuedRun],
    running: Sequence[QueuedRun],
    slots: int,
    run_seconds: dict[str, float],
    now: datetime,
) -> list[float]:
    """Seconds until a slot is free for each run of ``order`` (then for one after them all):
    ``running`` free their slots when their expected time is up, then each run of ``order``
    takes the earliest free slot for its expected time."""
    slots = max(slots, 1)
    remaining = sorted(
        max(0.0, run_seconds[r.version] - (now - as_utc(r.started_at or now)).total_seconds())
        for r in running
    )
    free = (remaining + [0.0] * slots)[:slots] if len(remaining) < slots else remaining[-slots:]
    heapq.heapify(free)
    waits: list[float] = []
    for run in order:
        waits.append(free[0])
        heapq.heappush(free, heapq.heappop(free) + run_seconds[run.version])
    waits.append(free[0])
    return waits


def estimated_wait(
    ahead: Sequence[QueuedRun],
    running: Sequence[QueuedRun],
    slots: int,
    run_seconds: dict[str, float],
    now: datetime,
) -> float:
    """Seconds until a slot is free for the run after ``ahead`` (``estimated_waits``)."""
    return estimated_waits(ahead, running, slots, run_seconds, now)[-1]


@dataclass(frozen=True)
class QueueSnapshot:
    """One hardware's shared queue as read at ``now``: its waiting runs in fair order, the
    runs holding its slots, and when each waiting run is expected to get a slot."""

    hardware: str
    order: list[QueuedRun]
    running: list[QueuedRun]
    # waits[p]: seconds after ``now`` until the run at 0-based place p gets a slot
    # (waits[len(order)]: a run behind them all).
    waits: list[float]
    now: datetime
    # Monotonic clock (time.monotonic) when the read began: what it can have seen.
    taken: float = 0.0
    index: dict[str, int] = field(default_factory=dict)
    # Every run in it, waiting or running.
    ids: frozenset[str] = frozenset()

    def place(self, run_id: str) -> responses.QueuePlace:
        """The place of a run waiting for a slot; one not in the snapshot comes last."""
        position = self.index.get(run_id, len(self.order))
        return responses.QueuePlace(
            reason=f"queued for {self.hardware}",
            hardware=self.hardware,
            position=position + 1,
            estimated_start=isoformat(self.now + timedelta(seconds=self.waits[position])),
        )


@dataclass
class Estimates:
    """The slower facts a queue's estimates take (each version's mean run time, each
    hardware's slots), each reread at most every ``SNAPSHOT_INTERVAL`` seconds; used by one
    thread at a time."""

    run_seconds: dict[str, tuple[float, float]] = field(default_factory=dict)
    slots: dict[str, tuple[int, float]] = field(default_factory=dict)


def _lean_queue(session: Session, hardware: str) -> tuple[list[QueuedRun], list[QueuedRun]]:
    """The runs of ``hardware``'s shared queue: (waiting for a slot, holding one), read as
    the few columns a place needs (never a run's input or output)."""
    live = ("starting", "processing")
    waiting: list[QueuedRun] = []
    running: list[QueuedRun] = []
    for table in (Prediction, Training):
        columns = (
            table.id,
            table.owner,
            table.version,
            table.created_at,
            table.started_at,
            table.status,
            table.waiting,
        )
        stmt = sa_select(*(col(c) for c in columns)).where(
            col(table.hardware) == hardware, col(table.status).in_(live)
        )
        if table is Prediction:
            # A deployment's instances serve its predictions, not the shared queue.
            stmt = stmt.where(
                or_(col(Prediction.deployment).is_(None), col(Prediction.deployment_shared))
            )
        for id_, owner, version, created_at, started_at, status, waits_for in session.execute(stmt):
            run = QueuedRun(id_, owner, version, as_utc(created_at), started_at)
            (waiting if status == "starting" and waits_for is None else running).append(run)
    return waiting, running


def read_snapshot(
    session: Session,
    settings: Settings,
    hardware: str,
    estimates: Estimates,
    taken: float,
    now: datetime,
) -> QueueSnapshot:
    """``hardware``'s queue as it is now (``taken`` the monotonic clock at the start)."""
    waiting, running = _lean_queue(session, hardware)
    owners = {r.owner for r in waiting}
    weights = dict(
        session.exec(
            select(Account.username, Account.fairness_weight).where(
                col(Account.username).in_(owners)
            )
        ).all()
    )
    order = fair_order(waiting, weights)
    versions = {r.version for r in (*order, *running)}
    stale = {
        v
        for v in versions
        if taken - estimates.run_seconds.get(v, (0.0, -1e9))[1] > SNAPSHOT_INTERVAL
    }
    for version, mean in _run_seconds(session, stale).items():
        estimates.run_seconds[version] = (mean, taken)
    known_slots = estimates.slots.get(hardware)
    if known_slots is None or taken - known_slots[1] > SNAPSHOT_INTERVAL:
        known_slots = (_slots(session, settings, hardware, now), taken)
        estimates.slots[hardware] = known_slots
    seconds = {v: estimates.run_seconds[v][0] for v in versions}
    return QueueSnapshot(
        hardware=hardware,
        order=order,
        running=running,
        waits=estimated_waits(order, running, known_slots[0], seconds, now),
        now=now,
        taken=taken,
        index={r.id: i for i, r in enumerate(order)},
        ids=frozenset(r.id for r in (*order, *running)),
    )


def _run_seconds(session: Session, versions: set[str]) -> dict[str, float]:
    """The mean ``predict_time`` of each version's recent finished runs."""
    seconds: dict[str, float] = {}
    for version in versions:
        times: list[float] = []
        for table in (Prediction, Training):
            rows: Sequence[Any] = session.exec(
                select(table.metrics)
                .where(col(table.version) == version, col(table.status) == "succeeded")
                .order_by(col(table.completed_at).desc())
                .limit(RECENT_RUNS)
            ).all()
            times += [float(m["predict_time"]) for m in rows if m and "predict_time" in m]
        seconds[version] = sum(times) / len(times) if times else UNKNOWN_RUN_SECONDS
    return seconds


def _slots(session: Session, settings: Settings, hardware: str, now: datetime) -> int:
    """The slots serving ``hardware``: its slots per worker times the live workers of it."""
    queue = settings.task_queue(hardware)
    beats = session.exec(
        select(WorkerHeartbeat.queues).where(col(WorkerHeartbeat.seen_at) >= now - FRESH)
    ).all()
    workers = sum(1 for queues in beats if queue in (queues or []))
    return settings.hardware.get(hardware, 1) * max(workers, 1)


def waits_for_slot(row: Prediction | Training) -> bool:
    """Whether ``row`` waits for a slot of its hardware's shared queue (not for its model to
    boot, its environment, or a deployment's instance)."""
    if row.status != "starting" or row.waiting in REASONS:
        return False
    return not (isinstance(row, Prediction) and row.deployment and not row.deployment_shared)


def queue_places(
    rows: Sequence[Prediction | Training], snapshots: Mapping[str, QueueSnapshot]
) -> dict[str, responses.QueuePlace]:
    """Why each of ``rows`` that has not started waits, by id; the places of those that wait
    for a slot (``waits_for_slot``) from their hardware's snapshot in ``snapshots``."""
    places: dict[str, responses.QueuePlace] = {}
    for row in rows:
        if row.status != "starting":
            continue
        if row.waiting in REASONS:
            places[row.id] = responses.QueuePlace(
                reason=REASONS[row.waiting], hardware=row.hardware
            )
        elif waits_for_slot(row):
            places[row.id] = snapshots[row.hardware].place(row.id)
        elif isinstance(row, Prediction):
            places[row.id] = responses.QueuePlace(
                reason=f"waiting for an instance of {row.deployment}", hardware=row.hardware
            )
    return places
