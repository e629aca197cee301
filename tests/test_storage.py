"""The object store, the same tests for both backends: a local directory and S3 (moto_server)."""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from replicant.devstack import free_port, moto_server
from replicant.settings import Settings
from replicant.storage import (
    LocalStore,
    ObjectNotFound,
    ObjectStore,
    S3Store,
    TooLarge,
    check_signed,
    open_store,
)


@pytest.fixture(scope="session")
def moto_url() -> Iterator[str]:
    """An S3 endpoint: moto_server on a free port."""
    with moto_server() as endpoint:
        yield f"http://{endpoint}"


def s3_settings(tmp_path: Path, moto_url: str) -> Settings:
    return Settings(
        data_dir=tmp_path,
        storage="s3",
        s3_endpoint=moto_url.removeprefix("http://"),
        s3_bucket=f"test-{os.urandom(4).hex()}",
        s3_access_key="testing",
        s3_secret_key="testing",
        s3_secure=False,
    )


# The S3 backend needs an S3 server (moto_server): those cases are integration tests.
@pytest.fixture(params=["local", pytest.param("s3", marks=pytest.mark.integration)])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> ObjectStore:
    if request.param == "s3":
        settings = s3_settings(tmp_path, request.getfixturevalue("moto_url"))
    else:
        settings = Settings(data_dir=tmp_path, api_port=free_port())
    return open_store(settings)


def put(store: ObjectStore, key: str, data: bytes, content_type: str = "image/png") -> None:
    upload = store.new_upload()
    for i in range(0, len(data), 7000):
        upload.write(data[i : i + 7000])
    store.commit(upload, key, content_type)


def read(store: ObjectStore, key: str) -> bytes:
    return b"".join(store.iter_bytes(key))


def test_open_store_picks_the_backend_from_settings(store: ObjectStore) -> None:
    assert isinstance(store, (LocalStore, S3Store))


def test_put_stat_read_round_trip_with_hashes(store: ObjectStore) -> None:
    data = os.urandom(300_000)
    upload = store.new_upload()
    upload.write(data[:100_000])
    upload.write(data[100_000:])
    assert upload.sha256 == hashlib.sha256(data).hexdigest()
    assert upload.size == len(data)
    store.commit(upload, "predictions/p1/inputs/0/a.png", "image/png")
    assert not upload.path.exists()
    info = store.stat("predictions/p1/inputs/0/a.png")
    assert info is not None and info.size == len(data) and info.content_type == "image/png"
    assert read(store, "predictions/p1/inputs/0/a.png") == data


def test_upload_refuses_more_than_its_limit(store: ObjectStore) -> None:
    upload = store.new_upload(max_size=10)
    upload.write(b"0123456789")
    with pytest.raises(TooLarge):
        upload.write(b"x")
    upload.discard()
    assert not upload.path.exists()


def test_missing_objects(store: ObjectStore) -> None:
    assert store.stat("nope/none.txt") is None
    with pytest.raises(ObjectNotFound):
        read(store, "nope/none.txt")
    with pytest.raises(ObjectNotFound):
        store.copy("nope/none.txt", "other/x")


def test_download_and_copy(store: ObjectStore, tmp_path: Path) -> None:
    put(store, "files/f1", b"hello world", "text/plain")
    store.copy("files/f1", "predictions/p2/inputs/0/hello.txt")
    dest = tmp_path / "hello.txt"
    store.download("predictions/p2/inputs/0/hello.txt", dest)
    assert dest.read_bytes() == b"hello world"
    copied = store.stat("predictions/p2/inputs/0/hello.txt")
    assert copied is not None and copied.content_type == "text/plain"


def test_delete_and_delete_prefix(store: ObjectStore) -> None:
    put(store, "predictions/p3/inputs/0/a", b"a")
    put(store, "predictions/p3/outputs/x/b", b"b")
    put(store, "predictions/p33/outputs/x/c", b"c")
    put(store, "files/keep", b"k")
    assert store.delete_prefix("predictions/p3/") == 2
    assert store.stat("predictions/p3/inputs/0/a") is None
    assert store.stat("predictions/p3/outputs/x/b") is None
    assert store.stat("predictions/p33/outputs/x/c") is not None
    store.delete("files/keep")
    assert store.stat("files/keep") is None


def test_keys_cannot_escape_the_store(store: ObjectStore) -> None:
    for key in ("../etc/passwd", "a/../../b", "/abs", "a//b", ""):
        with pytest.raises(ValueError):
            store.stat(key)
        with pytest.raises(ValueError):
            store.signed_url(key, 60)


def test_signed_urls_fetch_without_a_token_until_they_expire(store: ObjectStore) -> None:
    put(store, "predictions/p4/outputs/x/out.png", b"PNGDATA")
    url = store.signed_url("predictions/p4/outputs/x/out.png", 3600)
    assert "predictions/p4/outputs/x/out.png" in url
    if isinstance(store, S3Store):
        response = httpx.get(url)
        assert response.status_code == 200 and response.content == b"PNGDATA"
        # S3 enforces the expiry (moto does not): the signed request carries it.
        assert "X-Amz-Expires=3600" in url and "X-Amz-Signature=" in url
    else:
        # The API serves these; here the signature itself is checked.
        expires, sig, key = url.split("/files-signed/", 1)[1].split("/", 2)
        assert key == "predictions/p4/outputs/x/out.png"
        assert check_signed(store.secret, key, expires, sig)
        assert not check_signed(store.secret, "predictions/p4/outputs/x/other", expires, sig)
        assert not check_signed("another-secret", key, expires, sig)
        assert not check_signed(store.secret, key, expires, sig[:-2] + "AA")
        assert not check_signed(store.secret, key, expires, sig, now=int(expires) + 1)
        assert not check_signed(store.secret, key, str(int(expires) + 1), sig)


def test_presigned_s3_urls_serve_user_bytes_as_attachments_but_media(
    tmp_path: Path, moto_url: str
) -> None:
    store = open_store(s3_settings(tmp_path, moto_url))
    # What the object says it is does not matter: its name decides, as S3 is told at signing.
    page = b"<html><script>alert(1)</script></html>"
    put(store, "predictions/p5/outputs/a/out.html", page, "text/html")
    put(store, "predictions/p5/outputs/b/out.svg", page, "image/svg+xml")
    put(store, "predictions/p5/outputs/c/out.png", page, "text/html")
    put(store, "predictions/p5/outputs/d/out.wav", b"RIFF", "audio/wav")
    answers = {
        key: httpx.get(store.signed_url(f"predictions/p5/outputs/{key}", 60))
        for key in ("a/out.html", "b/out.svg", "c/out.png", "d/out.wav")
    }
    for key in ("a/out.html", "b/out.svg"):
        name = key.rsplit("/", 1)[1]
        assert answers[key].headers["content-disposition"] == f"attachment; filename*=UTF-8''{name}"
        assert answers[key].headers["content-type"] == "application/octet-stream"
    assert "content-disposition" not in answers["c/out.png"].headers
    assert answers["c/out.png"].headers["content-type"] == "image/png"
    assert answers["d/out.wav"].headers["content-type"] in ("audio/wav", "audio/x-wav")
    assert answers["c/out.png"].content == page
