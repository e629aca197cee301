"""cog.yaml's managed weights (``weights:``): resolved once at push, placed by each worker.

Cog packs each named weight's files and mounts them read-only at its ``target`` in the
container. Here a push resolves every source into a list of files with their SHA-256 (Cog's
``weights.lock``), written beside the version's schema as ``.cog/weights.json``:

- a directory inside the pushed model (``weights``, ``./weights``, ``file://./weights``):
  its files are already in the version's directory;
- a file uploaded through the Files API by the account that pushes, or by the
  organization that owns the model when the pusher is one of its members
  (``replicant://files/<file id>``): copied into the object store under its digest;
- an http(s) URL of one file, when its host is one the operator allows
  (``weights_url_hosts``): fetched once, with the SSRF checks of every fetch
  (``replicant/safefetch.py``: public addresses only unless ``allow_private_urls``), into
  the object store under its digest.

``include``/``exclude`` filter each source's files with gitignore-style patterns, as Cog's
do (exclude wins; a filter that leaves nothing is an error). A worker assembles each weight
once per digest into its weights cache (``WeightsCache.assemble``) and the model's sandbox
binds it read-only at ``target`` (``workers/runners/process.py``).
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import posixpath
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit

import pathspec
from sqlalchemy import Select, delete, or_, text
from sqlalchemy import select as sql_select
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import Connection, Engine
from sqlmodel import Session, SQLModel, col, select

from replicant.archives import model_files
from replicant.cogmodel import CogConfigError, ManagedWeight, WeightSource
from replicant.objectkeys import managed_weight_file
from replicant.safefetch import FetchError, fetch
from replicant.settings import Settings
from replicant.storage import ObjectStore, Upload
from replicant.timeutil import utcnow
from replicant.weights import SAFE_NAME

MANIFEST = Path(".cog") / "weights.json"
FILES_SCHEME = "replicant://files/"
HEADER_TIMEOUT = 30.0


def set_digest(files: list[dict[str, Any]]) -> str:
    """A weight's identity: the digest of its files' paths and contents."""
    digest = hashlib.sha256()
    for entry in sorted(files, key=lambda f: str(f["path"])):
        digest.update(f"{entry['path']}\0{entry['sha256']}\n".encode())
    return digest.hexdigest()


def read_manifest(model_dir: Path) -> list[dict[str, Any]]:
    """The resolved weights of a version's directory ([] without any)."""
    try:
        data = json.loads((model_dir / MANIFEST).read_text(encoding="utf-8"))
    except FileNotFoundError:
        return []
    weights: list[dict[str, Any]] = data["weights"]
    return weights


