"""Packing a Cog model directory for a push, and unpacking a pushed archive safely.

An upload is untrusted: only regular files and directories are unpacked, every path must
stay inside the target directory, and the unpacked total is bounded (archive bombs).
"""

from __future__ import annotations

import os
import shutil
import stat
import tarfile
import zipfile
from pathlib import Path, PurePosixPath
from typing import IO

# Never part of a model: Cog's build output, caches, VCS data, local environments.
SKIPPED = frozenset({".cog", "__pycache__", ".git", ".venv"})
MAX_MEMBERS = 100_000
CHUNK = 1024 * 1024


class ArchiveError(Exception):
    """The upload is not a model archive we can unpack safely; the message says why."""


class ArchiveTooLarge(ArchiveError):
    """The archive unpacks to more than the allowed number of bytes."""


class LinkOutside(ArchiveError):
    """A symbolic link in a model directory points out of it: pushing it would upload a file
    of the pusher's machine that is not part of the model."""


def model_files(src: Path) -> list[Path]:
    """The files of a model directory that make up a version, in a stable order.

    A symbolic link inside the directory is packed as the file it points at; one that points
    out of the directory (or a link to a directory outside) is refused with ``LinkOutside``.
    Links to directories inside are not followed.
    """
    root = src.resolve()
    found = []
    for dirpath, dirnames, filenames in os.walk(src):
        here = Path(dirpath)
        dirnames[:] = sorted(d for d in dirnames if d not in SKIPPED)
        files = [here / f for f in filenames if f not in SKIPPED]
        for path in [*(here / d for d in dirnames), *files]:
            if path.is_symlink():
                _check_link(path, src, root)
        found += [path for path in files if path.is_file()]
    return sorted(found)


def _check_link(path: Path, src: Path, root: Path) -> None:
    target = path.resolve()
    if target != root and root not in target.parents:
        raise LinkOutside(
            f"{path.relative_to(src).as_posix()} is a symbolic link to {os.readlink(path)}, "
            "outside the model directory: copy what it points at into the directory, or "
            "remove the link"
        )


def _anonymous(info: tarfile.TarInfo) -> tarfile.TarInfo:
    # The pusher's user and group names are nobody else's business.
    info.uid = info.gid = 0
    info.uname = info.gname = ""
    return info


def pack_model(src: Path, out: IO[bytes]) -> int:
    """Write ``src``'s model files to ``out`` as a tar.gz; returns the number of files."""
    files = model_files(src)
    with tarfile.open(fileobj=out, mode="w:gz", dereference=True) as tar:
        for path in files:
            tar.add(path, arcname=path.relative_to(src).as_posix(), filter=_anonymous)
    return len(files)


def _safe_relative(name: str) -> PurePosixPath:
    """The member's path relative to the target, or ArchiveError if it could escape."""
    path = PurePosixPath(name.replace("\\", "/"))
    if path.is_absolute():
        raise ArchiveError(f"{name!r}: absolute paths are not allowed in a model archive")
    parts = [p for p in path.parts if p not in ("", ".")]
    if ".." in parts:
        raise ArchiveError(f"{name!r}: '..' is not allowed in a model archive")
    return PurePosixPath(*parts) if parts else PurePosixPath(".")


class _Budget:
    """Counts unpacked bytes and members against the limits."""

    def __init__(self, max_bytes: int) -> None:
        self.max_bytes = max_bytes
        self.used = 0
        self.members = 0

    def member(self) -> None:
        self.members += 1
        if self.members > MAX_MEMBERS:
            raise ArchiveError(f"the archive has more than {MAX_MEMBERS} entries")

    def take(self, size: int) -> None:
        self.used += size
        if self.used > self.max_bytes:
            raise ArchiveTooLarge(f"the archive unpacks to more than {self.max_bytes} bytes")


def _write(source: IO[bytes], target: Path, budget: _Budget, executable: bool) -> None:
    target.parent.mkdir(parents=True, exist_ok=True)
    if target.is_dir():
        raise ArchiveError(f"{target.name!r} is both a file and a directory in the archive")
    with target.open("wb") as sink:
        while chunk := source.read(CHUNK):
            budget.take(len(chunk))
            sink.write(chunk)
    target.chmod(0o755 if executable else 0o644)


