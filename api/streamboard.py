"""The runs that an API process's open streams follow, read together for all of them
(api/routes/streams.py).

Every open stream of a prediction or a training waits here for its run's row to change.
Once a tick the board reads, in one statement per table, a cheap fingerprint of every run
followed (its status and the lengths of its logs and of its output's JSON), then loads in
one more statement the full rows of only those whose fingerprint changed; the streams of a
run share its row. A stream's events follow its run's status, its logs and its output
growing (both only grow while the run is open: a stream sends what lies past what it sent)
and, at the end, its error and metrics, which are final once its status is: so a run whose
fingerprint is the same has nothing new to send, and is not loaded. The fingerprint is read
before the rows, so a change made between the two reads differs from it at the next tick.

A tick reads every run followed each ``POLL_INTERVAL`` while few are, less often as more
are (``FINGERPRINTS_PER_SECOND`` together at most); a run followed anew is read at once,
alone, so a stream's first events do not wait for the tick.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable, Iterator, Sequence
from typing import Any, Concatenate, ParamSpec, Protocol, TypeVar

from sqlalchemy import Text, cast, func
from sqlmodel import Session, col, select

from replicant.tables import Prediction, Training

log = logging.getLogger("replicant.api")
P = ParamSpec("P")
T = TypeVar("T")


class Reader(Protocol):
    """What the board uses of the process's database (api/state.py's ``Database``)."""

    async def read(
        self, fn: Callable[Concatenate[Session, P], T], *args: P.args, **kw: P.kwargs
    ) -> T: ...


# Seconds between two reads of a run, while few runs are followed.
POLL_INTERVAL = 0.05
# The fingerprints a process reads a second, at most: with many runs followed, each one is
# read less often (at 256, every 128 ms), so hundreds of held streams leave the event loop
# and the database to short requests.
FINGERPRINTS_PER_SECOND = 2000.0
# Runs of one table read by one statement, at most (bound parameters).
BATCH = 500

Run = Prediction | Training
Streamed = type[Prediction] | type[Training]
Key = tuple[Streamed, str]
Fingerprint = tuple[Any, ...]


class _Followed:
    """One run and the streams following it."""

    def __init__(self) -> None:
        self.streams = 0
        self.fingerprint: Fingerprint | None = None  # of ``row``; None: not read yet
        self.row: Run | None = None  # None once read: the run is gone
        self.error: Exception | None = None  # the read failed: its streams end with it
        self.version = 0  # how many times ``row`` (or ``error``) was set
        self.changed = asyncio.Event()

    def update(self, row: Run | None, error: Exception | None = None) -> None:
        self.row, self.error = row, error
        self.version += 1
        changed, self.changed = self.changed, asyncio.Event()
        changed.set()


class Follower:
    """How one stream follows its run: ``next()`` is its newest row once it changed."""

    def __init__(self, entry: _Followed) -> None:
        self.entry = entry
        self.seen = 0

    async def next(self) -> Run | None:
        """The run's row once it differs from the one this stream last had (the first one
        at once if another stream has it), or None once the run is gone."""
        entry = self.entry
        while entry.version == self.seen:
            await entry.changed.wait()
        self.seen = entry.version
        if entry.error is not None:
            raise entry.error
        return entry.row


class StreamBoard:
    """The runs followed by the open streams of one API process; used on the event loop."""

    def __init__(self, db: Reader) -> None:
        self.db = db
        self.followed: dict[Key, _Followed] = {}
        self.task: asyncio.Task[None] | None = None
        self.wake = asyncio.Event()  # a run is followed anew
        self.reads = 0  # fingerprint reads so far (each of one or more runs)
        self.loads = 0  # full rows loaded so far

    def interval(self) -> float:
        """Seconds between two reads of every run followed, for the runs followed now."""
        return max(POLL_INTERVAL, len(self.followed) / FINGERPRINTS_PER_SECOND)

    @contextlib.contextmanager
    def follow(self, table: Streamed, object_id: str) -> Iterator[Follower]:
        """Follow a run for as long as the ``with`` block lasts."""
        key = (table, object_id)
        entry = self.followed.get(key)
        if entry is None:
            entry = self.followed[key] = _Followed()
            self.wake.set()
            if self.task is None:
                self.task = asyncio.get_running_loop().create_task(self._run())
        entry.streams += 1
        try:
            yield Follower(entry)
        finally:
            entry.streams -= 1
            if entry.streams == 0 and self.followed.get(key) is entry:
                del self.followed[key]

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        due = loop.time()  # of the next read of every run followed
        try:
            while self.followed:
                self.wake.clear()
                if loop.time() >= due:
                    due = loop.time() + self.interval()
                    await self._read(list(self.followed.items()))
                else:
                    fresh = [(k, e) for k, e in self.followed.items() if e.version == 0]
                    if fresh:
                        await self._read(fresh)
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self.wake.wait(), max(0.0, due - loop.time()))
        finally:
            self.task = None

    async def _read(self, entries: Sequence[tuple[Key, _Followed]]) -> None:
        by_table: dict[Streamed, dict[str, _Followed]] = {}
        for (table, object_id), entry in entries:
            by_table.setdefault(table, {})[object_id] = entry
        for table, followed in by_table.items():
            ids = list(followed)
            for start in range(0, len(ids), BATCH):
                batch = {i: followed[i] for i in ids[start : start + BATCH]}
                known = {i: e.fingerprint for i, e in batch.items() if e.version > 0}
                try:
                    found, rows = await self.db.read(_changed_rows, table, known, list(batch))
                except Exception as err:  # noqa: BLE001 - its streams end with it, as each would
                    log.warning("event=stream_read_failed type=%s", type(err).__name__)
                    for entry in batch.values():
                        entry.update(None, err)
                    continue
                self.reads += 1
                self.loads += len(rows)
                for object_id, entry in batch.items():
                    if object_id not in found:
                        if entry.version == 0 or entry.row is not None:
                            entry.update(None)  # gone
                    elif object_id in rows:
                        entry.fingerprint = found[object_id]
                        entry.update(rows[object_id])


def _changed_rows(
    session: Session, table: Streamed, known: dict[str, Fingerprint | None], ids: list[str]
) -> tuple[dict[str, Fingerprint], dict[str, Run]]:
    """The fingerprints of the runs of ``ids`` that exist, and the full rows of those whose
    fingerprint is not their ``known`` one (or that have none yet)."""
    fingerprints = select(
        col(table.id),
        col(table.status),
        func.length(col(table.logs)),
        func.length(cast(col(table.output), Text)),
    ).where(col(table.id).in_(ids))
    found: dict[str, Fingerprint] = {
        object_id: tuple(rest) for object_id, *rest in session.exec(fingerprints).all()
    }
    changed = [i for i, fingerprint in found.items() if known.get(i) != fingerprint]
    rows: dict[str, Run] = {}
    if changed:
        if table is Prediction:
            for row in session.exec(select(Prediction).where(col(Prediction.id).in_(changed))):
                rows[row.id] = row
        else:
            for training in session.exec(select(Training).where(col(Training.id).in_(changed))):
                rows[training.id] = training
    return found, rows
