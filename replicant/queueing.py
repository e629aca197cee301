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
recent runs.
"""

from __future__ import annotations

import heapq
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import or_
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


def estimated_wait(
    ahead: Sequence[QueuedRun],
    running: Sequence[QueuedRun],
    slots: int,
    run_seconds: dict[str, float],
    now: datetime,
) -> float:
    """Seconds until a slot is free for the run after ``ahead``: ``running`` free their
    slots when their expected time is up, then each run ahead takes the earliest free slot
    for its expected time."""
    slots = max(slots, 1)
    remaining = sorted(
        max(0.0, run_seconds[r.version] - (now - as_utc(r.started_at or now)).total_seconds())
        for r in running
    )
    free = (remaining + [0.0] * slots)[:slots] if len(remaining) < slots else remaining[-slots:]
    heapq.heapify(free)
    for run in ahead:
        heapq.heappush(free, heapq.heappop(free) + run_seconds[run.version])
    return free[0]


def _queued(session: Session, hardware: str) -> tuple[list[QueuedRun], list[QueuedRun]]:
    """The runs of ``hardware``'s shared queue: (waiting for a slot, holding one)."""
    live = ("starting", "processing")
    predictions = session.exec(
        select(Prediction).where(
            col(Prediction.hardware) == hardware,
            col(Prediction.status).in_(live),
            # A deployment's instances serve its predictions, not the shared queue.
            or_(col(Prediction.deployment).is_(None), col(Prediction.deployment_shared)),
        )
    ).all()
    trainings = session.exec(
        select(Training).where(col(Training.hardware) == hardware, col(Training.status).in_(live))
    ).all()
    waiting: list[QueuedRun] = []
    running: list[QueuedRun] = []
    rows: list[Prediction | Training] = [*predictions, *trainings]
    for row in rows:
        run = QueuedRun(row.id, row.owner, row.version, as_utc(row.created_at), row.started_at)
        (waiting if row.status == "starting" and row.waiting is None else running).append(run)
    return waiting, running


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


def queue_place(
    session: Session, settings: Settings, row: Prediction | Training, now: datetime
) -> responses.QueuePlace | None:
    """Why ``row`` waits and, while it waits for a slot, its place and estimated start;
    None once it started (or ended)."""
    return queue_places(session, settings, [row], now).get(row.id)


def queue_places(
    session: Session,
    settings: Settings,
    rows: Sequence[Prediction | Training],
    now: datetime,
) -> dict[str, responses.QueuePlace]:
    """``queue_place`` of each of ``rows`` that has not started, by id (a page of a list):
    each hardware's queue is read once for all of them, from the read model only."""
    places: dict[str, responses.QueuePlace] = {}
    queued: dict[str, list[Prediction | Training]] = defaultdict(list)
    for row in rows:
        if row.status != "starting":
            continue
        if row.waiting in REASONS:
            places[row.id] = responses.QueuePlace(
                reason=REASONS[row.waiting], hardware=row.hardware
            )
        elif isinstance(row, Prediction) and row.deployment and not row.deployment_shared:
            places[row.id] = responses.QueuePlace(
                reason=f"waiting for an instance of {row.deployment}", hardware=row.hardware
            )
        else:
            queued[row.hardware].append(row)
    for hardware, these in queued.items():
        places.update(_places_in_queue(session, settings, hardware, these, now))
    return places


def _places_in_queue(
    session: Session,
    settings: Settings,
    hardware: str,
    rows: Sequence[Prediction | Training],
    now: datetime,
) -> dict[str, responses.QueuePlace]:
    """The places of ``rows`` (waiting for a slot of ``hardware``) in its queue."""
    waiting, running = _queued(session, hardware)
    owners = {r.owner for r in waiting}
    weights = dict(
        session.exec(
            select(Account.username, Account.fairness_weight).where(
                col(Account.username).in_(owners)
            )
        ).all()
    )
    order = fair_order(waiting, weights)
    index = {r.id: i for i, r in enumerate(order)}
    positions = {row.id: index.get(row.id, len(order)) for row in rows}
    last = max(positions.values())
    seconds = _run_seconds(session, {r.version for r in (*order[:last], *running)})
    slots = _slots(session, settings, hardware, now)
    places: dict[str, responses.QueuePlace] = {}
    for row_id, position in positions.items():
        wait = estimated_wait(order[:position], running, slots, seconds, now)
        places[row_id] = responses.QueuePlace(
            reason=f"queued for {hardware}",
            hardware=hardware,
            position=position + 1,
            estimated_start=isoformat(now + timedelta(seconds=wait)),
        )
    return places


def show_places(
    session: Session,
    settings: Settings,
    rows: Sequence[Prediction | Training],
    shown: Sequence[responses.Prediction | responses.Training],
    now: datetime,
) -> None:
    """Set ``queue`` on each of ``shown`` (the objects of ``rows``) that has not started."""
    places = queue_places(session, settings, rows, now)
    for item in shown:
        place = places.get(item.id)
        if place is not None:
            item.queue = place
