"""The object store: uploaded files, staged prediction inputs and model outputs.

Two implementations behind one protocol, picked by ``settings.storage``:

- ``LocalStore``: a directory in the data dir. Its URLs point at the API's
  ``/files-signed/{key}`` route, signed with an HMAC over key and expiry.
- ``S3Store``: any S3 (MinIO in docker-compose) through the ``minio`` SDK, with presigned
  GET URLs.

Nothing here holds a whole object in memory: writes go through an ``Upload`` (a temporary
file that hashes what passes through it), reads are iterators of chunks.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import hmac
import os
import shutil
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import IO, Any, Protocol
from urllib.parse import quote, unquote, urlsplit

from minio import Minio
from minio.error import S3Error

from replicant import userbytes
from replicant.inputfiles import InputFileError, parse_data_uri, safe_filename
from replicant.settings import Settings

CHUNK = 1024 * 1024
SIGNED_ROUTE = "/files-signed/"


class ObjectNotFound(LookupError):
    """No object under that key."""


class TooLarge(ValueError):
    """More bytes than the upload's limit."""


@dataclass(frozen=True)
class ObjectInfo:
    key: str
    size: int
    content_type: str


class Upload:
    """Bytes on their way into the store: a temporary file plus running hashes and size."""

    def __init__(self, directory: Path | None, max_size: int | None = None) -> None:
        if directory is not None:
            directory.mkdir(parents=True, exist_ok=True)
        fd, name = tempfile.mkstemp(dir=directory, prefix=".upload-")
        self.path = Path(name)
        self._file: IO[bytes] = os.fdopen(fd, "wb")
        self.max_size = max_size
        self.size = 0
        self._sha256 = hashlib.sha256()
        self._md5 = hashlib.md5(usedforsecurity=False)

    def write(self, data: bytes | memoryview) -> None:
        """Append bytes; ``TooLarge`` once the limit is passed."""
        self.size += len(data)
        if self.max_size is not None and self.size > self.max_size:
            raise TooLarge(f"more than {self.max_size} bytes")
        self._sha256.update(data)
        self._md5.update(data)
        self._file.write(data)

    def close(self) -> None:
        if not self._file.closed:
            self._file.close()

    @property
    def sha256(self) -> str:
        return self._sha256.hexdigest()

    @property
    def md5(self) -> str:
        return self._md5.hexdigest()

    def discard(self) -> None:
        self.close()
        self.path.unlink(missing_ok=True)


class ObjectStore(Protocol):
    """What the API and the activities need from an object store."""

    def new_upload(self, max_size: int | None = None) -> Upload: ...

    def commit(self, upload: Upload, key: str, content_type: str) -> None:
        """Store the upload's bytes under ``key`` (replacing any), then drop the upload."""
        ...

    def stat(self, key: str) -> ObjectInfo | None: ...

    def iter_bytes(self, key: str, chunk_size: int = CHUNK) -> Iterator[bytes]:
        """The object's bytes in chunks; ``ObjectNotFound`` when it is missing."""
        ...

    def download(self, key: str, dest: Path) -> None:
        """Copy the object into a local file (for a model process)."""
        ...

    def copy(self, src: str, dest: str) -> None: ...

    def delete(self, key: str) -> None: ...

    def delete_prefix(self, prefix: str) -> int:
        """Delete every object whose key starts with ``prefix``; returns how many."""
        ...

    def put_bytes(self, data: bytes, key: str, content_type: str) -> Upload:
        """Store ``data`` under ``key``; the upload tells its size and sha256."""
        ...

    def signed_url(self, key: str, expires_in: float, filename: str | None = None) -> str:
        """A URL that fetches the object without a token until ``expires_in`` seconds pass."""
        ...

    def outward_url(self, url: str) -> str:
        """The URL clients get for one of the API's signed object URLs (``/files-signed/``):
        the same, or the store's own URL to the object with the same expiry. Any other
        string comes back unchanged."""
        ...


