"""SSRF-safe fetching and input staging, without a stack.

Every probe that must be refused targets a loopback server that counts its requests, or an
address that is refused before any connection is attempted (nothing leaves this host).
"""

from __future__ import annotations

import base64
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from sqlmodel import Session

from activities.files import Stager
from replicant.contracts import PredictionRequest
from replicant.db import init_db, make_engine
from replicant.inputfiles import InputFileError, file_fields, safe_filename
from replicant.safefetch import FetchError, fetch
from replicant.settings import Settings
from replicant.storage import LocalStore, open_store
from replicant.tables import Account, Model, StoredFile, Version
from replicant.timeutil import utcnow


class Origin:
    """A loopback HTTP server: /file (2000 bytes), /redirect?to=URL, /chunked; counts hits
    (POSTs too, which it answers 200)."""

    def __init__(self) -> None:
        self.hits: list[str] = []
        origin = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: object) -> None:
                pass

            def do_GET(self) -> None:  # noqa: N802
                origin.hits.append(self.path)
                if self.path.startswith("/redirect?to="):
                    self.send_response(302)
                    self.send_header("Location", self.path.split("=", 1)[1])
                    self.end_headers()
                elif self.path == "/file":
                    self.send_response(200)
                    self.send_header("Content-Type", "text/plain")
                    self.send_header("Content-Length", "2000")
                    self.end_headers()
                    self.wfile.write(b"x" * 2000)
                elif self.path == "/chunked":
                    self.send_response(200)
                    self.end_headers()  # no length: read until close
                    self.wfile.write(b"y" * 5000)
                    self.close_connection = True
                else:
                    self.send_response(404)
                    self.end_headers()

            def do_POST(self) -> None:  # noqa: N802 (a webhook that reached it: counted too)
                origin.hits.append(self.path)
                self.rfile.read(int(self.headers.get("content-length", 0)))
                self.send_response(200)
                self.send_header("Content-Length", "0")
                self.end_headers()

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self.server.server_address[1]
        self.url = f"http://127.0.0.1:{self.port}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def origin() -> Iterator[Origin]:
    server = Origin()
    yield server
    server.close()


async def read(url: str, **kwargs: object) -> bytes:
    options: dict[str, object] = {"max_bytes": 10_000, "header_timeout": 5.0, **kwargs}
    async with fetch(url, **options) as fetched:  # type: ignore[arg-type]
        return b"".join([chunk async for chunk in fetched.iter_bytes()])


async def test_fetch_reads_a_url_when_private_addresses_are_allowed(origin: Origin) -> None:
    assert await read(f"{origin.url}/file", allow_private=True) == b"x" * 2000


@pytest.mark.parametrize(
    "url",
    [
        "http://127.0.0.1:{port}/file",
        "http://localhost:{port}/file",  # a name that resolves to loopback
        "http://[::1]:{port}/file",
        "http://10.0.0.1/file",
        "http://192.168.1.1/file",
        "http://169.254.169.254/latest/meta-data/",  # cloud metadata
        "http://[::ffff:127.0.0.1]:{port}/file",
        "http://0.0.0.0:{port}/file",
    ],
)
async def test_private_loopback_and_metadata_addresses_are_refused(
    origin: Origin, url: str
) -> None:
    with pytest.raises(FetchError, match="is not allowed"):
        await read(url.format(port=origin.port), allow_private=False)
    assert origin.hits == []


@pytest.mark.parametrize("url", ["file:///etc/passwd", "ftp://example.com/x", "gopher://x/"])
async def test_only_http_and_https_are_fetched(url: str) -> None:
    with pytest.raises(FetchError, match="http or https"):
        await read(url, allow_private=True)


async def test_a_redirect_to_a_refused_address_is_not_followed(origin: Origin) -> None:
    internal = Origin()  # stands for an internal service behind the redirect
    try:
        # Only the redirecting server counts as public; the redirect target must be refused.
        def policy(address: str, port: int) -> bool:
            return port == origin.port

        url = f"{origin.url}/redirect?to={internal.url}/file"
        with pytest.raises(FetchError, match="is not allowed"):
            await read(url, policy=policy)
        assert origin.hits == [f"/redirect?to={internal.url}/file"]
        assert internal.hits == []
        # The same redirect to an allowed place is followed.
        loop = f"{origin.url}/redirect?to=/file"
        assert await read(loop, policy=policy) == b"x" * 2000
    finally:
        internal.close()


async def test_size_cap_with_and_without_content_length(origin: Origin) -> None:
    with pytest.raises(FetchError, match="larger than 1000 bytes"):
        await read(f"{origin.url}/file", allow_private=True, max_bytes=1000)
    with pytest.raises(FetchError, match="larger than 1000 bytes"):
        await read(f"{origin.url}/chunked", allow_private=True, max_bytes=1000)


