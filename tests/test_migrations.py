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
from sqlmodel import Session, SQLModel

from replicant.accounts import ensure_account
from replicant.db import alembic_config, current_revision, head_revision, init_db, make_engine
from replicant.managedweights import write_manifest
from replicant.sealing import SEALED_PREFIX
from replicant.tables import Version
from replicant.versions import ensure_model
from replicant.webhooks import account_webhook_secret, valid_secret


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


# ---- webhook signing secrets, sealed at rest ---------------------------------------------

KEY = "a-secret-key-of-this-installation"
PLAIN = "whsec_" + "QUJDREVGR0hJSktMTU5PUFFSU1RVVldY"


def stored_secret(engine: Engine, username: str) -> str | None:
    with engine.connect() as connection:
        value = connection.execute(
            text("SELECT webhook_secret FROM account WHERE username = :u"), {"u": username}
        ).scalar_one()
    return None if value is None else str(value)


def account_before_sealing(engine: Engine, username: str, secret: str | None) -> None:
    """A database at the release before sealing, with an account holding a plain secret."""
    with engine.begin() as connection:
        command.upgrade(alembic_config(connection), "e17c4a9b2d58")
    ensure_account(engine, username)
    with engine.begin() as connection:
        connection.execute(
            text("UPDATE account SET webhook_secret = :s WHERE username = :u"),
            {"s": secret, "u": username},
        )


def test_the_migration_seals_plain_webhook_secrets_and_reading_opens_them(
    engine: Engine,
) -> None:
    account_before_sealing(engine, "old-timer", PLAIN)
    init_db(engine, secret_key=KEY)
    sealed = stored_secret(engine, "old-timer")
    assert sealed is not None and sealed.startswith(SEALED_PREFIX)
    assert PLAIN not in sealed and PLAIN[6:] not in sealed
    # Receivers keep verifying: the account's secret is the one it had.
    assert account_webhook_secret(engine, "old-timer", KEY) == PLAIN
    assert stored_secret(engine, "old-timer") == sealed
    # Downgrading with the key opens it again for the older release.
    with engine.begin() as connection:
        command.downgrade(alembic_config(connection, KEY), "e17c4a9b2d58")
    assert stored_secret(engine, "old-timer") == PLAIN


def test_a_secret_the_migration_could_not_seal_is_sealed_on_first_use(engine: Engine) -> None:
    account_before_sealing(engine, "no-key-upgrade", PLAIN)
    init_db(engine)  # no secret_key: left as it is
    assert stored_secret(engine, "no-key-upgrade") == PLAIN
    assert account_webhook_secret(engine, "no-key-upgrade", KEY) == PLAIN
    sealed = stored_secret(engine, "no-key-upgrade")
    assert sealed is not None and sealed.startswith(SEALED_PREFIX)


def test_new_accounts_get_sealed_secrets_and_another_key_gets_a_new_one(
    engine: Engine,
) -> None:
    init_db(engine, secret_key=KEY)
    ensure_account(engine, "newcomer")
    assert stored_secret(engine, "newcomer") is None  # made on first use
    secret = account_webhook_secret(engine, "newcomer", KEY)
    assert valid_secret(secret)
    stored = stored_secret(engine, "newcomer")
    assert stored is not None and stored.startswith(SEALED_PREFIX) and secret not in stored
    assert account_webhook_secret(engine, "newcomer", KEY) == secret
    # Sealed for this account: copied onto another, it does not open there.
    ensure_account(engine, "copycat")
    with engine.begin() as connection:
        connection.execute(
            text("UPDATE account SET webhook_secret = :s WHERE username = 'copycat'"),
            {"s": stored},
        )
    assert account_webhook_secret(engine, "copycat", KEY) != secret
    # A rotated secret_key cannot open it: the account gets a new secret, sealed anew.
    rotated = account_webhook_secret(engine, "newcomer", "another-secret-key")
    assert rotated != secret and valid_secret(rotated)
    assert account_webhook_secret(engine, "newcomer", "another-secret-key") == rotated


# ---- the objects of managed weights that versions refer to --------------------------------


def test_the_migration_fills_in_the_weight_objects_of_versions_pushed_before(
    engine: Engine, tmp_path: Path
) -> None:
    with engine.begin() as connection:
        command.upgrade(alembic_config(connection), "a41e8c3f7b25")
    model = ensure_model(engine, "weighty", "model")
    key = "weights/sha256/" + "a" * 64
    files = [
        {"path": "a.bin", "sha256": "a" * 64, "size": 1, "key": key},
        {"path": "b.bin", "sha256": "b" * 64, "size": 1, "model": "w/b.bin"},  # the model's own
    ]
    write_manifest(tmp_path / "v1", [{"name": "w", "target": "/w", "digest": "d", "files": files}])
    with Session(engine) as session:
        for version_id, model_dir in (("v1", "v1"), ("v2", "gone")):  # v2's is unreadable
            session.add(
                Version(
                    id=version_id,
                    model_id=model.id or 0,
                    cog_version="0.23.1",
                    openapi_schema={},
                    model_dir=str(tmp_path / model_dir),
                )
            )
        session.commit()
    init_db(engine)
    with engine.connect() as connection:
        rows = connection.execute(text("SELECT version_id, object_key FROM managedweightref"))
        assert [tuple(row) for row in rows] == [("v1", key)]
