"""CPU cost of following ``--streams`` running predictions over their event streams
(api/routes/streams.py, api/streamboard.py), on a SQLite read model: a round of reads as each
stream made its own (the full row of every run), against one tick of the stream board when
nothing changed (the fingerprints of every run, one statement) and when ``--changed`` runs
did (their full rows too). Each run carries a 2 KB input, ``--logs`` KB of logs and an
output of 200 tokens. CPU time (``time.process_time``), so the figures hold on a loaded
machine; on SQLite the database works in this process, so its part is counted too.

Run: ``.venv/bin/python bench/stream_polls.py [--streams 256] [--logs 16] [--changed 16]``.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from sqlmodel import Session  # noqa: E402

from api.routes.streams import _load  # noqa: E402
from api.state import AppState  # noqa: E402
from api.streamboard import _changed_rows  # noqa: E402
from replicant.db import init_db, make_engine  # noqa: E402
from replicant.settings import Settings  # noqa: E402
from replicant.tables import Prediction  # noqa: E402

REPEATS = 20


async def _cpu_ms(fn: Callable[[], Awaitable[Any]], repeats: int = REPEATS) -> float:
    began = time.process_time()
    for _ in range(repeats):
        await fn()
    return 1000 * (time.process_time() - began) / repeats


async def run(streams: int, logs_kb: int, changed: int) -> None:
    settings = Settings(data_dir=Path(tempfile.mkdtemp()))
    engine = make_engine(settings.resolved_database_url)
    init_db(engine)
    ids = [f"run{i}" for i in range(streams)]
    with Session(engine) as session:
        for prediction_id in ids:
            session.add(
                Prediction(
                    id=prediction_id,
                    owner="u",
                    model="m/m",
                    version="v",
                    status="processing",
                    stream=True,
                    input={"prompt": "x" * 2000},
                    output=[f"token{t} " for t in range(200)],
                    logs=("a log line of some forty characters ...\n" * 25) * logs_kb,
                )
            )
        session.commit()
    db = AppState(settings, engine).db  # as the API reads: on the loop, through its own engine

    async def each_stream_reads() -> None:
        for prediction_id in ids:
            await db.read(_load, Prediction, prediction_id)

    known: dict[str, Any] = {}
    found, _ = await db.read(_changed_rows, Prediction, known, ids)
    known.update(found)

    async def tick_unchanged() -> None:
        _, rows = await db.read(_changed_rows, Prediction, known, ids)
        assert not rows

    stale = {i: (None if n < changed else f) for n, (i, f) in enumerate(known.items())}

    async def tick_changed() -> None:
        _, rows = await db.read(_changed_rows, Prediction, stale, ids)
        assert len(rows) == min(changed, streams)

    before = await _cpu_ms(each_stream_reads)
    unchanged = await _cpu_ms(tick_unchanged)
    some = await _cpu_ms(tick_changed)
    print(f"{streams} running predictions, {logs_kb} KB of logs and 200 output tokens each")
    print(f"  every stream reads its full row:   {before:8.2f} ms CPU a round")
    print(f"  board tick, nothing changed:       {unchanged:8.2f} ms CPU a tick")
    print(f"  board tick, {changed:3d} runs changed:      {some:8.2f} ms CPU a tick")
    per_run = 1000 / streams
    print(f"  per run followed: {before * per_run:.1f} us against {unchanged * per_run:.1f} us")
    engine.dispose()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--streams", type=int, default=256)
    parser.add_argument("--logs", type=int, default=16, help="KB of logs of each run")
    parser.add_argument("--changed", type=int, default=16)
    args = parser.parse_args()
    asyncio.run(run(args.streams, args.logs, args.changed))


if __name__ == "__main__":
    main()
