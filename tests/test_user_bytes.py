"""User bytes are never a page of this site: account A uploads HTML and SVG that carry
scripts (and pushes a model that outputs such an SVG), signed-in account B opens their URLs
in Chromium, and no script runs. Each script would call a beacon server and retitle the
page; the same script served as a page by the beacon server itself does both, so the test
can tell a script that ran from one that did not.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import AsyncIterator, Iterator
from concurrent.futures import ThreadPoolExecutor
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import httpx
import pytest
from fastapi.testclient import TestClient
from playwright.sync_api import Browser, Page
from playwright.sync_api import Error as PlaywrightError

from activities.files import OutputSink
from api.app import create_app
from replicant import userbytes
from replicant.accounts import create_account
from replicant.settings import Settings
from replicant.storage import open_store, signed_url
from tests.browser import png, sign_in
from tests.conftest import LiveStack
from tests.modelkit import COG_YAML, pushed, someone, write_model
from tests.waiting import wait_until

CSP = "default-src 'none'; sandbox"


class Beacons:
    """A server on another origin: records the paths scripts call, serves the control page."""

    def __init__(self) -> None:
        self.paths: list[str] = []
        self.control = b""
        beacons = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                beacons.paths.append(self.path)
                body = beacons.control if self.path == "/control" else b"ok"
                self.send_response(200)
                self.send_header("Content-Type", "text/html")
                self.send_header("Access-Control-Allow-Origin", "*")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"

    def calls(self, name: str) -> list[str]:
        return [p for p in self.paths if p == f"/ran/{name}"]


@pytest.fixture(scope="module")
def beacons() -> Iterator[Beacons]:
    server = Beacons()
    thread = threading.Thread(target=server.server.serve_forever, daemon=True)
    thread.start()
    yield server
    server.server.shutdown()


def script(beacons: Beacons, name: str) -> str:
    """What an attacker's file runs: a call home and a new title."""
    return (
        f"fetch('{beacons.url}/ran/{name}', {{mode: 'no-cors'}});"
        f"new Image().src = '{beacons.url}/ran/{name}';"
        f"document.title = 'pwned-{name}';"
    )


def html(beacons: Beacons, name: str) -> bytes:
    return f"<html><body><script>{script(beacons, name)}</script>hi</body></html>".encode()


def svg(beacons: Beacons, name: str) -> bytes:
    return (
        '<svg xmlns="http://www.w3.org/2000/svg" width="10" height="10">'
        f"<script>{script(beacons, name)}</script>"
        '<rect width="10" height="10"/></svg>'
    ).encode()


def download_url(live: LiveStack, token: str, name: str, body: bytes, content_type: str) -> str:
    with live.client(token) as api:
        response = api.post("/v1/files", files={"content": (name, body, content_type)})
    assert response.status_code == 201, response.text
    url: str = response.json()["urls"]["download"]
    return url


def downloaded(page: Page, url: str) -> bool:
    """Whether the browser, sent to ``url``, saves it as a download rather than show it."""
    with page.expect_download() as download:
        try:
            page.goto(url)
        except PlaywrightError as err:
            if "Download is starting" not in str(err):
                raise
    download.value.cancel()
    return True


def shown_type(page: Page, url: str) -> str:
    response = page.goto(url)
    assert response is not None and response.status == 200
    return str(response.headers["content-type"])


def test_uploaded_html_and_svg_run_no_script_in_another_accounts_browser(
    browser: Browser, live: LiveStack, beacons: Beacons, tmp_path: Path
) -> None:
    a = someone(live, "uploader")
    b = someone(live, "viewer")
    # The control: the same script, served as a page by another origin, runs and is seen.
    beacons.control = html(beacons, "control")
    page = sign_in(browser, live, b.token)
    page.goto(f"{beacons.url}/control")
    wait_until(lambda: beacons.calls("control"), bool, what="the control script's beacon")
    assert page.title() == "pwned-control"

    attacks = {
        "html": download_url(live, a.token, "evil.html", html(beacons, "html"), "text/html"),
        "svg": download_url(live, a.token, "evil.svg", svg(beacons, "svg"), "image/svg+xml"),
        "xhtml": download_url(
            live, a.token, "evil.xhtml", html(beacons, "xhtml"), "application/xhtml+xml"
        ),
        "xml": download_url(live, a.token, "evil.xml", svg(beacons, "xml"), "text/xml"),
        # An uploader may name any type: HTML called an image is shown as that image.
        "lying": download_url(live, a.token, "evil.png", html(beacons, "lying"), "image/png"),
        "typeless": download_url(live, a.token, "evil", html(beacons, "typeless"), ""),
    }
    # A model's output file goes the same way.
    root = write_model(
        tmp_path / "svgout",
        {
            "cog.yaml": COG_YAML,
            "predict.py": (
                "import tempfile\n\n"
                "from cog import BasePredictor, Path\n\n\n"
                "class Predictor(BasePredictor):\n"
                "    def predict(self) -> Path:\n"
                '        out = Path(tempfile.mkdtemp()) / "out.svg"\n'
                f"        out.write_text({svg(beacons, 'output').decode()!r})\n"
                "        return out\n"
            ),
        },
    )
    pushed(live, a, f"{a.username}/svgout", root, create=True)
    with a.client(live) as api:
        made = api.post(
            f"/v1/models/{a.username}/svgout/predictions",
            json={"input": {}},
            headers={"Prefer": "wait"},
        ).json()
    output = live.wait_for(made["id"], token=a.token)
    assert output["status"] == "succeeded", output
    attacks["output"] = output["output"]

    for name, url in attacks.items():
        answer = httpx.get(url, timeout=60)
        assert answer.status_code == 200, (name, answer.text)
        assert answer.headers["x-content-type-options"] == "nosniff", name
        assert answer.headers["content-security-policy"] == CSP, name
        if name == "lying":
            assert answer.headers["content-disposition"].startswith("inline"), name
            assert shown_type(page, url) == "image/png"
            assert not page.title().startswith("pwned"), name
        else:
            assert answer.headers["content-disposition"].startswith("attachment"), name
            assert downloaded(page, url), name
    # A script that ran would have called by now: the control's second call comes after all.
    beacons.control = html(beacons, "late-control")
    page.goto(f"{beacons.url}/control")
    wait_until(lambda: beacons.calls("late-control"), bool, what="the late control's beacon")
    ran = [name for name in attacks if beacons.calls(name)]
    assert ran == [], f"scripts ran from user bytes: {ran}"


