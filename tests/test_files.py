"""Files end to end: the Files API, input files (upload, URL, data URI), output files as
FileOutput through the official Python and JS clients, expiring signed URLs, retention.

The official clients wrap only ``https:`` and ``data:`` output URLs in ``FileOutput``, so this
module runs its own stack with the API over TLS (a ``trustme`` test CA), as a production
install would be, and with private URLs allowed so that a loopback server can serve inputs.
"""

from __future__ import annotations

import base64
import hashlib
import io
import json
import os
import ssl
import subprocess
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx
import pytest
import replicate
import trustme
from PIL import Image
from replicate.helpers import FileOutput
from sqlalchemy.engine import Engine

from replicant.db import make_engine
from replicant.devstack import Stack
from replicant.settings import Settings
from replicant.storage import LocalStore, signed_path
from replicant.versions import create_version, ensure_model
from tests.conformance import conformance_hook
from tests.conftest import TERMINAL, schemas_derived_once, stack_settings, suite_database
from tests.waiting import wait_until

RETENTION = 15.0
JS_DIR = Path(__file__).resolve().parent / "js"
MODELS = Path(__file__).resolve().parent / "models"


@dataclass
class TLSStack:
    settings: Settings
    url: str
    token: str
    ca_file: Path
    engine: Engine

    @property
    def ssl(self) -> ssl.SSLContext:
        return ssl.create_default_context(cafile=str(self.ca_file))

    def client(self, token: str | None = None, conform: bool = False) -> httpx.Client:
        """An HTTP client; ``conform`` checks every response against Replicate's spec (not for
        multipart bodies, which the checker cannot read, nor error bodies it does not list)."""
        headers = {"Authorization": f"Bearer {token or self.token}"} if token != "" else {}
        hooks = {"response": [conformance_hook(self.url)]} if conform else {}
        return httpx.Client(
            base_url=self.url, headers=headers, verify=self.ssl, timeout=90, event_hooks=hooks
        )

    def replicate(self, token: str | None = None) -> replicate.Client:
        # The client builds its own transport: give it one that trusts the test CA.
        transport = httpx.HTTPTransport(verify=self.ssl)
        return replicate.Client(
            api_token=token or self.token, base_url=self.url, transport=transport
        )

    def store(self) -> LocalStore:
        return LocalStore(
            self.settings.data_dir / "files", self.url, self.settings.ensure_secret_key()
        )

    def wait_for(
        self, prediction_id: str, until: Any = None, timeout: float = 60, token: str | None = None
    ) -> Any:
        """Poll a prediction until ``until`` holds (it ends, by default); fail when it never
        does."""
        with self.client(token) as client:
            return wait_until(
                lambda: client.get(f"/v1/predictions/{prediction_id}").json(),
                until or (lambda p: p["status"] in TERMINAL),
                what=f"prediction {prediction_id} to reach the awaited state",
                timeout=timeout,
                interval=0.2,
            )


@pytest.fixture(scope="module")
def tls(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TLSStack]:
    data_dir = tmp_path_factory.mktemp("files-tls")
    ca = trustme.CA()
    server_pem = data_dir / "api.pem"
    ca.issue_cert("127.0.0.1", "localhost").private_key_and_cert_chain_pem.write_to_path(
        str(server_pem)
    )
    ca_file = data_dir / "ca.pem"
    ca.cert_pem.write_to_path(str(ca_file))
    with suite_database() as database:
        settings = stack_settings(
            data_dir,
            tls_certfile=server_pem,
            tls_keyfile=server_pem,
            allow_private_urls=True,  # the input server below listens on loopback
            prediction_retention=RETENTION,
            max_file_size=8 * 1024 * 1024,
            **database,
        )
        stack = Stack(settings, ui=False, log_dir=data_dir / "logs")
        try:
            with schemas_derived_once():
                token = stack.start()
            engine = make_engine(settings.resolved_database_url)
            model = ensure_model(engine, settings.default_account, "fileouts")
            create_version(settings, engine, model, MODELS / "fileouts")
            yield TLSStack(settings, settings.resolved_public_url, token, ca_file, engine)
            engine.dispose()
        finally:
            stack.stop()


def png(width: int = 40, height: int = 20) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (width, height), (200, 30, 30)).save(buf, format="PNG")
    return buf.getvalue()


def png_size(data: bytes) -> tuple[int, int]:
    assert data.startswith(b"\x89PNG\r\n\x1a\n")
    with Image.open(io.BytesIO(data)) as img:
        return img.size


class InputServer:
    """Serves files over plain HTTP on loopback, as a user's own host would."""

    def __init__(self, files: dict[str, bytes]) -> None:
        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: object) -> None:
                pass

            def do_GET(self) -> None:  # noqa: N802
                body = files.get(self.path)
                self.send_response(200 if body is not None else 404)
                self.send_header("Content-Type", "image/png")
                self.send_header("Content-Length", str(len(body or b"")))
                self.end_headers()
                self.wfile.write(body or b"")

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture(scope="module")
def input_server() -> Iterator[InputServer]:
    server = InputServer({"/images/red.png": png(60, 30)})
    yield server
    server.close()


