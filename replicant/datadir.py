"""The data dir holds the installation's secrets (``secret-key``, ``api-token``, the SQLite
databases with every account, token hash and webhook secret): the service user alone may
read it.

Every service command (``api``, ``worker``, ``seed``, ``db upgrade``, the dev stack) calls
``secure_data_dir`` at start: the directory becomes 0700, the files that hold secrets 0600,
and the SQLite database is created 0600 before SQLite first opens it (its ``-wal`` and
``-shm`` files take the database file's mode). The API and the Temporal dev server also run
with umask 077 (``PRIVATE_UMASK``), so every file they create is private. Workers keep the
usual umask: the files they write under ``versions/`` and ``envs/`` are read by model
processes, and the data dir's own mode already keeps everyone else out.
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path

from replicant.settings import Settings

# The umask of the API and the Temporal dev server: files they create are the owner's only.
PRIVATE_UMASK = 0o077
# Files in the data dir that hold secrets or every account's data.
SECRET_FILES = ("secret-key", "api-token")
SQLITE_SUFFIXES = ("", "-wal", "-shm", "-journal")
DATABASES = ("replicant.db", "temporal.db")


def sqlite_path(database_url: str) -> Path | None:
    """The file of a SQLite database URL (``sqlite:///path``); None for other databases and
    in-memory ones."""
    if not database_url.startswith("sqlite"):
        return None
    path = database_url.split("///", 1)[-1].split("?", 1)[0]
    return Path(path) if path and path != ":memory:" else None


def private_files(settings: Settings) -> list[Path]:
    """The files of the installation that only the service user may read (present or not)."""
    data = settings.data_dir
    files = [data / name for name in SECRET_FILES]
    databases = [data / name for name in DATABASES]
    own = sqlite_path(settings.resolved_database_url)
    if own is not None and own not in databases:
        databases.append(own)
    files += [Path(f"{db}{suffix}") for db in databases for suffix in SQLITE_SUFFIXES]
    return files


def secure_data_dir(settings: Settings) -> None:
    """Make the data dir 0700 and its secret files 0600, creating the data dir and the
    SQLite database file (empty, a valid database) so that neither is ever readable by
    others, even for a moment."""
    data = settings.data_dir
    data.mkdir(mode=0o700, parents=True, exist_ok=True)
    data.chmod(0o700)
    own = sqlite_path(settings.resolved_database_url)
    if own is not None:
        own.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        os.close(os.open(own, os.O_WRONLY | os.O_CREAT, 0o600))
    for path in private_files(settings):
        with contextlib.suppress(FileNotFoundError):
            path.chmod(0o600)


def start_private(settings: Settings) -> None:
    """At the start of a process that keeps only private files (the API): umask 077 and a
    secured data dir."""
    os.umask(PRIVATE_UMASK)
    secure_data_dir(settings)
