"""What a scrape of ``GET /metrics`` costs the database at 1,000 and 100,000 predictions.

The ``replicant_predictions`` gauge counts the read model's predictions by status. This
times the API's collector (``api.metrics.ReadModelCollector``) scrape after scrape on a
fresh PostgreSQL database (``--admin-url``; dropped at the end) and on a SQLite file, with
rows bulk-inserted as ``bench/list_scale.py`` makes them (one in a hundred left
``starting``): a scrape that counts everything (``metrics_count_interval`` 0), and one within
the interval (it counts the waiting and running predictions only).

Run: ``.venv/bin/python bench/metrics_scale.py [--scrapes 30]``.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

from sqlalchemy import update
from sqlalchemy.engine import Engine
from sqlmodel import col

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from api.metrics import COUNT_ENDED, COUNT_LIVE, ReadModelCollector  # noqa: E402
from bench.list_scale import SIZES, explain, insert_predictions  # noqa: E402
from bench.stacks import ADMIN_URL  # noqa: E402
from replicant.db import init_db, make_engine  # noqa: E402
from replicant.tables import Prediction  # noqa: E402
from tests.pgdb import fresh_postgres_database  # noqa: E402


def scrape_ms(collector: ReadModelCollector, scrapes: int) -> float:
    """The median time of one collection, in milliseconds."""
    samples = []
    for _ in range(scrapes):
        start = time.perf_counter()
        list(collector.collect())
        samples.append((time.perf_counter() - start) * 1000)
    return statistics.median(samples)


def bench(engine: Engine, name: str, scrapes: int) -> None:
    init_db(engine)
    stored = 0
    for size in SIZES:
        ids = insert_predictions(engine, size - stored, stored)
        stored = size
        # One in a hundred still waiting: a queue as deep as a hundredth of the table.
        with engine.begin() as conn:
            waiting = update(Prediction).where(col(Prediction.id).in_(ids[::100]))
            conn.execute(waiting.values(status="starting"))
        counted = scrape_ms(ReadModelCollector(engine, count_interval=0), scrapes)
        cached = scrape_ms(ReadModelCollector(engine, count_interval=3600), scrapes)
        print(
            f"{name:10s} {size:>7,} rows  count {counted:8.2f} ms  "
            f"within the interval {cached:6.2f} ms (median of {scrapes})"
        )
    if engine.dialect.name == "postgresql":
        for name, query in (("waiting and running", COUNT_LIVE), ("ended", COUNT_ENDED)):
            print(f"  plan of the count of {name}:\n      {explain(engine, query.text)}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--scrapes", type=int, default=30)
    parser.add_argument("--admin-url", default=ADMIN_URL)
    args = parser.parse_args()
    with fresh_postgres_database("replicant_bench", args.admin_url) as url:
        engine = make_engine(url)
        bench(engine, "postgresql", args.scrapes)
        engine.dispose()
    with tempfile.TemporaryDirectory(prefix="replicant-bench-") as data_dir:
        engine = make_engine(f"sqlite:///{data_dir}/replicant.db")
        bench(engine, "sqlite", args.scrapes)
        engine.dispose()


if __name__ == "__main__":
    main()
