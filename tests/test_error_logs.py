"""An unexpected error is logged by its type and a reference, never by its message or traceback
(either may hold secrets); the client gets a 500 problem+json with the same reference."""

from __future__ import annotations

import logging
import re
import threading
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import uvicorn

from api.app import create_app
from replicant.devstack import free_port
from replicant.settings import Settings
from tests.waiting import wait_until

REFERENCE = re.compile(r"An unexpected error occurred \(error id ([0-9a-f]{16})\)")
SECRET = "postgresql://replicant:hunter2-db-password@db:5432/replicant"


class LeakyError(RuntimeError):
    """An error whose message carries a secret, as a driver's error may."""


def leak() -> None:
    raise LeakyError(f"could not connect to {SECRET}")


@pytest.fixture
def url(tmp_path: Path) -> Iterator[str]:
    """The API app with one route that fails with a secret in its message, served by
    uvicorn in a thread (so the server's own error logging is part of what is checked)."""
    app = create_app(Settings(data_dir=tmp_path / "data"))
    app.add_api_route("/test-only/leak", leak)
    app.router.routes.insert(0, app.router.routes.pop())  # ahead of the dashboard's pages
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_config=None))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    wait_until(lambda: server.started, what="the API to start", interval=0.02)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=30)


def test_an_unexpected_error_logs_its_type_and_a_reference_not_its_message(
    url: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    response = httpx.get(f"{url}/test-only/leak")
    assert response.status_code == 500
    assert response.headers["content-type"] == "application/problem+json"
    body = response.json()
    match = REFERENCE.fullmatch(body["detail"])
    assert match, body
    assert "hunter2" not in response.text
    reference = match.group(1)
    logged = [r for r in caplog.records if "unhandled_error" in r.getMessage()]
    assert len(logged) == 1
    assert "type=LeakyError" in logged[0].getMessage()
    assert "route=/test-only/leak" in logged[0].getMessage()
    assert f"error_id={reference}" in logged[0].getMessage()
    # No record anywhere (ours, uvicorn's, Starlette's) holds the message or a traceback.
    for record in caplog.records:
        assert "hunter2" not in record.getMessage()
        assert record.exc_info is None and record.exc_text is None, record.getMessage()
    assert "hunter2" not in caplog.text


def test_every_error_gets_its_own_reference(url: str) -> None:
    first = httpx.get(f"{url}/test-only/leak").json()["detail"]
    second = httpx.get(f"{url}/test-only/leak").json()["detail"]
    assert first != second
