"""The migrations and the tables agree, on SQLite and on PostgreSQL.

Adding a column to ``replicant/tables.py`` without a migration (``replicant db revision -m
...``) fails here: the database the migrations build is compared with ``SQLModel.metadata``.
"""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import inspect, text
from sqlalchemy.engine import Engine
from sqlmodel import SQLModel

from replicant.db import alembic_config, current_revision, head_revision, init_db, make_engine
from tests.pgdb import fresh_postgres_database


@pytest.fixture(params=["sqlite", "postgres"])
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'replicant.db'}"
    else:
        with fresh_postgres_database("replicant_migrations") as url:
            yield url


@pytest.fixture
def engine(database_url: str) -> Iterator[Engine]:
    engine = make_engine(database_url)
    yield engine
    engine.dispose()


def differences(engine: Engine) -> list[object]:
    with engine.connect() as connection:
        context = MigrationContext.configure(connection, opts={"compare_type": True})
        return list(compare_metadata(context, SQLModel.metadata))


def test_migrations_build_exactly_the_tables(engine: Engine) -> None:
    init_db(engine)
    assert current_revision(engine) == head_revision()
    assert differences(engine) == []
    tables = set(inspect(engine).get_table_names())
    assert set(SQLModel.metadata.tables) <= tables


def test_a_column_without_a_migration_is_noticed(engine: Engine) -> None:
    init_db(engine)
    with engine.begin() as connection:
        connection.execute(text("ALTER TABLE prediction DROP COLUMN shared"))
    diffs = differences(engine)
    assert [(d[0], d[3].name) for d in diffs] == [("add_column", "shared")]  # type: ignore[index]


def test_downgrade_to_nothing_and_back(engine: Engine) -> None:
    init_db(engine)
    with engine.begin() as connection:
        command.downgrade(alembic_config(connection), "base")
    assert set(inspect(engine).get_table_names()) <= {"alembic_version"}
    init_db(engine)
    assert differences(engine) == []


def test_a_database_made_before_migrations_is_completed_and_stamped(engine: Engine) -> None:
    SQLModel.metadata.tables["account"].create(engine)
    init_db(engine)
    assert current_revision(engine) == head_revision()
    assert differences(engine) == []


def test_db_upgrade_command(database_url: str, tmp_path: Path) -> None:
    env = {"REPLICANT_DATABASE_URL": database_url, "REPLICANT_DATA_DIR": str(tmp_path)}
    run = subprocess.run(
        [sys.executable, "-m", "replicant.cli", "db", "upgrade"],
        env={**_base_env(), **env},
        capture_output=True,
        text=True,
    )
    assert run.returncode == 0, run.stderr
    assert f"database at {head_revision()}" in run.stdout
    engine = make_engine(database_url)
    try:
        assert differences(engine) == []
    finally:
        engine.dispose()


def _base_env() -> dict[str, str]:
    import os

    return {k: v for k, v in os.environ.items() if not k.startswith("REPLICANT_")}