# -- the Files API ----------------------------------------------------------------------------


def test_files_api_create_get_list_download_delete(tls: TLSStack, tmp_path: Path) -> None:
    path = tmp_path / "report.png"
    path.write_bytes(png())
    client = tls.replicate()
    created = client.files.create(path, metadata={"customer_reference_id": 123})
    assert created.name == "report.png"
    assert created.content_type == "image/png"
    assert created.size == len(path.read_bytes())
    assert created.checksums["sha256"] == hashlib.sha256(path.read_bytes()).hexdigest()
    assert created.metadata == {"customer_reference_id": 123}
    assert created.urls["get"] == f"{tls.url}/v1/files/{created.id}"
    assert client.files.get(created.id).id == created.id
    assert created.id in [f.id for f in client.files.list()]

    with tls.client(conform=True) as api:
        body = api.get(f"/v1/files/{created.id}").json()  # validated against the spec
        assert body["expires_at"] > body["created_at"]
        assert created.id in [f["id"] for f in api.get("/v1/files").json()["results"]]
    # The download URL works without a token, and only while its signature holds.
    with tls.client(token="") as anonymous:
        download = anonymous.get(body["urls"]["download"])
        assert download.status_code == 200 and download.content == path.read_bytes()
        tampered = body["urls"]["download"].replace("owner=", "owner=x")
        assert anonymous.get(tampered).status_code == 404
        assert anonymous.get(f"/v1/files/{created.id}").status_code == 401

    assert client.files.delete(created.id)
    with tls.client() as api:
        assert api.get(f"/v1/files/{created.id}").status_code == 404
        assert api.delete(f"/v1/files/{created.id}").status_code == 404
    with tls.client(token="") as anonymous:
        assert anonymous.get(body["urls"]["download"]).status_code == 404


def test_files_are_private_to_their_account(tls: TLSStack) -> None:
    from replicant.accounts import create_account

    _, other = create_account(tls.engine, f"other-{time.monotonic_ns()}")
    with tls.client() as api:
        created = api.post("/v1/files", files={"content": ("a.txt", b"mine", "text/plain")})
        assert created.status_code == 201
        file_id = created.json()["id"]
    with tls.client(other) as api:
        assert api.get(f"/v1/files/{file_id}").status_code == 404
        assert api.delete(f"/v1/files/{file_id}").status_code == 404
        assert file_id not in [f["id"] for f in api.get("/v1/files").json()["results"]]
        # Nor can another account use it as an input: the prediction fails, nothing leaks.
        response = api.post(
            "/v1/models/replicant/thumbnail/predictions",
            json={"input": {"image": created.json()["urls"]["get"]}},
            headers={"Prefer": "wait"},
        )
    prediction = tls.wait_for(response.json()["id"], token=other)
    assert prediction["status"] == "failed"
    assert prediction["error"] == (
        "Input file error: image: names an uploaded file that does not exist"
    )


def test_upload_over_the_limit_is_refused_with_413(tls: TLSStack, tmp_path: Path) -> None:
    limit = tls.settings.max_file_size
    big = tmp_path / "big.bin"
    with big.open("wb") as f:
        f.truncate(limit + 1)
    with tls.client() as api, big.open("rb") as f:
        response = api.post("/v1/files", files={"content": ("big.bin", f)})
    assert response.status_code == 413
    assert response.headers["content-type"] == "application/problem+json"
    assert response.json()["detail"] == "Files must be less than 8MB in size"
    with tls.client() as api:
        names = [f["name"] for f in api.get("/v1/files").json()["results"]]
    assert "big.bin" not in names


def test_upload_needs_content_and_object_metadata(tls: TLSStack) -> None:
    with tls.client() as api:
        missing = api.post("/v1/files", files={"other": ("a.txt", b"x")})
        assert missing.status_code == 422
        assert missing.json()["invalid_fields"][0]["field"] == "content"
        bad = api.post("/v1/files", files={"content": ("a.txt", b"x")}, data={"metadata": "[1, 2]"})
        assert bad.status_code == 422
        assert bad.json()["invalid_fields"][0]["field"] == "metadata"


# -- input and output files through the official Python client ----------------------------------


