"""Trained weights: where a fine-tune's weights live and how a model process gets them.

A fine-tune version's ``weights_url`` is either an http(s) URL (handed to the model as it is)
or a reference into the object store, ``replicant-store:<key>?sha256=<digest>``, which never
expires. A worker materializes a reference once into a local cache keyed by the digest, and
the runner pool serves the cached file to the model process from its internal HTTP server
(127.0.0.1, an unguessable path): ``COG_WEIGHTS`` is then an http URL that any Cog model can
fetch, that does not expire, and that costs no download from the store after the first boot.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import re
import shutil
import tempfile
import time
import weakref
from collections.abc import Callable, Iterable
from pathlib import Path, PurePosixPath
from typing import Any, Protocol
from urllib.parse import parse_qs, urlsplit

from replicant.storage import ObjectStore

STORE_SCHEME = "replicant-store:"
DIGEST = re.compile(r"^[0-9a-f]{64}$")
SAFE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,200}$")


class WeightsError(Exception):
    """The weights cannot be materialized (missing object, digest mismatch, bad reference)."""


def store_ref(key: str, sha256: str) -> str:
    """The ``weights_url`` of weights stored in the object store under ``key``."""
    return f"{STORE_SCHEME}{key}?sha256={sha256}"


def is_store_ref(value: str | None) -> bool:
    return bool(value) and str(value).startswith(STORE_SCHEME)


def parse_store_ref(ref: str) -> tuple[str, str]:
    """(object key, sha256) of a store reference; ``WeightsError`` when it is not one."""
    if not is_store_ref(ref):
        raise WeightsError(f"not a stored-weights reference: {ref!r}")
    parts = urlsplit(ref[len(STORE_SCHEME) :])
    digest = (parse_qs(parts.query).get("sha256") or [""])[0]
    if not parts.path or not DIGEST.match(digest):
        raise WeightsError(f"malformed stored-weights reference: {ref!r}")
    return parts.path, digest


def file_name(key: str) -> str:
    """The file name the model sees: the key's last part, when it is a plain name."""
    name = key.rsplit("/", 1)[-1]
    return name if SAFE_NAME.match(name) else "weights"


class SetHolder(Protocol):
    """What keeps a set of managed weights in use: a model process, until it has exited."""

    @property
    def exited(self) -> bool: ...