@dataclass
class Resolver:
    """What resolving a push's weights needs beyond the model: the settings, the object
    store, the database (the pusher's files), the account that pushes and the model's owner
    (an organization's files are its members' to use)."""

    settings: Settings
    store: ObjectStore | None = None
    engine: Engine | None = None
    pusher: str | None = None
    owner: str | None = None
    # The version being pushed: each object it holds is recorded for it (ManagedWeightRef).
    version: str | None = None

    def resolve(self, model_dir: Path, weights: list[ManagedWeight]) -> list[dict[str, Any]]:
        """Each weight with its files (path, sha256, size, and where they are: ``model``, a
        path in the model, or ``key``, an object). Raises ``CogConfigError`` naming the
        weight and the reason."""
        resolved = []
        for weight in weights:
            files: dict[str, dict[str, Any]] = {}
            for source in weight.sources:
                for entry in self._filtered(model_dir, weight.name, source):
                    if entry["path"] in files:
                        raise CogConfigError(
                            f"weights {weight.name}: two sources give {entry['path']}"
                        )
                    files[entry["path"]] = entry
            listed = sorted(files.values(), key=lambda f: str(f["path"]))
            resolved.append(
                {
                    "name": weight.name,
                    "target": weight.target,
                    "digest": set_digest(listed),
                    "files": listed,
                }
            )
        return resolved

    def _filtered(self, model_dir: Path, name: str, source: WeightSource) -> list[dict[str, Any]]:
        uri = source.uri
        scheme = uri.split("://", 1)[0].lower() if "://" in uri else ""
        if scheme in ("", "file"):
            found = self._model_dir(model_dir, name, uri)
        elif uri.startswith(FILES_SCHEME):
            found = [self._stored_file(name, uri[len(FILES_SCHEME) :])]
        elif scheme in ("http", "https"):
            found = [self._url(name, uri)]
        else:
            raise CogConfigError(
                f"weights {name}: unsupported weight source scheme {scheme!r} in {uri} "
                "(supported: a path in the model, replicant://files/<id>, http, https)"
            )
        include = pathspec.GitIgnoreSpec.from_lines(source.include) if source.include else None
        exclude = pathspec.GitIgnoreSpec.from_lines(source.exclude) if source.exclude else None
        kept = [
            entry
            for entry in found
            if not (exclude is not None and exclude.match_file(entry["path"]))
            and (include is None or include.match_file(entry["path"]))
        ]
        if not kept:
            raise CogConfigError(
                f"weights {name}: include/exclude patterns matched zero files out of "
                f"{len(found)} in {uri}"
            )
        return kept

    def _model_dir(self, model_dir: Path, name: str, uri: str) -> list[dict[str, Any]]:
        """The files of a directory inside the model."""
        path = uri.removeprefix("file://")
        root = model_dir.resolve()
        source = (root / path).resolve()
        if path.startswith("/") or not source.is_relative_to(root) or source == root:
            raise CogConfigError(
                f"weights {name}: {uri} must be a directory inside the model (this "
                "installation reads no path of the machine that pushes)"
            )
        if not source.is_dir():
            raise CogConfigError(f"weights {name}: {uri} is not a directory in the model")
        found = []
        for file in model_files(source):
            data = file.read_bytes()
            found.append(
                {
                    "path": file.relative_to(source).as_posix(),
                    "sha256": hashlib.sha256(data).hexdigest(),
                    "size": len(data),
                    "model": file.relative_to(root).as_posix(),
                }
            )
        return found

    def _stored_file(self, name: str, file_id: str) -> dict[str, Any]:
        """A file the pusher (or the model's organization) uploaded, copied where it does
        not expire."""
        from replicant.tables import StoredFile

        row, usable = None, False
        if self.engine is not None and file_id:
            with Session(self.engine) as session:
                row = session.get(StoredFile, file_id)
                usable = row is not None and self._may_use(session, row.owner)
        if row is None or not usable:
            raise CogConfigError(
                f"weights {name}: replicant://files/{file_id} is not a file of the account "
                "that pushes or of the model's organization (upload it with POST /v1/files "
                "first)"
            )
        store = self._store()
        key = managed_weight_file(row.sha256)
        self._hold(key)
        if store.stat(key) is None:
            try:
                store.copy(row.object_key, key)
            except LookupError as err:
                raise CogConfigError(
                    f"weights {name}: replicant://files/{file_id} has expired or was deleted"
                ) from err
        file_name = row.name if SAFE_NAME.match(row.name) else "weights"
        return {"path": file_name, "sha256": row.sha256, "size": row.size, "key": key}

    def _may_use(self, session: Session, file_owner: str) -> bool:
        """Whether the pusher may use a file of ``file_owner``: its own, or one of the
        organization that owns the model when the pusher is a member of it."""
        from replicant.tables import Account, Membership

        if self.pusher is None:
            return False
        if file_owner == self.pusher:
            return True
        if file_owner != self.owner:
            return False
        org = session.exec(select(Account).where(Account.username == file_owner)).first()
        user = session.exec(select(Account).where(Account.username == self.pusher)).first()
        if org is None or user is None or org.type != "organization":
            return False
        return session.get(Membership, (org.id, user.id)) is not None

    def _url(self, name: str, url: str) -> dict[str, Any]:
        """An http(s) file from a host the operator allows, fetched into the store."""
        parts = urlsplit(url)
        host = (parts.hostname or "").lower()
        allowed = [h.lower() for h in self.settings.weights_url_hosts]
        if "*" not in allowed and host not in allowed:
            raise CogConfigError(
                f"weights {name}: {url} is on a host this installation does not fetch "
                "weights from (its operator allows them in REPLICANT_WEIGHTS_URL_HOSTS)"
            )
        if parts.username or parts.password:
            raise CogConfigError(f"weights {name}: a weights URL must not hold credentials")
        file_name = unquote(posixpath.basename(parts.path))
        if not SAFE_NAME.match(file_name):
            file_name = "weights"
        store = self._store()
        upload = store.new_upload(max_size=self.settings.weights_url_max_bytes)
        try:
            try:
                asyncio.run(self._download(url, upload))
            except FetchError as err:
                raise CogConfigError(f"weights {name}: {url} {err}") from err
            key = managed_weight_file(upload.sha256)
            self._hold(key)
            if store.stat(key) is None:
                store.commit(upload, key, "application/octet-stream")
            return {"path": file_name, "sha256": upload.sha256, "size": upload.size, "key": key}
        finally:
            upload.discard()

    async def _download(self, url: str, upload: Upload) -> None:
        async with fetch(
            url,
            allow_private=self.settings.allow_private_urls,
            max_bytes=self.settings.weights_url_max_bytes,
            header_timeout=HEADER_TIMEOUT,
        ) as fetched:
            async for chunk in fetched.iter_bytes():
                upload.write(chunk)
        upload.close()

    def _hold(self, key: str) -> None:
        """Record that the version being pushed refers to the object ``key``, before it is
        looked for in the store: the sweep keeps an object a push holds. The hold waits for
        a sweep removing that very object (``key_lock``): once it is written, the object is
        either kept or already gone, and the push then finds it or puts it back."""
        from replicant.tables import ManagedWeightRef

        if self.engine is None or self.version is None:
            return
        values = {"version_id": self.version, "object_key": key, "created_at": utcnow()}
        with self.engine.begin() as conn:
            key_lock(conn, key)
            # One write, no read before it: on SQLite it waits for the sweep's transaction.
            insert = _upsert(conn)(ManagedWeightRef).values(**values)
            conn.execute(
                insert.on_conflict_do_update(
                    index_elements=["version_id", "object_key"],
                    set_={"created_at": values["created_at"]},
                )
            )

    def _store(self) -> ObjectStore:
        if self.store is None:
            from replicant.storage import open_store

            self.store = open_store(self.settings)
        return self.store


