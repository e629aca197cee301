"""Every operation of Replicate's spec answers, in success and in each documented error, with
bodies that validate; anything else Replicant answers is one of its documented extensions.

Each driving test names the (operation, status) pairs it produces (``COVERS``) and proves the
checker saw them; ``test_the_driving_tests_cover_every_operation_of_the_spec`` proves the
pairs together are the whole spec.
"""

from __future__ import annotations

import asyncio
import os
import re
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import replicate

from replicant.versions import create_version, ensure_model
from tests.conformance import SEEN, check, conformance_hook, openapi_for, spec_operations
from tests.conftest import TERMINAL, LiveStack
from tests.test_ratelimits import serve

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"
HELLO = "replicate/hello-world"

# Documented statuses no honest request can make Replicant answer, each with why.
UNDRIVEN: dict[tuple[str, int], str] = {
    # Replicant answers creates 201 (Prefer: wait included); it never sends 200 or 202.
    ("POST /models/{model_owner}/{model_name}/predictions", 200): "creates always answer 201",
    ("POST /models/{model_owner}/{model_name}/predictions", 202): "creates always answer 201",
    ("POST /predictions", 202): "creates always answer 201",
    ("POST /deployments/{deployment_owner}/{deployment_name}/predictions", 202): "always 201",
    # A 500 is a bug; its body is still checked whenever one happens.
    ("GET /search", 500): "an internal error",
}

COVERS: dict[str, set[tuple[str, int]]] = {}


def covers(name: str, *pairs: tuple[str, int]) -> set[tuple[str, int]]:
    COVERS[name] = set(pairs)
    return COVERS[name]


def assert_seen(pairs: set[tuple[str, int]]) -> None:
    missing = sorted(pairs - SEEN)
    assert not missing, f"not driven through the checker: {missing}"


def unique(prefix: str) -> str:
    return f"{prefix}-{os.urandom(3).hex()}"


@pytest.fixture
def owner(live: LiveStack) -> Iterator[tuple[str, httpx.Client]]:
    """A fresh account (its username and a checked client)."""
    with live.client(live.new_account("conform")) as client:
        yield client.get("/v1/account").json()["username"], client


def retry_until(
    call: Callable[[], httpx.Response], until: Callable[[httpx.Response], bool], timeout: float = 90
) -> httpx.Response:
    """Repeat ``call`` until its answer satisfies ``until`` (or the deadline passes: then the
    caller's assert on the last answer fails)."""
    deadline = time.monotonic() + timeout
    while True:
        response = call()
        if until(response) or time.monotonic() > deadline:
            return response
        time.sleep(0.1)


# --- the checker itself ---------------------------------------------------------------------


def answer(url: str, status: int, method: str = "GET", **kwargs: Any) -> httpx.Response:
    return httpx.Response(status, request=httpx.Request(method, url), **kwargs)


PROBLEM = {"content-type": "application/problem+json"}


def test_spec_checker_catches_a_wrong_shape(live: LiveStack) -> None:
    # A prediction whose status is not in the enum.
    bad = answer(
        f"{live.url}/v1/predictions/abc",
        200,
        json={"id": "abc", "status": "exploded", "input": {}, "urls": {}},
    )
    with pytest.raises(AssertionError, match="OpenAPI"):
        check(bad)
    assert openapi_for(live.url) is openapi_for(live.url)


@pytest.mark.parametrize(
    ("method", "path", "status", "kwargs", "why"),
    [
        ("GET", "/v1/nowhere", 200, {"json": {}}, "route"),
        ("PUT", "/v1/predictions/abc", 200, {"json": {}}, "route"),
        ("GET", "/predictions", 200, {"json": {}}, "route"),
        ("GET", "/v1/predictions/abc/page", 200, {"text": "<html>"}, "route"),
        ("PUT", "/v1/predictions/abc", 405, {"json": {"detail": "x"}}, "problem"),
        ("GET", "/v1/account", 201, {"json": {}}, "documents only"),
        ("GET", "/v1/account", 404, {"json": {"detail": "x"}}, "problem"),
        ("GET", "/v1/account", 404, {"json": {"detail": "x"}, "headers": PROBLEM}, "title"),
        (
            "GET",
            "/v1/account",
            404,
            {"json": {"title": "x", "detail": "x", "status": 403}, "headers": PROBLEM},
            "differs",
        ),
        (
            "POST",
            "/v1/predictions",
            422,
            {"json": {"title": "x", "detail": "x", "status": 422}, "headers": PROBLEM},
            "invalid fields",
        ),
        (
            "GET",
            "/v1/account",
            429,
            {"json": {"title": "x", "detail": "x", "status": 429}, "headers": PROBLEM},
            "Retry-After",
        ),
        ("GET", "/v1/models/a/b/readme", 200, {"json": {}}, "media type"),
        ("DELETE", "/v1/files/abc", 204, {"json": {"id": "abc"}}, "no body"),
        (
            "DELETE",
            "/v1/predictions/abc",
            200,
            {"json": {"id": "abc", "status": "exploded", "input": {}, "urls": {}}},
            "OpenAPI",
        ),
    ],
)
def test_spec_checker_refuses_answers_the_spec_does_not_describe(
    live: LiveStack, method: str, path: str, status: int, kwargs: dict[str, Any], why: str
) -> None:
    with pytest.raises(AssertionError, match=why):
        check(answer(f"{live.url}{path}", status, method, **kwargs))