class WeightsCache:
    """Weights from the object store, downloaded once per digest into ``root``; and the
    sets of managed weights, assembled once per digest under ``root/sets``, each removed
    once no live process holds it and it was last placed more than ``max_age`` seconds ago
    (``prune``; None: kept)."""

    def __init__(
        self, store: Callable[[], ObjectStore], root: Path, max_age: float | None = None
    ) -> None:
        self._open_store = store
        self._store: ObjectStore | None = None
        self.root = root.resolve()
        self.max_age = max_age
        self._locks: dict[str, asyncio.Lock] = {}
        # The sets each process placed (by digest), while the process lives.
        self._holders: weakref.WeakKeyDictionary[SetHolder, frozenset[str]] = (
            weakref.WeakKeyDictionary()
        )
        self._pruned_at = 0.0

    def cached(self, digest: str, name: str) -> Path | None:
        """The cached file of ``digest`` when present."""
        if not DIGEST.match(digest) or not SAFE_NAME.match(name):
            return None
        path = self.root / digest / name
        return path if path.is_file() else None

    async def materialize(self, ref: str) -> tuple[str, str]:
        """(digest, file name) of the weights behind ``ref``, downloaded if not cached."""
        key, digest = parse_store_ref(ref)
        name = file_name(key)
        if self.cached(digest, name) is not None:
            return digest, name
        lock = self._locks.setdefault(digest, asyncio.Lock())
        async with lock:
            if self.cached(digest, name) is None:
                await asyncio.to_thread(self._download, key, digest, name)
        return digest, name

    def _download(self, key: str, digest: str, name: str) -> None:
        if self._store is None:
            self._store = self._open_store()
        self.root.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(dir=self.root, prefix=".download-"))
        try:
            target = staging / name
            try:
                self._store.download(key, target)
            except LookupError as err:
                raise WeightsError(f"the weights {key} are not in the object store") from err
            found = _sha256(target)
            if found != digest:
                raise WeightsError(f"the weights {key} have digest {found}, expected {digest}")
            dest = self.root / digest
            dest.mkdir(exist_ok=True)
            # Same filesystem: the file appears whole or not at all.
            target.replace(dest / name)
        finally:
            shutil.rmtree(staging, ignore_errors=True)

    async def assemble(self, model_dir: Path, weight: dict[str, Any]) -> Path:
        """The directory of a managed weight (``replicant/managedweights.py``), assembled
        once per digest: its files from the version's directory or the object store."""
        digest = str(weight.get("digest", ""))
        if not DIGEST.match(digest):
            raise WeightsError(f"malformed managed weight {weight.get('name')!r}")
        dest = self.root / "sets" / digest
        async with self._locks.setdefault(f"set-{digest}", asyncio.Lock()):
            if dest.is_dir():
                os.utime(dest)  # placed now: what ``prune`` measures the age from
            else:
                await asyncio.to_thread(self._assemble, model_dir, weight, dest)
        return dest

    def hold(self, holder: SetHolder, sets: Iterable[Path]) -> None:
        """``holder`` (a model process) uses these sets until it has exited."""
        self._holders[holder] = frozenset(path.name for path in sets)

    async def prune(self, every: float = 0.0) -> list[str]:
        """Remove the sets no live process holds, last placed more than ``max_age`` seconds
        ago (at most once in ``every`` seconds); the digests removed."""
        sets = self.root / "sets"
        if self.max_age is None or time.monotonic() - self._pruned_at < every:
            return []
        self._pruned_at = time.monotonic()
        removed = []
        for path in await asyncio.to_thread(
            lambda: sorted(sets.glob("*")) if sets.is_dir() else []
        ):
            async with self._locks.setdefault(f"set-{path.name}", asyncio.Lock()):
                if self._stale(path) and await asyncio.to_thread(self._remove_set, path):
                    removed.append(path.name)
        return removed

    def _stale(self, path: Path) -> bool:
        held = {
            d
            for holder, digests in list(self._holders.items())
            if not holder.exited
            for d in digests
        }
        try:
            age = time.time() - path.stat().st_mtime
        except FileNotFoundError:
            return False
        return path.name not in held and self.max_age is not None and age > self.max_age

    def _remove_set(self, path: Path) -> bool:
        """Out of ``sets`` at once (a rename), then deleted; False when it cannot be (the
        next prune tries again: a boot never fails for it)."""
        gone = Path(tempfile.mkdtemp(dir=self.root, prefix=".prune-"))
        try:
            path.rename(gone / path.name)
            return True
        except OSError:
            return False
        finally:
            shutil.rmtree(gone, ignore_errors=True)

    def _assemble(self, model_dir: Path, weight: dict[str, Any], dest: Path) -> None:
        dest.parent.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(dir=self.root, prefix=".assemble-"))
        try:
            for entry in weight["files"]:
                relative = PurePosixPath(str(entry["path"]))
                if relative.is_absolute() or ".." in relative.parts:
                    raise WeightsError(f"a managed weight's file {relative} is outside it")
                target = staging / relative
                target.parent.mkdir(parents=True, exist_ok=True)
                if "model" in entry:
                    shutil.copyfile(model_dir / str(entry["model"]), target)
                else:
                    self._fetch_object(str(entry["key"]), target)
                if _sha256(target) != entry["sha256"]:
                    raise WeightsError(f"the weight file {relative} is not the one pushed")
                target.chmod(0o644)
            for directory in [staging, *(p for p in staging.rglob("*") if p.is_dir())]:
                directory.chmod(0o755)
            try:
                staging.rename(dest)  # the whole set appears at once
            except OSError:
                if not dest.is_dir():
                    raise
        finally:
            shutil.rmtree(staging, ignore_errors=True)

    def _fetch_object(self, key: str, target: Path) -> None:
        if self._store is None:
            self._store = self._open_store()
        try:
            self._store.download(key, target)
        except LookupError as err:
            raise WeightsError(f"the weight file {key} is not in the object store") from err


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        while chunk := f.read(1024 * 1024):
            digest.update(chunk)
    return digest.hexdigest()
