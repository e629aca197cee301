"""Request bodies are capped before they are read and before authentication (413 in
problem+json), forms have field count and part size caps, and the dashboard's Run form
streams a picked file to the Files API instead of holding it."""

from __future__ import annotations

import os
import socket
from collections.abc import Iterator
from pathlib import Path

import httpx

from tests.conftest import LiveStack
from tests.test_model_faults import MB, peak_growth
from tests.test_sessions import csrf_of, sign_in

PROBLEM = "application/problem+json"
# What the API process may grow by while it refuses or streams tens of megabytes.
MEMORY_BOUND = 12 * MB


def refused(response: httpx.Response) -> str:
    """The detail of a 413 problem+json answer."""
    assert response.status_code == 413, response.text
    assert response.headers["content-type"] == PROBLEM
    detail: str = response.json()["detail"]
    return detail


def refused_page(response: httpx.Response) -> str:
    """The message of a dashboard form's 413 (the dashboard answers with a page)."""
    assert response.status_code == 413, response.text
    assert response.headers["content-type"].startswith("text/html")
    return response.text


def test_a_20_mb_body_without_a_token_gets_413_and_the_api_does_not_grow(
    live: LiveStack,
) -> None:
    body = b'{"input": {"text": "' + b"a" * (20 * 1000 * 1000) + b'"}}'
    with peak_growth(live, ("api",)) as growth, httpx.Client(timeout=120) as client:
        response = client.post(
            f"{live.url}/v1/models/replicate/hello-world/predictions",
            content=body,
            headers={"Content-Type": "application/json"},
        )
    cap = live.settings.max_request_body
    assert refused(response) == f"The request body is larger than {cap} bytes"
    print(f"API memory growth: {growth['api'] / MB:.1f} MB")
    assert growth["api"] < MEMORY_BOUND
    # With a token the cap is the same: it is applied before anyone is authenticated.
    with live.client() as api:
        assert api.post("/v1/predictions", content=body).status_code == 413
        assert api.get("/v1/account").status_code == 200


def test_a_chunked_body_is_counted_as_it_arrives(live: LiveStack) -> None:
    def chunks() -> Iterator[bytes]:
        for _ in range(20):
            yield b" " * MB

    response = httpx.post(
        f"{live.url}/v1/predictions",
        content=chunks(),  # no Content-Length: Transfer-Encoding: chunked
        headers={"Content-Type": "application/json"},
        timeout=120,
    )
    assert refused(response).startswith("The request body is larger than")
    with live.client() as api:
        assert api.get("/v1/account").status_code == 200


def test_uploads_may_be_larger_than_json(live: LiveStack, tmp_path: Path) -> None:
    big = tmp_path / "big.bin"
    big.write_bytes(os.urandom(live.settings.max_request_body + MB))
    with live.client() as api, big.open("rb") as f:
        created = api.post("/v1/files", files={"content": ("big.bin", f)})
    assert created.status_code == 201, created.text
    assert created.json()["size"] == big.stat().st_size


def test_a_file_upload_with_too_many_fields_is_refused(live: LiveStack) -> None:
    fields = {f"extra{i}": (None, "x" * 1000) for i in range(40)}
    with live.client() as api:
        response = api.post("/v1/files", files={"content": ("a.txt", b"a"), **fields})
    assert refused(response) == "The form has more than 16 fields"
    with live.client() as api:
        names = [f["name"] for f in api.get("/v1/files").json()["results"]]
    assert "a.txt" not in names


def test_the_sign_in_form_has_small_caps(live: LiveStack) -> None:
    with httpx.Client(base_url=live.url, timeout=90) as client:
        csrf = csrf_of(client.get("/signin"))
        many = {f"f{i}": (None, "x") for i in range(50)}
        many_answer = client.post("/signin", files={"csrf": (None, csrf), **many})
        assert "Too many fields. Maximum number of fields is 8." in refused_page(many_answer)
        long = client.post("/signin", files={"csrf": (None, csrf), "token": (None, "x" * 10_000)})
        assert "Part exceeded maximum size of 4KB." in refused_page(long)
        huge = client.post("/signin", files={"csrf": (None, csrf), "token": (None, "x" * 100_000)})
        assert refused(huge) == "The request body is larger than 65536 bytes"
        # Within the caps, a bad token is still told apart.
        bad = client.post("/signin", files={"csrf": (None, csrf), "token": (None, "r8_nope")})
        assert bad.status_code == 401


def signed_in(live: LiveStack, token: str) -> tuple[httpx.Client, str]:
    """A dashboard session signed in with ``token`` and its CSRF token."""
    client = httpx.Client(base_url=live.url, timeout=120)
    sign_in(client, token)
    return client, csrf_of(client.get("/"))


def test_the_run_form_has_field_caps(live: LiveStack) -> None:
    client, csrf = signed_in(live, live.new_account("formcaps"))
    many = {f"in-x{i}": (None, "x") for i in range(300)}
    try:
        response = client.post(
            "/models/replicate/hello-world/run", files={"csrf": (None, csrf), **many}
        )
    finally:
        client.close()
    assert "Too many fields" in refused_page(response)


def test_the_run_form_streams_a_picked_file_to_the_files_api(
    live: LiveStack, tmp_path: Path
) -> None:
    token = live.new_account("formstream")
    client, csrf = signed_in(live, token)
    picked = tmp_path / "big.png"
    picked.write_bytes(os.urandom(40 * MB))
    try:
        with picked.open("rb") as f, peak_growth(live, ("api",)) as growth:
            response = client.post(
                "/models/replicant/thumbnail/run",
                files={"csrf": (None, csrf), "in-image": ("big.png", f, "image/png")},
            )
    finally:
        client.close()
    assert response.status_code == 303, response.text
    print(f"API memory growth: {growth['api'] / MB:.1f} MB")
    assert growth["api"] < MEMORY_BOUND
    with live.client(token) as api:
        (stored,) = api.get("/v1/files").json()["results"]
    assert (stored["name"], stored["size"]) == ("big.png", 40 * MB)
    assert stored["content_type"] == "image/png"


def test_a_declared_length_past_the_cap_is_answered_before_any_body_byte(
    live: LiveStack,
) -> None:
    # Headers only: a client waiting for "100 Continue" gets the 413 instead, sending nothing.
    host, port = live.url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=60) as conn:
        conn.sendall(
            b"POST /v1/predictions HTTP/1.1\r\nHost: api\r\nContent-Type: application/json\r\n"
            b"Content-Length: 20000000\r\nExpect: 100-continue\r\n\r\n"
        )
        answer = b""
        while b"\r\n\r\n" not in answer:
            chunk = conn.recv(65536)
            assert chunk, answer
            answer += chunk
    assert answer.startswith(b"HTTP/1.1 413 "), answer
    assert b"content-type: application/problem+json" in answer.lower()