async def test_http_errors_are_reported(origin: Origin) -> None:
    with pytest.raises(FetchError, match="answered HTTP 404"):
        await read(f"{origin.url}/missing", allow_private=True)


def test_file_fields_come_from_the_schema() -> None:
    schema = {
        "components": {
            "schemas": {
                "Input": {
                    "properties": {
                        "image": {"type": "string", "format": "uri"},
                        "images": {"type": "array", "items": {"type": "string", "format": "uri"}},
                        "text": {"type": "string"},
                    }
                }
            }
        }
    }
    assert file_fields(schema) == {"image": False, "images": True}


def test_safe_filename() -> None:
    assert safe_filename("../../etc/passwd") == "passwd"
    assert safe_filename("", "image/png") == "file.png"
    assert safe_filename(".hidden") == "hidden"
    assert len(safe_filename("a" * 500 + ".png").encode()) <= 200


# -- staging, against a database and a local store ----------------------------------------


SCHEMA = {
    "components": {
        "schemas": {
            "Input": {
                "properties": {
                    "image": {"type": "string", "format": "uri"},
                    "extra": {"type": "array", "items": {"type": "string", "format": "uri"}},
                    "text": {"type": "string"},
                }
            }
        }
    }
}


@pytest.fixture
def stager(tmp_path: Path) -> Stager:
    settings = Settings(data_dir=tmp_path, allow_private_urls=False, max_file_size=4096)
    engine = make_engine(settings.resolved_database_url)
    init_db(engine)
    with Session(engine) as session:
        session.add(Account(username="alice"))
        session.add(Model(id=1, owner="alice", name="m"))
        session.add(Version(id="v1", model_id=1, openapi_schema=SCHEMA))
        session.commit()
    return Stager(settings, engine, open_store(settings))


def request(**input: object) -> PredictionRequest:
    return PredictionRequest(id="p1", owner="alice", model="alice/m", version="v1", input=input)


async def test_stage_data_uris_and_lists_by_schema(stager: Stager) -> None:
    png = base64.b64encode(b"\x89PNG fake").decode()
    staged = await stager.stage(
        request(
            image=f"data:image/png;base64,{png}",
            extra=["data:text/plain,hello%20there", "data:,x"],
            text="https://not-a-file.example/",  # not a file input: left alone
        )
    )
    assert [(f.path, f.filename) for f in staged.files] == [
        (["image"], "file.png"),
        (["extra", 0], "file.txt"),
        (["extra", 1], "file.txt"),
    ]
    store = stager.store
    assert b"".join(store.iter_bytes(staged.files[0].key)) == b"\x89PNG fake"
    assert b"".join(store.iter_bytes(staged.files[1].key)) == b"hello there"
    assert all(f.key.startswith("predictions/p1/inputs/") for f in staged.files)


async def test_stage_refuses_loopback_urls_with_a_clear_reason(
    stager: Stager, origin: Origin
) -> None:
    with pytest.raises(InputFileError) as info:
        await stager.stage(request(image=f"http://localhost:{origin.port}/file"))
    assert str(info.value).startswith("image: the URL is not allowed")
    assert origin.hits == []


async def test_stage_refuses_other_schemes_and_big_data_uris(stager: Stager) -> None:
    with pytest.raises(InputFileError, match="image: must be an http"):
        await stager.stage(request(image="/etc/passwd"))
    big = base64.b64encode(b"z" * 5000).decode()
    with pytest.raises(InputFileError, match="image: is larger than 4096 bytes"):
        await stager.stage(request(image=f"data:application/octet-stream;base64,{big}"))


async def test_stage_uses_only_the_owners_own_uploaded_files(stager: Stager) -> None:
    store = stager.store
    assert isinstance(store, LocalStore)
    upload = store.new_upload()
    upload.write(b"uploaded bytes")
    store.commit(upload, "files/bob/f1", "text/plain")
    far = utcnow().replace(year=utcnow().year + 1)
    with Session(stager.engine) as session:
        session.add(
            StoredFile(
                id="f1",
                owner="bob",
                name="notes.txt",
                content_type="text/plain",
                size=14,
                sha256="",
                etag="",
                object_key="files/bob/f1",
                expires_at=far,
            )
        )
        session.commit()
    url = f"{stager.settings.resolved_public_url}/v1/files/f1"
    with pytest.raises(InputFileError, match="image: names an uploaded file that does not exist"):
        await stager.stage(request(image=url))  # alice's prediction, bob's file
    bob = PredictionRequest(
        id="p2", owner="bob", model="alice/m", version="v1", input={"image": url}
    )
    staged = await stager.stage(bob)
    assert staged.files[0].filename == "notes.txt"
    assert b"".join(store.iter_bytes(staged.files[0].key)) == b"uploaded bytes"
