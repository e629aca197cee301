"""The stack a benchmark runs: an embedded stack on free ports in a temporary data directory,
with the benchmarks' settings, optionally on a fresh PostgreSQL database.

Run from a benchmark after ``sys.path`` holds the repository (as each one does).
"""

from __future__ import annotations

import contextlib
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from replicant.devstack import Stack, free_port
from replicant.settings import Settings
from tests.pgdb import fresh_postgres_database

ADMIN_URL = "postgresql+psycopg://postgres@127.0.0.1:5432/test"


@contextlib.contextmanager
def bench_stack(**overrides: Any) -> Iterator[Stack]:
    """A stack's processes, none started yet: warnings only and no rate limits (benchmarks
    make more requests a minute than an account may), plus ``overrides``. Every process it
    started is stopped, and its data directory removed, when the block ends."""
    with tempfile.TemporaryDirectory(prefix="replicant-bench-") as data_dir:
        values: dict[str, Any] = {
            "data_dir": Path(data_dir),
            "api_port": free_port(),
            "temporal_port": free_port(),
            "ui_port": free_port(),
            "log_level": "WARNING",
            "rate_limit_create": "1000000/minute",
            "rate_limit_default": "1000000/minute",
        }
        stack = Stack(
            Settings(**{**values, **overrides}), ui=False, log_dir=Path(data_dir) / "logs"
        )
        try:
            yield stack
        finally:
            stack.stop()


@contextlib.contextmanager
def postgres_bench_stack(admin_url: str = ADMIN_URL, **overrides: Any) -> Iterator[Stack]:
    """``bench_stack`` on a database of its own on the local PostgreSQL server (``admin_url``
    creates it), dropped after the stack has stopped."""
    with (
        fresh_postgres_database("replicant_bench", admin_url) as database_url,
        bench_stack(database_url=database_url, **overrides) as stack,
    ):
        yield stack