def _target(dest: Path, name: str) -> Path:
    relative = _safe_relative(name)
    target = (dest / relative).resolve()
    if target != dest and not target.is_relative_to(dest):
        raise ArchiveError(f"{name!r} points outside the model directory")
    return target


def _unpack_tar(archive: Path, dest: Path, budget: _Budget) -> None:
    try:
        with tarfile.open(archive, mode="r:*") as tar:
            for member in tar:  # streams the members, without reading an index first
                budget.member()
                target = _target(dest, member.name)
                if member.isdir():
                    target.mkdir(parents=True, exist_ok=True)
                    continue
                if not member.isreg():
                    raise ArchiveError(
                        f"{member.name!r}: only regular files and directories are allowed "
                        "(no links or devices)"
                    )
                if member.size > budget.max_bytes - budget.used:
                    raise ArchiveTooLarge(
                        f"the archive unpacks to more than {budget.max_bytes} bytes"
                    )
                source = tar.extractfile(member)
                if source is None:
                    raise ArchiveError(f"{member.name!r} cannot be read")
                with source:
                    _write(source, target, budget, bool(member.mode & stat.S_IXUSR))
    except (tarfile.TarError, EOFError, OSError) as e:
        raise ArchiveError(f"the archive is damaged or not a tar archive: {e}") from e


def _unpack_zip(archive: Path, dest: Path, budget: _Budget) -> None:
    try:
        with zipfile.ZipFile(archive) as zf:
            for info in zf.infolist():
                budget.member()
                mode = info.external_attr >> 16
                target = _target(dest, info.filename)
                if info.is_dir():
                    target.mkdir(parents=True, exist_ok=True)
                    continue
                # Some zip writers store permissions without a file type: that is a file.
                if stat.S_IFMT(mode) not in (0, stat.S_IFREG):
                    raise ArchiveError(
                        f"{info.filename!r}: only regular files and directories are allowed "
                        "(no links or devices)"
                    )
                with zf.open(info) as source:
                    _write(source, target, budget, bool(mode & stat.S_IXUSR))
    except (zipfile.BadZipFile, zipfile.LargeZipFile, EOFError, OSError) as e:
        raise ArchiveError(f"the archive is damaged or not a zip archive: {e}") from e


def _kind(archive: Path) -> str:
    with archive.open("rb") as f:
        head = f.read(512)
    if head.startswith(b"PK\x03\x04") or head.startswith(b"PK\x05\x06"):
        return "zip"
    if head.startswith(b"\x1f\x8b") or head.startswith(b"BZh") or head.startswith(b"\xfd7zXZ"):
        return "tar"
    if len(head) >= 262 and head[257:262] == b"ustar":
        return "tar"
    raise ArchiveError("the upload is not a .tar.gz, .tar or .zip archive")


def unpack_model(archive: Path, dest: Path, max_bytes: int) -> Path:
    """Unpack a pushed archive into the empty directory ``dest``; return the model's root.

    The root is ``dest`` itself, or its only top-level directory when the archive wraps the
    model in one folder (``mymodel/cog.yaml``). Raises ``ArchiveError`` (``ArchiveTooLarge``
    past ``max_bytes``) and leaves ``dest`` empty when the archive is unsafe or damaged.
    """
    dest = dest.resolve()
    budget = _Budget(max_bytes)
    try:
        if _kind(archive) == "zip":
            _unpack_zip(archive, dest, budget)
        else:
            _unpack_tar(archive, dest, budget)
    except BaseException:
        for child in dest.iterdir():
            if child.is_dir() and not child.is_symlink():
                shutil.rmtree(child, ignore_errors=True)
            else:
                child.unlink(missing_ok=True)
        raise
    if (dest / "cog.yaml").is_file():
        return dest
    entries = [p for p in dest.iterdir() if p.name not in SKIPPED and p.name != "__MACOSX"]
    if len(entries) == 1 and entries[0].is_dir() and (entries[0] / "cog.yaml").is_file():
        return entries[0]
    return dest