def test_open_file_input_and_file_output_with_the_python_client(
    tls: TLSStack, tmp_path: Path
) -> None:
    path = tmp_path / "photo.png"
    path.write_bytes(png(40, 20))
    client = tls.replicate()
    with path.open("rb") as f:
        output = client.run("replicant/thumbnail", input={"image": f, "width": 16})
    assert isinstance(output, FileOutput)
    assert output.url.startswith(f"{tls.url}/files-signed/")
    assert png_size(output.read()) == (16, 8)
    # The output URL needs no token; a changed signature or expiry is refused.
    with tls.client(token="") as anonymous:
        assert anonymous.get(output.url).content == output.read()
        expires = urlsplit(output.url).path.split("/")[2]
        assert 3500 < int(expires) - time.time() <= 3600  # about an hour
        forged = output.url.replace(f"/{expires}/", "/9999999999/")
        assert anonymous.get(forged).status_code == 404


def test_an_expired_output_url_is_refused(tls: TLSStack) -> None:
    data = base64.b64encode(png()).decode()
    output = tls.replicate().run(
        "replicant/thumbnail", input={"image": f"data:image/png;base64,{data}", "width": 10}
    )
    key = urlsplit(output.url).path.removeprefix("/files-signed/").split("/", 2)[2]
    secret = tls.settings.ensure_secret_key()
    expired = tls.url + signed_path(secret, key, int(time.time()) - 1)
    fresh = tls.url + signed_path(secret, key, int(time.time()) + 60)
    with tls.client(token="") as anonymous:
        assert anonymous.get(fresh).status_code == 200
        assert anonymous.get(expired).status_code == 404


def test_url_input_is_fetched_and_staged(tls: TLSStack, input_server: InputServer) -> None:
    output = tls.replicate().run(
        "replicant/thumbnail", input={"image": f"{input_server.url}/images/red.png", "width": 30}
    )
    assert png_size(output.read()) == (30, 15)


def test_a_failed_fetch_fails_the_prediction_with_the_reason(
    tls: TLSStack, input_server: InputServer
) -> None:
    with tls.client() as api:
        response = api.post(
            "/v1/models/replicant/thumbnail/predictions",
            json={"input": {"image": f"{input_server.url}/images/missing.png"}},
            headers={"Prefer": "wait"},
        )
    prediction = tls.wait_for(response.json()["id"])
    assert prediction["status"] == "failed"
    assert prediction["error"] == "Input file error: image: the URL answered HTTP 404"


def test_a_path_on_the_workers_disk_is_refused_with_422(tls: TLSStack) -> None:
    with tls.client() as api:
        response = api.post(
            "/v1/models/replicant/thumbnail/predictions",
            json={"input": {"image": "/etc/passwd"}},
            headers={"Prefer": "wait"},
        )
    assert response.status_code == 422, response.text
    assert response.headers["content-type"] == "application/problem+json"
    assert response.json()["invalid_fields"] == [
        {"field": "image", "message": "must be an http(s) URL or a data URI"}
    ]


def test_iterator_of_files_and_retention_removes_them(tls: TLSStack) -> None:
    client = tls.replicate()
    document = "data:text/plain;base64," + base64.b64encode(b"12345").decode()
    prediction = client.predictions.create(
        model=f"{tls.settings.default_account}/fileouts", input={"count": 3, "document": document}
    )
    prediction.wait()
    assert prediction.status == "succeeded", prediction.error
    urls = prediction.output
    assert len(urls) == 3 and len(set(urls)) == 3
    with tls.client(token="") as anonymous:
        texts = [anonymous.get(url).text for url in urls]
    assert texts == [f"part {i} of 3; input size 5\n" for i in range(3)]
    store = tls.store()
    objects = store.root / "objects" / "predictions" / prediction.id
    assert len([p for p in objects.rglob("*") if p.is_file()]) == 4  # 1 input, 3 outputs

    removed = tls.wait_for(prediction.id, lambda p: p["data_removed"], timeout=RETENTION + 60)
    assert removed["data_removed"] is True and removed["output"] is None
    # The row says so first, then the files go.
    wait_until(objects.exists, lambda exists: not exists, what="the prediction's files to go")
    with tls.client(token="") as anonymous:
        assert all(anonymous.get(url).status_code == 404 for url in urls)


# -- the JS client -----------------------------------------------------------------------------


def test_js_client_uploads_buffer_and_blob_and_streams_file_output(
    tls: TLSStack, node_client: Path, tmp_path: Path
) -> None:
    image = tmp_path / "js.png"
    image.write_bytes(png(32, 16))
    env = {"PATH": os.environ["PATH"], "NODE_EXTRA_CA_CERTS": str(tls.ca_file)}
    result = subprocess.run(
        ["node", "files.mjs", tls.url, tls.token, str(image)],
        cwd=JS_DIR,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout.strip().splitlines()[-1])
    for name, width in (("buffer", 8), ("blob", 4)):
        out = report[name]
        assert out["isReadableStream"] is True
        assert out["url"].startswith(f"{tls.url}/files-signed/")
        assert png_size(base64.b64decode(out["base64"])) == (width, width // 2)
    assert {"size": image.stat().st_size} in [{"size": f["size"]} for f in report["uploaded"]]