def put_bytes(store: ObjectStore, data: bytes, key: str, content_type: str) -> Upload:
    """``ObjectStore.put_bytes`` of every store: one upload, committed or discarded."""
    upload = store.new_upload()
    try:
        upload.write(data)
        store.commit(upload, key, content_type)
    finally:
        upload.discard()
    return upload


def put_data_uri(store: ObjectStore, uri: str, key_dir: str, limit: int) -> str:
    """Store a ``data:`` URI's bytes as ``key_dir/<file name>`` (the name from its content
    type); returns the file name. ``InputFileError`` when it is malformed or over ``limit``
    bytes. The one place a data URI becomes a stored object."""
    content_type, data = parse_data_uri(uri)
    if len(data) > limit:
        raise InputFileError(f"is larger than {limit} bytes")
    filename = safe_filename("file", content_type)
    store.put_bytes(data, f"{key_dir}/{filename}", content_type)
    return filename


def check_key(key: str) -> str:
    """Keys are relative slash-separated paths without empty, dot or dot-dot parts."""
    parts = key.split("/")
    if not key or any(p in ("", ".", "..") or "\\" in p or "\0" in p for p in parts):
        raise ValueError(f"invalid object key: {key!r}")
    return key


# -- signatures of the local store's URLs ---------------------------------------------------


def _signing_key(secret: str) -> bytes:
    # A key of its own, so a signature made for files cannot be replayed elsewhere.
    return hmac.new(secret.encode(), b"replicant-files-v1", hashlib.sha256).digest()


def sign(secret: str, message: str) -> str:
    digest = hmac.new(_signing_key(secret), message.encode(), hashlib.sha256).digest()
    return base64.urlsafe_b64encode(digest).decode().rstrip("=")


def verify(secret: str, message: str, signature: str) -> bool:
    return hmac.compare_digest(sign(secret, message), signature)


def signed_path(secret: str, key: str, expires: int) -> str:
    """``/files-signed/{expires}/{signature}/{key}``: everything in the path, because coglet
    drops the query string of the URL it is given for an output file."""
    sig = sign(secret, f"{key}\n{expires}")
    return f"{SIGNED_ROUTE}{expires}/{sig}/{quote(key)}"


def signed_url(public_url: str, secret: str, key: str, expires_in: float) -> str:
    """An absolute URL of the API's signed-object route (works for every backend)."""
    expires = int(time.time() + expires_in)
    return public_url.rstrip("/") + signed_path(secret, check_key(key), expires)


def parse_signed_url(public_url: str, url: str) -> tuple[str, str, str] | None:
    """(key, expires, signature) of a URL of the API's signed-object route, else None."""
    prefix = public_url.rstrip("/") + SIGNED_ROUTE
    if not url.startswith(prefix):
        return None
    expires, _, rest = url[len(prefix) :].partition("/")
    sig, _, quoted = rest.partition("/")
    key = unquote(quoted)
    return (key, expires, sig) if expires and sig and key else None


def check_signed(secret: str, key: str, expires: str, sig: str, now: float | None = None) -> bool:
    """True when the signature is ours and not expired."""
    try:
        at = int(expires)
    except ValueError:
        return False
    if at < (time.time() if now is None else now):
        return False
    return verify(secret, f"{key}\n{at}", sig)


# -- local directory --------------------------------------------------------------------------