def test_media_is_served_inline_and_the_rest_as_attachments(
    browser: Browser, live: LiveStack
) -> None:
    a = someone(live, "media")
    page = sign_in(browser, live, a.token)
    image = download_url(live, a.token, "red.png", png(8, 8), "image/png")
    assert shown_type(page, image) == "image/png"
    audio = download_url(live, a.token, "a.wav", b"RIFF0000WAVE", "audio/wav")
    answer = httpx.get(audio, timeout=60)
    assert answer.headers["content-disposition"].startswith("inline")
    assert answer.headers["content-type"] == "audio/wav"
    text = download_url(live, a.token, "notes.txt", b"just text", "text/plain")
    answer = httpx.get(text, timeout=60)
    assert answer.headers["content-disposition"] == "attachment; filename*=UTF-8''notes.txt"
    assert answer.headers["x-content-type-options"] == "nosniff"
    assert answer.content == b"just text"
    assert downloaded(page, text)


def test_with_a_files_origin_user_bytes_are_served_only_there(tmp_path: Path) -> None:
    settings = Settings(
        data_dir=tmp_path,
        public_url="https://app.example",
        files_url="https://files.example",
    )
    app = create_app(settings)
    _, token = create_account(app.state.replicant.engine, "origins")
    auth = {"Authorization": f"Bearer {token}"}
    with TestClient(app, base_url="https://app.example") as on_app:
        created = on_app.post(
            "/v1/files",
            files={"content": ("a.html", b"<script></script>", "text/html")},
            headers=auth,
        )
        assert created.status_code == 201, created.text
        body = created.json()
        assert body["urls"]["get"].startswith("https://app.example/v1/files/")
        download = body["urls"]["download"]
        assert download.startswith("https://files.example/v1/files/")
        # The app's origin never serves the bytes: it sends the browser to the files origin.
        path = download.removeprefix("https://files.example")
        moved = on_app.get(path, follow_redirects=False)
        assert moved.status_code == 307 and moved.headers["location"] == download
        # Output URLs signed at the public URL (before the setting) go the same way.
        output = signed_url(
            settings.resolved_public_url, settings.ensure_secret_key(), "k/o.svg", 60
        )
        moved = on_app.get(output.removeprefix("https://app.example"), follow_redirects=False)
        assert moved.status_code == 307
        assert moved.headers["location"] == output.replace("app.example", "files.example")
    # A model's output file is signed on the files origin itself, as are the store's URLs.
    sink = OutputSink(settings, open_store(settings))
    # In a thread of its own: Playwright's sync API keeps an event loop running in this one.
    with ThreadPoolExecutor(1) as pool:
        output = pool.submit(asyncio.run, sink("p1", "o.svg", None, script_svg())).result()
    assert output.startswith("https://files.example/files-signed/")
    stored = open_store(settings).signed_url("predictions/p1/o.svg", 60)
    assert stored.startswith("https://files.example/files-signed/")
    with TestClient(app, base_url="https://files.example") as on_files:
        served = on_files.get(path)
        # Served there at once: no redirect on the way.
        served_output = on_files.get(output.removeprefix("https://files.example"))
    assert served.status_code == 200 and served.content == b"<script></script>"
    assert served.headers["content-disposition"].startswith("attachment")
    assert served.headers["content-security-policy"] == CSP
    assert served_output.status_code == 200 and served_output.content == SVG
    assert served_output.headers["content-disposition"].startswith("attachment")


SVG = b'<svg xmlns="http://www.w3.org/2000/svg"><script>alert(1)</script></svg>'


async def script_svg() -> AsyncIterator[bytes]:
    yield SVG


@pytest.mark.parametrize(
    ("content_type", "inline"),
    [
        ("image/png", True),
        ("IMAGE/JPEG; charset=binary", True),
        ("audio/mpeg", True),
        ("video/mp4", True),
        ("image/svg+xml", False),
        ("image/svg+xml; charset=utf-8", False),
        ("text/html", False),
        ("application/xhtml+xml", False),
        ("text/xml", False),
        ("application/xml", False),
        ("video/vnd.something+xml", False),
        ("image/png, text/html", True),  # the first type is the one served, alone
        ("text/html, image/png", False),
        ("", False),
        (None, False),
        ("application/octet-stream", False),
        ("text/plain", False),
    ],
)
def test_only_raster_images_audio_and_video_are_inline(
    content_type: str | None, inline: bool
) -> None:
    assert userbytes.is_inline(content_type) is inline
    how = "inline" if inline else "attachment"
    assert userbytes.disposition(content_type, "a b.x").startswith(
        f"{how}; filename*=UTF-8''a%20b.x"
    )
    assert "," not in userbytes.served_type(content_type)