def write_manifest(model_dir: Path, weights: list[dict[str, Any]]) -> None:
    """Write the resolved weights beside the version's schema (nothing without any)."""
    if not weights:
        return
    path = model_dir / MANIFEST
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"weights": weights}, indent=2), encoding="utf-8")


def key_lock(conn: Connection, key: str) -> None:
    """Serialize, until ``conn``'s transaction ends, the sweep's removal of the object ``key``
    and a push's hold of it. PostgreSQL: a transaction-scoped advisory lock on the key. SQLite
    has one writer at a time: each side's first statement is a write, which waits for the
    other's transaction."""
    if conn.dialect.name == "postgresql":
        conn.execute(text("SELECT pg_advisory_xact_lock(hashtextextended(:key, 0))"), {"key": key})


def _upsert(conn: Connection) -> Any:
    if conn.dialect.name == "postgresql":
        return postgresql.insert
    return sqlite.insert


def remove_unreferenced(engine: Engine, store: ObjectStore, grace: float, limit: int) -> int:
    """Remove up to ``limit`` objects of managed weights that no version refers to any more:
    every version that held one is deleted (or its push failed) and the last hold is older
    than ``grace`` seconds (a push under way holds its objects before it records its
    version). Each object goes in a transaction of its own, under the key's lock
    (``key_lock``): its stale rows are deleted, then, unless a hold is left, the object, and
    the transaction commits; a push holding the object meanwhile waits for it, then finds the
    object gone and stores it again. An interrupted sweep leaves the rows for the next."""
    from replicant.tables import ManagedWeightRef

    cutoff = utcnow() - timedelta(seconds=grace)
    key_of = col(ManagedWeightRef.object_key)
    with Session(engine) as session:
        keys = session.exec(
            select(key_of).where(key_of.not_in(_held(cutoff))).distinct().limit(limit)
        ).all()
    removed = 0
    for key in keys:
        with engine.begin() as conn:
            key_lock(conn, key)
            conn.execute(
                delete(ManagedWeightRef).where(key_of == key, key_of.not_in(_held(cutoff)))
            )
            if conn.execute(_held(cutoff, key).limit(1)).first() is not None:
                continue  # held again since: the object stays
            store.delete(key)
        removed += 1
    return removed


def _held(cutoff: datetime, key: str | None = None) -> Select[tuple[str]]:
    """The object keys (``key`` alone, if given) a version refers to, or a push held after
    ``cutoff``."""
    from replicant.tables import Version

    ref = SQLModel.metadata.tables["managedweightref"].alias("held")
    held: Select[tuple[str]] = (
        sql_select(ref.c.object_key)
        .outerjoin(Version, col(Version.id) == ref.c.version_id)
        .where(or_(col(Version.id).is_not(None), ref.c.created_at > cutoff))
    )
    return held if key is None else held.where(ref.c.object_key == key)