class LocalStore:
    """Objects as files under ``root``; content types in a sidecar file per object."""

    put_bytes = put_bytes

    def __init__(self, root: Path, public_url: str, secret: str) -> None:
        self.root = root.resolve()
        self.root.mkdir(parents=True, exist_ok=True)
        self.tmp = self.root / ".tmp"
        self.tmp.mkdir(exist_ok=True)
        self.public_url = public_url.rstrip("/")
        self.secret = secret

    def path(self, key: str) -> Path:
        return self.root / "objects" / check_key(key)

    def _type_path(self, key: str) -> Path:
        return self.root / "types" / check_key(key)

    def new_upload(self, max_size: int | None = None) -> Upload:
        return Upload(self.tmp, max_size)

    def commit(self, upload: Upload, key: str, content_type: str) -> None:
        upload.close()
        dest, type_file = self.path(key), self._type_path(key)
        dest.parent.mkdir(parents=True, exist_ok=True)
        type_file.parent.mkdir(parents=True, exist_ok=True)
        type_file.write_text(content_type)
        os.replace(upload.path, dest)  # same filesystem: atomic, no copy

    def stat(self, key: str) -> ObjectInfo | None:
        path = self.path(key)
        try:
            size = path.stat().st_size
        except OSError:
            return None
        try:
            content_type = self._type_path(key).read_text()
        except OSError:
            content_type = "application/octet-stream"
        return ObjectInfo(key, size, content_type)

    def iter_bytes(self, key: str, chunk_size: int = CHUNK) -> Iterator[bytes]:
        path = self.path(key)
        try:
            f = path.open("rb")
        except OSError as err:
            raise ObjectNotFound(key) from err
        return _chunks(f, chunk_size)

    def download(self, key: str, dest: Path) -> None:
        try:
            shutil.copyfile(self.path(key), dest)
        except FileNotFoundError as err:
            raise ObjectNotFound(key) from err

    def copy(self, src: str, dest: str) -> None:
        info = self.stat(src)
        if info is None:
            raise ObjectNotFound(src)
        upload = self.new_upload()
        upload.close()
        shutil.copyfile(self.path(src), upload.path)
        self.commit(upload, dest, info.content_type)

    def delete(self, key: str) -> None:
        for path in (self.path(key), self._type_path(key)):
            path.unlink(missing_ok=True)

    def delete_prefix(self, prefix: str) -> int:
        if not prefix.endswith("/"):
            raise ValueError("local prefixes are directories: end them with '/'")
        check_key(prefix.rstrip("/"))
        objects = self.root / "objects" / prefix
        count = sum(1 for p in objects.rglob("*") if p.is_file()) if objects.is_dir() else 0
        for base in (self.root / "objects", self.root / "types"):
            shutil.rmtree(base / prefix, ignore_errors=True)
        return count

    def signed_url(self, key: str, expires_in: float, filename: str | None = None) -> str:
        return signed_url(self.public_url, self.secret, key, expires_in)

    def outward_url(self, url: str) -> str:
        return url  # the API serves this store's objects itself


def _chunks(f: IO[bytes], chunk_size: int) -> Iterator[bytes]:
    with f:
        while chunk := f.read(chunk_size):
            yield chunk


# -- S3 ---------------------------------------------------------------------------------------


