"""Fresh PostgreSQL databases for tests, on the local server (127.0.0.1:5432, trust auth)."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator

from sqlalchemy import create_engine, text

# The database the local server has for tests; new databases are created from it and dropped.
ADMIN_URL = "postgresql+psycopg://postgres@127.0.0.1:5432/test"


@contextlib.contextmanager
def fresh_postgres_database(
    prefix: str = "replicant_test", admin_url: str = ADMIN_URL
) -> Iterator[str]:
    """A new, empty database named ``<prefix>_<random>`` on the server of ``admin_url``;
    yields its URL and drops it after."""
    name = f"{prefix}_{os.urandom(4).hex()}"
    admin = create_engine(admin_url, isolation_level="AUTOCOMMIT")
    try:
        with admin.connect() as conn:
            conn.execute(text(f'CREATE DATABASE "{name}"'))
        try:
            yield admin_url.rsplit("/", 1)[0] + f"/{name}"
        finally:
            with admin.connect() as conn:
                conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
    finally:
        admin.dispose()
