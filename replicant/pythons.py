"""Finding a Python interpreter of a requested version on this machine.

A name on ``PATH`` proves nothing (a pyenv shim of an inactive version is found by
``shutil.which`` and then fails with "pyenv: python3.12: command not found"), so every
candidate is run and counts only when it reports the requested version itself.
"""

from __future__ import annotations

import logging
import os
import re
import shutil
import subprocess
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

from packaging.version import InvalidVersion, Version

log = logging.getLogger(__name__)

PROBE_TIMEOUT = 15.0
_PROBE = "import sys; print('%d.%d.%d' % sys.version_info[:3])"
_REPORTED = re.compile(r"^(\d+)\.(\d+)\.(\d+)$")
SYSTEM_DIRS = (Path("/usr/local/bin"), Path("/usr/bin"))


@dataclass(frozen=True)
class Interpreter:
    """An interpreter that ran and reported its version (``X.Y.Z``)."""

    path: Path
    version: str

    @property
    def major_minor(self) -> str:
        return ".".join(self.version.split(".")[:2])


def probe(path: Path) -> str | None:
    """The ``X.Y.Z`` that ``path`` reports when run, or None when it does not run."""
    try:
        proc = subprocess.run(
            [str(path), "-c", _PROBE],
            capture_output=True,
            text=True,
            timeout=PROBE_TIMEOUT,
            stdin=subprocess.DEVNULL,
            check=False,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    lines = proc.stdout.strip().splitlines()
    if proc.returncode != 0 or not lines or not _REPORTED.match(lines[-1].strip()):
        return None
    return lines[-1].strip()


def _sort_key(name: str) -> Version:
    try:
        return Version(name.split("-")[1] if name.startswith("cpython-") else name)
    except (InvalidVersion, IndexError):
        return Version("0")


def _versions_under(root: Path, pattern: str) -> list[Path]:
    """Installation directories under ``root`` matching ``pattern``, newest first."""
    try:
        found = [p for p in root.glob(pattern) if p.is_dir()]
    except OSError:
        return []
    return sorted(found, key=lambda p: _sort_key(p.name), reverse=True)


def pyenv_roots() -> list[Path]:
    """Where pyenv keeps its versions: ``$PYENV_ROOT``, ``pyenv root``, ``~/.pyenv``."""
    roots: list[Path] = []
    if os.environ.get("PYENV_ROOT"):
        roots.append(Path(os.environ["PYENV_ROOT"]))
    pyenv = shutil.which("pyenv")
    if pyenv:
        roots += _command_dir([pyenv, "root"])
    roots.append(Path.home() / ".pyenv")
    return roots


def uv_python_dirs() -> list[Path]:
    """Where uv keeps the Pythons it manages: ``uv python dir``, ``~/.local/share/uv/python``."""
    dirs: list[Path] = []
    uv = shutil.which("uv")
    if uv:
        dirs += _command_dir([uv, "python", "dir"])
    data_home = os.environ.get("XDG_DATA_HOME") or str(Path.home() / ".local" / "share")
    dirs.append(Path(data_home) / "uv" / "python")
    return dirs


def _command_dir(args: list[str]) -> list[Path]:
    try:
        proc = subprocess.run(
            args, capture_output=True, text=True, timeout=PROBE_TIMEOUT, check=False
        )
    except (OSError, subprocess.SubprocessError):
        return []
    out = proc.stdout.strip()
    return [Path(out)] if proc.returncode == 0 and out else []


def candidates(
    wanted: str,
    *,
    path: str | None = None,
    pyenv: Iterable[Path] | None = None,
    uv: Iterable[Path] | None = None,
    system: Iterable[Path] = SYSTEM_DIRS,
) -> Iterator[Path]:
    """Every place a Python ``wanted`` (``X.Y``) may live, each path once, in search order."""
    name = f"python{wanted}"
    seen: set[Path] = set()

    def fresh(paths: Iterable[Path]) -> Iterator[Path]:
        for p in paths:
            if p not in seen and p.is_file() and os.access(p, os.X_OK):
                seen.add(p)
                yield p

    search = os.environ.get("PATH", "") if path is None else path
    yield from fresh(Path(d) / name for d in search.split(os.pathsep) if d)
    for root in pyenv_roots() if pyenv is None else pyenv:
        for install in _versions_under(root / "versions", f"{wanted}.*"):
            yield from fresh([install / "bin" / name, install / "bin" / "python3"])
    for root in uv_python_dirs() if uv is None else uv:
        for install in _versions_under(root, f"cpython-{wanted}.*"):
            yield from fresh([install / "bin" / name, install / "bin" / "python3"])
    yield from fresh(d / name for d in system)


def find_python(requested: str, paths: Iterable[Path] | None = None) -> Interpreter | None:
    """The interpreter for ``requested`` (``X.Y`` or ``X.Y.Z``) that really runs, or None.

    Each candidate is run; one reporting exactly ``X.Y.Z`` wins when a patch level was asked
    for, else the first reporting ``X.Y``.
    """
    parts = requested.strip().split(".")
    wanted = ".".join(parts[:2])
    exact = requested.strip() if len(parts) >= 3 else None
    fallback: Interpreter | None = None
    for candidate in candidates(wanted) if paths is None else paths:
        reported = probe(candidate)
        if reported is None:
            log.info("event=python_candidate_failed path=%s", candidate)
            continue
        found = Interpreter(candidate, reported)
        if found.major_minor != wanted:
            continue
        if exact is None or reported == exact:
            return found
        fallback = fallback or found
    return fallback