class S3Store:
    """Objects in one S3 bucket through the ``minio`` SDK."""

    put_bytes = put_bytes

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.bucket = settings.s3_bucket
        self.region = settings.s3_region
        self.client = Minio(
            settings.s3_endpoint,
            access_key=settings.s3_access_key,
            secret_key=settings.s3_secret_key,
            secure=settings.s3_secure,
            region=settings.s3_region,
        )
        # Presigning is offline, but the signature covers the host clients will use.
        if settings.s3_public_url:
            public = urlsplit(settings.s3_public_url)
            self.presigner = Minio(
                public.netloc,
                access_key=settings.s3_access_key,
                secret_key=settings.s3_secret_key,
                secure=public.scheme == "https",
                region=settings.s3_region,
            )
        else:
            self.presigner = self.client

    def ensure_bucket(self) -> None:
        if not self.client.bucket_exists(self.bucket):
            with contextlib.suppress(S3Error):  # created concurrently
                self.client.make_bucket(self.bucket, location=self.region)

    def new_upload(self, max_size: int | None = None) -> Upload:
        return Upload(None, max_size)

    def commit(self, upload: Upload, key: str, content_type: str) -> None:
        upload.close()
        try:
            self.client.fput_object(
                self.bucket, check_key(key), str(upload.path), content_type=content_type
            )
        finally:
            upload.discard()

    def stat(self, key: str) -> ObjectInfo | None:
        try:
            stat = self.client.stat_object(self.bucket, check_key(key))
        except S3Error as err:
            if err.code in ("NoSuchKey", "NoSuchObject", "NotFound"):
                return None
            raise
        return ObjectInfo(key, stat.size or 0, stat.content_type or "application/octet-stream")

    def iter_bytes(self, key: str, chunk_size: int = CHUNK) -> Iterator[bytes]:
        try:
            response = self.client.get_object(self.bucket, check_key(key))
        except S3Error as err:
            if err.code in ("NoSuchKey", "NoSuchObject", "NotFound"):
                raise ObjectNotFound(key) from err
            raise
        return _s3_chunks(response, chunk_size)

    def download(self, key: str, dest: Path) -> None:
        with dest.open("wb") as f:
            for chunk in self.iter_bytes(key):
                f.write(chunk)

    def copy(self, src: str, dest: str) -> None:
        from minio.commonconfig import CopySource

        if self.stat(src) is None:
            raise ObjectNotFound(src)
        self.client.copy_object(self.bucket, check_key(dest), CopySource(self.bucket, src))

    def delete(self, key: str) -> None:
        self.client.remove_object(self.bucket, check_key(key))

    def delete_prefix(self, prefix: str) -> int:
        from minio.deleteobjects import DeleteObject

        names = [
            DeleteObject(obj.object_name)
            for obj in self.client.list_objects(self.bucket, prefix=prefix, recursive=True)
            if obj.object_name
        ]
        for error in self.client.remove_objects(self.bucket, names):
            raise RuntimeError(f"could not delete {error.name}: {error.code}")
        return len(names)

    def signed_url(self, key: str, expires_in: float, filename: str | None = None) -> str:
        """A presigned GET whose answer is served as user bytes: the type the object's name
        implies when that is media (inline), else an attachment (S3 sets no CSP; the store
        is an origin of its own)."""
        name = filename or key.rsplit("/", 1)[-1]
        implied = userbytes.guessed_type(name)
        response: dict[str, str | list[str] | tuple[str]]
        if userbytes.is_inline(implied):
            response = {"response-content-type": userbytes.served_type(implied)}
        else:
            response = {
                "response-content-type": "application/octet-stream",
                "response-content-disposition": userbytes.disposition(None, name),
            }
        url: str = self.presigner.presigned_get_object(
            self.bucket,
            check_key(key),
            expires=timedelta(seconds=max(1, int(expires_in))),
            response_headers=response,
        )
        return url

    def outward_url(self, url: str) -> str:
        """A presigned GET URL of S3 for an API-signed URL whose signature holds."""
        # Signed on the files origin; those recorded before it was set, on the public URL.
        settings = self.settings
        parsed = parse_signed_url(settings.resolved_files_url, url) or parse_signed_url(
            settings.resolved_public_url, url
        )
        if parsed is None:
            return url
        key, expires, sig = parsed
        # Only URLs this installation signed: a model's output cannot name another object.
        if not check_signed(self.settings.ensure_secret_key(), key, expires, sig):
            return url
        return self.signed_url(key, int(expires) - time.time())


def _s3_chunks(response: Any, chunk_size: int) -> Iterator[bytes]:
    try:
        yield from response.stream(chunk_size)
    finally:
        response.close()
        response.release_conn()


def open_store(settings: Settings) -> ObjectStore:
    """The store the settings ask for."""
    if settings.storage == "s3":
        store = S3Store(settings)
        store.ensure_bucket()
        return store
    return LocalStore(
        settings.data_dir / "files",
        settings.resolved_files_url,  # user bytes: signed on the files origin, if any
        settings.ensure_secret_key(),
    )


def outward_output(store: ObjectStore, output: Any) -> Any:
    """A prediction's output with each signed object URL as clients should get it: S3's
    presigned URLs when the store is S3 (coglet keeps only the path of the URL it uploads
    to, so the run first gets the API's path-signed URL, swapped here)."""
    if isinstance(output, str):
        return store.outward_url(output)
    if isinstance(output, list):
        return [outward_output(store, item) for item in output]
    if isinstance(output, dict):
        return {k: outward_output(store, v) for k, v in output.items()}
    return output


async def acommit(store: ObjectStore, upload: Upload, key: str, content_type: str) -> None:
    await asyncio.to_thread(store.commit, upload, key, content_type)