def test_spec_checker_lets_documented_extensions_through(live: LiveStack) -> None:
    problem = {"title": "Conflict", "detail": "taken", "status": 409}
    check(answer(f"{live.url}/v1/models", 409, "POST", json=problem, headers=PROBLEM))
    check(answer(f"{live.url}/health", 200, json={"status": "ok"}))
    # Outside /v1, answers that are no JSON are the web dashboard's (pages, redirects, assets).
    check(answer(f"{live.url}/predictions", 200, text="<html>"))
    check(answer(f"{live.url}/signin", 303, "POST", headers={"Location": "/"}))


# --- every operation, driven ----------------------------------------------------------------

PREDICTIONS = covers(
    "predictions",
    ("POST /predictions", 201),
    ("GET /predictions", 200),
    ("GET /predictions/{prediction_id}", 200),
    ("POST /predictions/{prediction_id}/cancel", 200),
    ("POST /models/{model_owner}/{model_name}/predictions", 201),
    ("POST /predictions", 422),
    ("POST /predictions", 401),
    ("POST /predictions", 400),
    ("GET /predictions/{prediction_id}", 404),
    ("POST /predictions/{prediction_id}/cancel", 404),
    ("POST /models/{model_owner}/{model_name}/predictions", 404),
    ("GET /predictions", 422),
    ("DELETE /v1/predictions/{prediction_id}", 200),
    ("GET /v1/predictions/{prediction_id}/stream", 200),
    ("POST /v1/predictions/{prediction_id}/share", 200),
    ("POST /v1/predictions/{prediction_id}/unshare", 200),
    ("GET /p/{prediction_id}", 200),
)


def test_prediction_operations_match_the_spec(live: LiveStack, api: httpx.Client) -> None:
    version = api.get(f"/v1/models/{HELLO}").json()["latest_version"]["id"]
    waited = api.post(
        "/v1/predictions",
        json={"version": version, "input": {"text": "spec"}},
        headers={"Prefer": "wait"},
    )
    assert waited.status_code == 201, waited.text
    created = api.post(f"/v1/models/{HELLO}/predictions", json={"input": {"text": "a"}})
    assert created.status_code == 201, created.text
    sleeping = api.post("/v1/models/replicant/sleep/predictions", json={"input": {"seconds": 5}})
    assert sleeping.status_code == 201, sleeping.text
    sleeping_id = sleeping.json()["id"]
    assert api.post(f"/v1/predictions/{sleeping_id}/cancel").status_code == 200
    assert api.get(f"/v1/predictions/{waited.json()['id']}").status_code == 200
    assert api.get("/v1/predictions").status_code == 200
    assert live.wait_for(sleeping_id)["status"] in TERMINAL
    assert api.get(f"/v1/predictions/{sleeping_id}").status_code == 200
    ngram = api.post("/v1/models/replicant/ngram/predictions", json={"input": {"max_tokens": 3}})
    assert ngram.status_code == 201, ngram.text
    with api.stream("GET", ngram.json()["urls"]["stream"]) as stream:
        assert stream.status_code == 200
        assert any(line.startswith("event: done") for line in stream.iter_lines())
    shared = waited.json()["id"]
    assert api.post(f"/v1/predictions/{shared}/share").status_code == 200
    assert api.get(f"/p/{shared}").status_code == 200
    assert api.post(f"/v1/predictions/{shared}/unshare").status_code == 200
    assert api.delete(f"/v1/predictions/{created.json()['id']}").status_code == 200

    bad_input = api.post("/v1/predictions", json={"version": version, "input": {"nope": 1}})
    assert bad_input.status_code == 422, bad_input.text
    assert api.get("/v1/predictions", params={"cursor": "garbage"}).status_code == 422
    assert api.get("/v1/predictions/doesnotexist").status_code == 404
    assert api.post("/v1/predictions/doesnotexist/cancel").status_code == 404
    missing = api.post("/v1/models/nobody/nothing/predictions", json={"input": {}})
    assert missing.status_code == 404
    anonymous = api.post(
        "/v1/predictions", json={"version": version, "input": {}}, headers={"Authorization": ""}
    )
    assert anonymous.status_code == 401
    not_json = api.post(
        "/v1/predictions", content="{", headers={"Content-Type": "application/json"}
    )
    assert not_json.status_code == 400
    # A method no route has is refused with a problem body too (the hook checks it).
    assert api.get(f"/v1/predictions/{sleeping_id}/cancel").status_code == 405
    assert_seen(PREDICTIONS)


