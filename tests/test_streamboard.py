"""The stream board (api/streamboard.py): the open streams of a process follow their runs
through one read of cheap fingerprints per tick, and a run's full row is loaded only when
it changed, once for all the streams that follow it. On SQLite and on PostgreSQL."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from sqlalchemy.engine import Engine
from sqlmodel import Session

from api.state import Database
from api.streamboard import Follower, StreamBoard
from replicant import readmodel
from replicant.db import init_db, make_engine
from replicant.tables import Prediction, Training
from replicant.timeutil import utcnow


@pytest.fixture
def engine(database_url: str) -> Iterator[Engine]:
    made = make_engine(database_url)
    init_db(made)
    yield made
    made.dispose()


def _running(engine: Engine, prediction_id: str) -> None:
    row = Prediction(id=prediction_id, owner="a", model="a/m", version="v", stream=True)
    row.status = "processing"
    with Session(engine) as session:
        session.add(row)
        session.commit()


async def _next(follower: Follower) -> Prediction:
    row = await follower.next()
    assert isinstance(row, Prediction)
    return row


async def test_streams_of_a_run_share_one_load_per_change_and_an_unchanged_run_is_not_loaded(
    engine: Engine,
) -> None:
    _running(engine, "p1")
    _running(engine, "clock")  # a run written to, to know that a tick read both
    board = StreamBoard(Database(engine))
    with (
        board.follow(Prediction, "p1") as first,
        board.follow(Prediction, "p1") as second,
        board.follow(Prediction, "p1") as third,
        board.follow(Prediction, "clock") as clock,
    ):
        rows = [await _next(f) for f in (first, second, third)]
        assert {row.status for row in rows} == {"processing"}
        await _next(clock)
        assert board.loads == 2  # each run once, whatever number of streams follow it

        readmodel.record_progress(engine, "p1", "one\n", ["a"])
        changed = [await _next(f) for f in (first, second, third)]
        assert [(row.logs, row.output) for row in changed] == [("one\n", ["a"])] * 3
        assert board.loads == 3

        # A tick reads both runs; only the clock changed, so only it is loaded.
        readmodel.record_progress(engine, "clock", "tick\n", None)
        assert (await _next(clock)).logs == "tick\n"
        assert board.loads == 4

        # Output growing by a chunk, logs alike, the run's end: each is a new row.
        readmodel.record_progress(engine, "p1", "one\n", ["a", "b"])
        assert (await _next(first)).output == ["a", "b"]
        readmodel.record_progress(engine, "p1", "one\ntwo\n", ["a", "b"])
        assert (await _next(first)).logs == "one\ntwo\n"
        readmodel.finish_prediction(
            engine, "p1", status="succeeded", completed_at=utcnow(), output=["a", "b"]
        )
        ended = await _next(first)
        assert ended.status == "succeeded" and ended.metrics is not None
    assert board.followed == {}


async def test_a_run_followed_anew_is_read_at_once_and_a_missing_one_ends_its_stream(
    engine: Engine,
) -> None:
    _running(engine, "p1")
    board = StreamBoard(Database(engine))
    with board.follow(Prediction, "p1") as follower:
        assert (await _next(follower)).id == "p1"
        # A later stream of the same run gets the row the board has, without a read.
        loads = board.loads
        with board.follow(Prediction, "p1") as late:
            assert (await _next(late)).id == "p1"
        assert board.loads == loads
        with board.follow(Training, "nothing") as missing:
            assert await missing.next() is None
