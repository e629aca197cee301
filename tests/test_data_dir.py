"""The data dir and the files in it that hold secrets (the secret key, the token, the SQLite
databases and their -wal/-shm files) are readable by the service user only: 0700 and 0600,
from the moment they exist, on a fresh data dir and on one an older release left open."""

from __future__ import annotations

import os
import stat
import subprocess
import sys
from pathlib import Path

from sqlalchemy import text

from replicant.datadir import private_files, secure_data_dir
from replicant.db import init_db, make_engine
from replicant.devstack import temporal_command
from replicant.settings import Settings
from tests.conftest import LiveStack


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_a_fresh_data_dir_and_its_database_are_private(tmp_path: Path) -> None:
    settings = Settings(data_dir=tmp_path / "data", secret_key=None, api_token=None)
    secure_data_dir(settings)
    assert mode(settings.data_dir) == 0o700
    database = settings.data_dir / "replicant.db"
    assert mode(database) == 0o600
    # SQLite gives its WAL and shared-memory files the database file's mode, whatever the
    # process's umask.
    previous = os.umask(0o022)
    try:
        engine = make_engine(settings.resolved_database_url)
        init_db(engine)
        with engine.begin() as conn:
            conn.execute(text("CREATE TABLE probe (x INTEGER)"))
            conn.execute(text("INSERT INTO probe VALUES (1)"))
        settings.ensure_secret_key()
        settings.ensure_api_token()
        for name in ("replicant.db-wal", "replicant.db-shm", "secret-key", "api-token"):
            assert mode(settings.data_dir / name) == 0o600, name
        engine.dispose()
    finally:
        os.umask(previous)


def test_an_open_data_dir_is_closed_at_start(tmp_path: Path) -> None:
    settings = Settings(data_dir=tmp_path / "data")
    data = settings.data_dir
    data.mkdir(mode=0o755)
    data.chmod(0o755)
    for name in ("replicant.db", "replicant.db-wal", "temporal.db", "secret-key", "api-token"):
        (data / name).write_text("x")
        (data / name).chmod(0o644)
    (data / "versions").mkdir()  # model code: read by model processes, left as it is
    (data / "versions").chmod(0o755)
    secure_data_dir(settings)
    assert mode(data) == 0o700
    for name in ("replicant.db", "replicant.db-wal", "temporal.db", "secret-key", "api-token"):
        assert mode(data / name) == 0o600, name
    assert mode(data / "versions") == 0o755
    assert {data / "replicant.db", data / "temporal.db-shm"} <= set(private_files(settings))


def test_a_database_outside_the_data_dir_is_private_too(tmp_path: Path) -> None:
    database = tmp_path / "elsewhere" / "replicant.sqlite"
    settings = Settings(data_dir=tmp_path / "data", database_url=f"sqlite:///{database}")
    secure_data_dir(settings)
    assert mode(database) == 0o600
    assert mode(database.parent) == 0o700


def test_the_api_process_creates_private_files(tmp_path: Path) -> None:
    """``start_private``, as ``replicant api`` calls it first: umask 077 for the process."""
    probe = (
        "import os, sys\n"
        "from replicant.datadir import start_private\n"
        "from replicant.settings import Settings\n"
        "start_private(Settings(data_dir=sys.argv[1]))\n"
        "open(os.path.join(sys.argv[1], 'objects-file'), 'w').close()\n"
    )
    data = tmp_path / "data"
    subprocess.run([sys.executable, "-c", probe, str(data)], check=True)
    assert mode(data) == 0o700
    assert mode(data / "objects-file") == 0o600
    assert mode(data / "replicant.db") == 0o600


def test_the_temporal_ui_listens_on_loopback_unless_told_otherwise() -> None:
    command = temporal_command(Settings())
    assert command[command.index("--ui-ip") + 1] == "127.0.0.1"
    assert command[command.index("--ip") + 1] == "127.0.0.1"
    assert Settings().resolved_temporal_ui_url == "http://127.0.0.1:8233"
    wide = Settings(ui_host="0.0.0.0", ui_port=9000)
    assert temporal_command(wide)[temporal_command(wide).index("--ui-ip") + 1] == "0.0.0.0"
    # The dashboard's link then points where a browser on this host finds the UI.
    assert wide.resolved_temporal_ui_url == "http://127.0.0.1:9000"
    assert Settings(ui_host="10.1.2.3").resolved_temporal_ui_url == "http://10.1.2.3:8233"


def test_the_running_stack_keeps_its_data_private(live: LiveStack) -> None:
    data = live.settings.data_dir
    assert mode(data) == 0o700
    present = [path for path in private_files(live.settings) if path.exists()]
    assert data / "temporal.db" in present
    for path in present:
        assert mode(path) == 0o600, path