MODELS = covers(
    "models",
    ("GET /models", 200),
    ("POST /models", 201),
    ("GET /models/{model_owner}/{model_name}", 200),
    ("PATCH /models/{model_owner}/{model_name}", 200),
    ("GET /models/{model_owner}/{model_name}/readme", 200),
    ("GET /models/{model_owner}/{model_name}/readme", 404),
    ("GET /models/{model_owner}/{model_name}/examples", 200),
    ("GET /models/{model_owner}/{model_name}/versions", 200),
    ("GET /models/{model_owner}/{model_name}/versions/{version_id}", 200),
    ("DELETE /models/{model_owner}/{model_name}/versions/{version_id}", 202),
    ("DELETE /models/{model_owner}/{model_name}", 204),
    ("GET /hardware", 200),
    ("GET /account", 200),
    ("GET /webhooks/default/secret", 200),
    ("GET /collections", 200),
    ("GET /collections/{collection_slug}", 200),
    ("GET /search", 200),
    ("GET /search", 400),
    ("QUERY /v1/models", 200),
    ("GET /health", 200),
    ("GET /metrics", 200),
    ("POST /models", 409),
    ("POST /models", 403),
    ("POST /models", 422),
    ("PATCH /models/{model_owner}/{model_name}", 422),
    ("GET /models/{model_owner}/{model_name}", 404),
    ("GET /collections/{collection_slug}", 404),
    ("GET /models/{model_owner}/{model_name}/versions/{version_id}", 404),
)


def test_model_operations_match_the_spec(
    live: LiveStack, api: httpx.Client, owner: tuple[str, httpx.Client]
) -> None:
    username, client = owner
    for path in ["/v1/models", "/v1/hardware", "/v1/account", "/v1/webhooks/default/secret"]:
        assert api.get(path).status_code == 200, path
    for path in ["/health", "/metrics"]:
        assert api.get(path).status_code == 200, path
    for path in [f"/v1/models/{HELLO}", f"/v1/models/{HELLO}/versions"]:
        assert api.get(path).status_code == 200, path
    assert api.get(f"/v1/models/{HELLO}/readme").status_code == 200
    assert api.get(f"/v1/models/{HELLO}/examples").status_code == 200
    version = api.get(f"/v1/models/{HELLO}").json()["latest_version"]["id"]
    assert api.get(f"/v1/models/{HELLO}/versions/{version}").status_code == 200
    collections = api.get("/v1/collections")
    assert collections.status_code == 200
    slug = collections.json()["results"][0]["slug"]
    assert api.get(f"/v1/collections/{slug}").status_code == 200
    assert api.get("/v1/search", params={"query": "hello"}).status_code == 200
    assert api.get("/v1/search").status_code == 400
    query = api.request(
        "QUERY", "/v1/models", content="hello", headers={"Content-Type": "text/plain"}
    )
    assert query.status_code == 200

    name = unique("model")
    body = {"owner": username, "name": name, "visibility": "private", "hardware": "cpu"}
    assert client.post("/v1/models", json=body).status_code == 201
    assert client.post("/v1/models", json=body).status_code == 409
    assert client.post("/v1/models", json={**body, "owner": "replicate"}).status_code == 403
    assert client.post("/v1/models", json={**body, "hardware": "abacus"}).status_code == 422
    path = f"/v1/models/{username}/{name}"
    assert client.patch(path, json={"description": "conformant"}).status_code == 200
    assert client.patch(path, json={"weights_url": "x"}).status_code == 422
    model = ensure_model(live.engine, username, name, visibility="private")
    pushed = create_version(live.settings, live.engine, model, EXAMPLES / "hello-world")
    assert client.get(f"{path}/versions/{pushed.id}").status_code == 200
    assert client.delete(f"{path}/versions/{pushed.id}").status_code == 202
    assert client.get(f"{path}/versions/{pushed.id}").status_code == 404
    assert client.delete(path).status_code == 204
    assert client.get(path).status_code == 404
    assert client.get(f"{path}/readme").status_code == 404
    assert client.get("/v1/collections/no-such-collection").status_code == 404
    assert_seen(MODELS)


