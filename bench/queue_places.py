"""CPU cost of the ``queue`` of a waiting run's answers (replicant/queueing.py,
api/queueboard.py) on a SQLite read model of ``--waiting`` runs waiting for one hardware
and 2,000 finished ones: one snapshot read (with each version's run time reread, and with it
kept), and one request answered from a shared snapshot. CPU time (``time.process_time``),
so the figures hold on a loaded machine.

Run: ``.venv/bin/python bench/queue_places.py [--waiting 250]``.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import tempfile
import time
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from sqlmodel import Session  # noqa: E402

from api.queueboard import QueueBoard  # noqa: E402
from replicant.db import init_db, make_engine  # noqa: E402
from replicant.queueing import Estimates, read_snapshot  # noqa: E402
from replicant.settings import Settings  # noqa: E402
from replicant.tables import Prediction  # noqa: E402
from replicant.timeutil import utcnow  # noqa: E402

FINISHED = 2000
REPEATS = 30


def _cpu_ms(fn: Callable[[], object], repeats: int = REPEATS) -> float:
    began = time.process_time()
    for _ in range(repeats):
        fn()
    return 1000 * (time.process_time() - began) / repeats


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--waiting", type=int, default=250)
    waiting = parser.parse_args().waiting
    settings = Settings(data_dir=Path(tempfile.mkdtemp()))
    engine = make_engine(settings.resolved_database_url)
    init_db(engine)
    now = utcnow()
    blob = {"prompt": "x" * 800}
    with Session(engine) as session:
        for i in range(FINISHED):
            session.add(
                Prediction(
                    id=f"done{i}",
                    owner=f"u{i % 50}",
                    model="m/m",
                    version="v",
                    hardware="cpu",
                    status="succeeded",
                    input=blob,
                    output="y" * 800,
                    metrics={"predict_time": 0.1},
                    created_at=now - timedelta(seconds=9000 - i),
                    completed_at=now - timedelta(seconds=8000 - i),
                )
            )
        for i in range(waiting):
            session.add(
                Prediction(
                    id=f"w{i}",
                    owner=f"u{i % 50}",
                    model="m/m",
                    version="v",
                    hardware="cpu",
                    input=blob,
                    created_at=now - timedelta(seconds=waiting - i),
                )
            )
        session.commit()
    with Session(engine, expire_on_commit=False) as session:
        row = session.get(Prediction, f"w{waiting // 2}")
        assert row is not None
        fresh = _cpu_ms(
            lambda: read_snapshot(session, settings, "cpu", Estimates(), time.monotonic(), utcnow())
        )
        kept = Estimates()
        kept_ms = _cpu_ms(
            lambda: read_snapshot(session, settings, "cpu", kept, time.monotonic(), utcnow())
        )
    board = QueueBoard(engine, settings)

    async def shared() -> float:
        await board.place(row)
        began = time.process_time()
        for _ in range(300):
            await board.place(row)
        return 1000 * (time.process_time() - began) / 300

    shared_ms = asyncio.run(shared())
    print(
        f"{waiting} waiting, {FINISHED} finished: a snapshot read {fresh:.1f} ms CPU "
        f"({kept_ms:.1f} ms with run times kept); a request answered from a shared "
        f"snapshot {shared_ms:.3f} ms ({board.reads} reads for 301 requests)"
    )
    engine.dispose()


if __name__ == "__main__":
    main()