DEPLOYMENTS = covers(
    "deployments",
    ("GET /deployments", 200),
    ("POST /deployments", 200),
    ("GET /deployments/{deployment_owner}/{deployment_name}", 200),
    ("PATCH /deployments/{deployment_owner}/{deployment_name}", 200),
    ("POST /deployments/{deployment_owner}/{deployment_name}/predictions", 201),
    ("DELETE /deployments/{deployment_owner}/{deployment_name}", 204),
    ("DELETE /deployments/{deployment_owner}/{deployment_name}", 409),
    ("PATCH /deployments/{deployment_owner}/{deployment_name}", 422),
    ("GET /deployments/{deployment_owner}/{deployment_name}", 404),
)


def test_deployment_operations_match_the_spec(owner: tuple[str, httpx.Client]) -> None:
    username, client = owner
    version = client.get(f"/v1/models/{HELLO}").json()["latest_version"]["id"]
    name = unique("dep")
    body = {
        "name": name,
        "model": HELLO,
        "version": version,
        "hardware": "cpu",
        "min_instances": 0,
        "max_instances": 1,
    }
    assert client.post("/v1/deployments", json=body).status_code == 200
    path = f"/v1/deployments/{username}/{name}"
    assert client.get("/v1/deployments").status_code == 200
    assert client.get(path).status_code == 200
    assert client.patch(path, json={"max_instances": 2}).status_code == 200
    assert client.patch(path, json={"min_instances": 3}).status_code == 422
    run = client.post(
        f"{path}/predictions", json={"input": {"text": "d"}}, headers={"Prefer": "wait"}
    )
    assert run.status_code == 201, run.text
    # A deployment that just ran is refused deletion (409) until it has been idle a while.
    assert client.delete(path).status_code == 409
    deleted = retry_until(lambda: client.delete(path), lambda r: r.status_code != 409)
    assert deleted.status_code == 204, deleted.text
    assert client.get(path).status_code == 404
    assert_seen(DEPLOYMENTS)


FILES = covers(
    "files",
    ("POST /files", 201),
    ("POST /files", 413),
    ("POST /files", 422),
    ("POST /files", 415),
    ("GET /files", 200),
    ("GET /files/{file_id}", 200),
    ("GET /files/{file_id}", 404),
    ("GET /files/{file_id}/download", 200),
    ("GET /files/{file_id}/download", 404),
    ("DELETE /files/{file_id}", 204),
    ("DELETE /files/{file_id}", 404),
)


def test_file_operations_match_the_spec(live: LiveStack, owner: tuple[str, httpx.Client]) -> None:
    _, client = owner
    created = client.post(
        "/v1/files",
        files={"content": ("hello.txt", b"hello", "text/plain")},
        data={"metadata": '{"purpose": "conformance"}'},
    )
    assert created.status_code == 201, created.text
    file = created.json()
    assert client.get("/v1/files").status_code == 200
    assert client.get(f"/v1/files/{file['id']}").status_code == 200
    download = client.get(file["urls"]["download"])
    assert download.status_code == 200, download.text
    forged = httpx.URL(file["urls"]["download"]).copy_merge_params({"signature": "0"})
    assert client.get(forged).status_code == 404
    assert client.delete(f"/v1/files/{file['id']}").status_code == 204
    assert client.delete(f"/v1/files/{file['id']}").status_code == 404
    assert client.get(f"/v1/files/{file['id']}").status_code == 404
    bad = client.post("/v1/files", files={"content": ("x", b"x")}, data={"metadata": "[1]"})
    assert bad.status_code == 422
    assert client.post("/v1/files", json={"content": "x"}).status_code == 415
    big = b"x" * (live.settings.max_file_size + 1)
    assert client.post("/v1/files", files={"content": ("big", big)}).status_code == 413
    assert_seen(FILES)


TRAININGS = covers(
    "trainings",
    ("POST /models/{model_owner}/{model_name}/versions/{version_id}/trainings", 201),
    ("POST /models/{model_owner}/{model_name}/versions/{version_id}/trainings", 422),
    ("GET /trainings", 200),
    ("GET /trainings/{training_id}", 200),
    ("GET /trainings/{training_id}", 404),
    ("POST /trainings/{training_id}/cancel", 200),
    ("GET /v1/trainings/{training_id}/stream", 200),
)


def test_training_operations_match_the_spec(
    live: LiveStack, owner: tuple[str, httpx.Client]
) -> None:
    username, client = owner
    destination = unique("tuned")
    made = client.post(
        "/v1/models", json={"owner": username, "name": destination, "visibility": "private"}
    )
    assert made.status_code == 201, made.text
    version = client.get("/v1/models/replicant/ngram").json()["latest_version"]["id"]
    route = f"/v1/models/replicant/ngram/versions/{version}/trainings"
    body = {"destination": f"{username}/{destination}", "input": {"text": "data:,a b c"}}
    started = client.post(route, json=body)
    assert started.status_code == 201, started.text
    training = started.json()["id"]
    assert client.get(f"/v1/trainings/{training}").status_code == 200
    assert client.get("/v1/trainings").status_code == 200
    assert client.post(f"/v1/trainings/{training}/cancel").status_code == 200
    with client.stream("GET", started.json()["urls"]["stream"]) as stream:
        assert stream.status_code == 200
        assert any(line.startswith("event: done") for line in stream.iter_lines())
    assert client.post(route, json={**body, "destination": "nope"}).status_code == 422
    assert client.get("/v1/trainings/doesnotexist").status_code == 404
    assert_seen(TRAININGS)


THROTTLED = covers("throttled", ("GET /account", 429), ("GET /health", 429))


def test_throttled_answers_match_the_spec(live: LiveStack) -> None:
    with serve(live, rate_limit_default="1/minute") as url, live.client() as api:
        api.base_url = httpx.URL(url)
        assert api.get("/v1/account").status_code == 200
        throttled = api.get("/v1/account")
        assert throttled.status_code == 429, throttled.text
        # Every route counts against the caller's limit, Replicant's own ones too.
        assert api.get("/health").status_code == 429
    assert_seen(THROTTLED)


# Operations anyone may call without a token: a signed download URL is its own credential.
TOKENLESS = {"GET /files/{file_id}/download"}


def test_every_operation_without_a_token_answers_a_problem(live: LiveStack) -> None:
    with httpx.Client(
        base_url=live.url, timeout=90, event_hooks={"response": [conformance_hook()]}
    ) as anonymous:
        for operation in spec_operations():
            method, template = operation.split(" ", 1)
            path = "/v1" + re.sub(r"\{[^}]+\}", "x", template)
            response = anonymous.request(method, path)
            expected = 404 if operation in TOKENLESS else 401
            assert response.status_code == expected, (operation, response.text)
            assert (operation, expected) in SEEN


# A training's body is validated before its version is looked up.
TRAINING_BODY = {"destination": "nobody/nothing", "input": {}}


def test_every_operation_on_a_missing_resource_answers_a_problem(api: httpx.Client) -> None:
    for operation in spec_operations():
        method, template = operation.split(" ", 1)
        if "{" not in template:
            continue
        path = "/v1" + re.sub(r"\{[^}]+\}", "doesnotexist", template)
        body = TRAINING_BODY if template.endswith("/trainings") else {}
        response = api.request(method, path, json=body)
        assert response.status_code == 404, (operation, response.text)
        assert (operation, 404) in SEEN


def test_the_driving_tests_cover_every_operation_of_the_spec() -> None:
    documented = {(op, status) for op, statuses in spec_operations().items() for status in statuses}
    driven = set().union(*COVERS.values())
    assert not documented - driven - set(UNDRIVEN), "operations or statuses nobody drives"
    assert not set(UNDRIVEN) - documented, "UNDRIVEN names what the spec does not document"
    assert not set(UNDRIVEN) & driven


# --- the official client's answers are checked too ------------------------------------------


def test_official_client_answers_are_checked(live: LiveStack) -> None:
    official = replicate.Client(api_token=live.token, base_url=live.url)
    for call in [official.hardware.list, lambda: asyncio.run(official.hardware.async_list())]:
        SEEN.discard(("GET /hardware", 200))
        assert call()
        assert ("GET /hardware", 200) in SEEN
