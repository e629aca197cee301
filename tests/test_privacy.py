"""The privacy matrix: every route of the API has a decision on what another account and a
caller without a token get when they ask about what an owner has (a private model, its
version, a prediction, a file, a build); no answer holds the owner's data, and nothing they
try changes it."""

from __future__ import annotations

import io
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi.routing import iter_route_contexts

from api.app import create_app
from replicant.archives import pack_model
from tests.accountkit import EXAMPLES, new_user, private_model, unique
from tests.conftest import LiveStack

# --- the privacy matrix -------------------------------------------------------------------


@dataclass
class Owned:
    """What the owner has that nobody else may see."""

    username: str
    token: str
    model: str  # owner/name of a private model
    version: str
    prediction: str
    file: str
    # Strings only the owner's things hold (prediction input, file content, webhook secret),
    # searched for in every answer to someone else.
    markers: tuple[str, ...]
    build: str = ""  # the build of a push of the private model


@pytest.fixture(scope="module")
def owned(live: LiveStack) -> Iterator[Owned]:
    username, token = new_user(live, "owner")
    model, version = private_model(live, token, username, "hello-world")
    marker = unique("marker")
    with live.client(token) as client:
        created = client.post(
            "/v1/predictions",
            json={"version": version, "input": {"text": marker}},
            headers={"Prefer": "wait"},
        )
        assert created.status_code == 201, created.text
        assert created.json()["output"] == f"hello {marker}"
        # An example keeps its data past retention, which the matrix's walk may outlast.
        marked = client.post(
            f"/v1/models/{model}/examples", json={"prediction": created.json()["id"]}
        )
        assert marked.status_code == 201, marked.text
    # A multipart body is streamed, which the conformance hook cannot read: a plain client.
    with httpx.Client(base_url=live.url, headers={"Authorization": f"Bearer {token}"}) as plain:
        uploaded = plain.post(
            "/v1/files", files={"content": ("notes.txt", f"file {marker}".encode(), "text/plain")}
        )
    assert uploaded.status_code == 201, uploaded.text
    with live.client(token) as client:
        secret = client.get("/v1/webhooks/default/secret").json()["key"]
    yield Owned(
        username,
        token,
        model,
        version,
        created.json()["id"],
        uploaded.json()["id"],
        (marker, secret),
        push_build(live, token, model, EXAMPLES / "hello-world"),
    )


def push_build(live: LiveStack, token: str, ref: str, src: Path) -> str:
    """Push ``src`` to ``ref`` through the API; the id of the push's build."""
    archive = io.BytesIO()
    pack_model(src, archive)
    pushed = httpx.post(
        f"{live.url}/v1/models/{ref}/versions",
        content=archive.getvalue(),
        headers={"Authorization": f"Bearer {token}", "Content-Type": "application/gzip"},
        timeout=300,
    )
    assert pushed.status_code in (200, 201), pushed.text
    return pushed.headers["Replicant-Build"]


Check = Callable[[httpx.Response, Owned], None]


def status(*codes: int) -> Check:
    def check(response: httpx.Response, owned: Owned) -> None:
        assert response.status_code in codes, response.text

    return check


def answered_own(response: httpx.Response, owned: Owned) -> None:
    """The caller's own things (its account, its lists): fine, as long as no leak (checked)."""
    assert response.status_code == 200, response.text
    assert owned.username not in response.text


NOT_FOUND = status(404)
UNAUTHENTICATED = status(401)
OPEN = status(200)
FORBIDDEN = status(403)


def to_sign_in(response: httpx.Response, owned: Owned) -> None:
    """A dashboard page: a token is no session, the browser goes to sign in (pages as other
    signed-in accounts: tests/test_dashboard_privacy.py)."""
    assert response.status_code == 303, response.text
    assert response.headers["location"].startswith("/signin?next="), response.headers


@dataclass
class Case:
    """How one route answers another account and a caller without a token."""

    other: Check
    anonymous: Check
    body: dict[str, Any] | None = None


# Every route of the app, by method and pattern. A route missing here fails the test:
# whoever adds a route decides what other accounts and anonymous callers get from it.
# Every response is also searched for the owner's markers, whatever its status.
MATRIX: dict[tuple[str, str], Case] = {
    ("GET", "/health"): Case(status(200, 503), status(200, 503)),
    ("GET", "/openapi.json"): Case(OPEN, OPEN),
    ("GET", "/docs"): Case(OPEN, OPEN),
    ("GET", "/docs/oauth2-redirect"): Case(OPEN, OPEN),
    ("GET", "/redoc"): Case(OPEN, OPEN),
    # Counts across the installation, nothing of any one account.
    ("GET", "/metrics"): Case(OPEN, OPEN),
    ("GET", "/v1/account"): Case(answered_own, UNAUTHENTICATED),
    # The caller's own usage (an organization's only for its members).
    ("GET", "/v1/account/usage"): Case(answered_own, UNAUTHENTICATED),
    ("GET", "/v1/hardware"): Case(OPEN, UNAUTHENTICATED),
    ("GET", "/v1/webhooks/default/secret"): Case(answered_own, UNAUTHENTICATED),
    # predictions
    ("GET", "/v1/predictions"): Case(answered_own, UNAUTHENTICATED),
    # Replicate's 422 "Invalid version or not permitted", as for a version that is not there.
    ("POST", "/v1/predictions"): Case(
        status(422), UNAUTHENTICATED, body={"version": "{version}", "input": {"text": "x"}}
    ),
    ("GET", "/v1/predictions/{prediction_id}"): Case(NOT_FOUND, UNAUTHENTICATED),
    ("POST", "/v1/predictions/{prediction_id}/cancel"): Case(NOT_FOUND, UNAUTHENTICATED),
    ("DELETE", "/v1/predictions/{prediction_id}"): Case(NOT_FOUND, UNAUTHENTICATED),
    # The stream needs the signature of urls.stream, token or not.
    ("GET", "/v1/predictions/{prediction_id}/stream"): Case(NOT_FOUND, NOT_FOUND),
    ("POST", "/v1/predictions/{prediction_id}/share"): Case(NOT_FOUND, UNAUTHENTICATED),
    ("POST", "/v1/predictions/{prediction_id}/unshare"): Case(NOT_FOUND, UNAUTHENTICATED),
    ("GET", "/p/{prediction_id}"): Case(NOT_FOUND, NOT_FOUND),
    # models and versions
    ("GET", "/v1/models"): Case(answered_own, UNAUTHENTICATED),
    # Account names are public; creating under someone else's is refused either way.
    ("POST", "/v1/models"): Case(
        status(403, 404), UNAUTHENTICATED, body={"owner": "{owner}", "name": "taken-over"}
    ),
    ("GET", "/v1/models/{owner}/{name}"): Case(NOT_FOUND, UNAUTHENTICATED),
    ("PATCH", "/v1/models/{owner}/{name}"): Case(
        NOT_FOUND, UNAUTHENTICATED, body={"description": "changed", "visibility": "public"}
    ),
    ("DELETE", "/v1/models/{owner}/{name}"): Case(NOT_FOUND, UNAUTHENTICATED),
    ("GET", "/v1/models/{owner}/{name}/versions"): Case(NOT_FOUND, UNAUTHENTICATED),
    ("POST", "/v1/models/{owner}/{name}/versions"): Case(NOT_FOUND, UNAUTHENTICATED),
    ("GET", "/v1/models/{owner}/{name}/versions/{version_id}"): Case(NOT_FOUND, UNAUTHENTICATED),
    ("DELETE", "/v1/models/{owner}/{name}/versions/{version_id}"): Case(NOT_FOUND, UNAUTHENTICATED),
    ("POST", "/v1/models/{owner}/{name}/predictions"): Case(
        NOT_FOUND, UNAUTHENTICATED, body={"input": {"text": "x"}}
    ),
    ("GET", "/v1/models/{owner}/{name}/readme"): Case(NOT_FOUND, UNAUTHENTICATED),
    ("GET", "/v1/models/{owner}/{name}/examples"): Case(NOT_FOUND, UNAUTHENTICATED),
    ("POST", "/v1/models/{owner}/{name}/examples"): Case(
        NOT_FOUND, UNAUTHENTICATED, body={"prediction": "{prediction_id}"}
    ),
    ("DELETE", "/v1/models/{owner}/{name}/examples/{prediction_id}"): Case(
        NOT_FOUND, UNAUTHENTICATED
    ),
    # Search without a query is refused; what it finds is the caller's (test_collections_search).
    ("GET", "/v1/search"): Case(status(400), UNAUTHENTICATED),
    ("QUERY", "/v1/models"): Case(status(400), UNAUTHENTICATED),
    # collections: the same for everyone, with only the models the caller may see
    ("GET", "/v1/collections"): Case(answered_own, UNAUTHENTICATED),
    ("GET", "/v1/collections/{slug}"): Case(answered_own, UNAUTHENTICATED),
    ("GET", "/v1/builds/{build_id}"): Case(NOT_FOUND, UNAUTHENTICATED),
    # trainings: the owner's prediction id stands in for a training id (same id space)
    ("GET", "/v1/trainings"): Case(answered_own, UNAUTHENTICATED),
    ("GET", "/v1/trainings/{training_id}"): Case(NOT_FOUND, UNAUTHENTICATED),
    ("POST", "/v1/trainings/{training_id}/cancel"): Case(NOT_FOUND, UNAUTHENTICATED),
    ("GET", "/v1/trainings/{training_id}/stream"): Case(NOT_FOUND, NOT_FOUND),
    ("GET", "/t/{training_id}"): Case(NOT_FOUND, UNAUTHENTICATED),
    ("POST", "/v1/models/{owner}/{name}/versions/{version_id}/trainings"): Case(
        NOT_FOUND, UNAUTHENTICATED, body={"destination": "{owner}/{name}", "input": {}}
    ),
    # files: the caller's own list and uploads; the owner's file by id or URL is not there
    ("GET", "/v1/files"): Case(answered_own, UNAUTHENTICATED),
    ("POST", "/v1/files"): Case(status(400, 415, 422), UNAUTHENTICATED),
    ("GET", "/v1/files/{file_id}"): Case(NOT_FOUND, UNAUTHENTICATED),
    ("DELETE", "/v1/files/{file_id}"): Case(NOT_FOUND, UNAUTHENTICATED),
    # Downloads need the signature of the file's URL, token or not.
    ("GET", "/v1/files/{file_id}/download"): Case(NOT_FOUND, NOT_FOUND),
    ("GET", "/files-signed/{key}"): Case(NOT_FOUND, NOT_FOUND),
    ("GET", "/files-signed/{expires}/{sig}/{key}"): Case(NOT_FOUND, NOT_FOUND),
    # deployments: the owner's deployment name, and a deployment of the owner's private model
    ("GET", "/v1/deployments"): Case(answered_own, UNAUTHENTICATED),
    ("POST", "/v1/deployments"): Case(
        NOT_FOUND,
        UNAUTHENTICATED,
        body={
            "name": "borrowed",
            "model": "{owner}/{name}",
            "version": "{version}",
            "hardware": "cpu",
            "min_instances": 0,
            "max_instances": 1,
        },
    ),
    ("GET", "/v1/deployments/{owner}/{name}"): Case(NOT_FOUND, UNAUTHENTICATED),
    ("PATCH", "/v1/deployments/{owner}/{name}"): Case(
        NOT_FOUND, UNAUTHENTICATED, body={"max_instances": 2}
    ),
    ("DELETE", "/v1/deployments/{owner}/{name}"): Case(NOT_FOUND, UNAUTHENTICATED),
    ("POST", "/v1/deployments/{owner}/{name}/predictions"): Case(
        NOT_FOUND, UNAUTHENTICATED, body={"input": {"text": "x"}}
    ),
    # the dashboard (api/dashboard): a session cookie, not a token, opens its pages
    ("GET", "/signin"): Case(OPEN, OPEN),
    ("POST", "/signin"): Case(FORBIDDEN, FORBIDDEN),  # no session, no CSRF token
    ("POST", "/signout"): Case(FORBIDDEN, FORBIDDEN),
    ("GET", "/static/dashboard/{name}"): Case(NOT_FOUND, NOT_FOUND),
    ("GET", "/favicon.ico"): Case(OPEN, OPEN),
    **{
        route: Case(to_sign_in, to_sign_in)
        for route in [
            ("GET", "/"),
            ("GET", "/account"),
            ("POST", "/account/tokens"),
            ("POST", "/account/tokens/{token_id}/revoke"),
            ("POST", "/account/webhook-secret"),
            ("GET", "/account/usage"),
            ("GET", "/account/usage.csv"),
            ("GET", "/deployments"),
            ("POST", "/deployments/{owner}/{name}"),
            ("GET", "/models/{owner}/{name}"),
            ("POST", "/models/{owner}/{name}/run"),
            ("GET", "/predictions"),
            ("GET", "/predictions/{prediction_id}"),
            ("GET", "/predictions/{object_id}/events"),
            ("GET", "/predictions/{object_id}/input.json"),
            ("GET", "/trainings/{object_id}/input.json"),
            ("GET", "/predictions/{prediction_id}/output"),
            ("GET", "/predictions/{prediction_id}/code/{language}"),
            ("GET", "/predictions/{prediction_id}/inputs/{name}"),
            ("POST", "/predictions/{prediction_id}/{action}"),
            ("GET", "/trainings"),
            ("GET", "/trainings/{training_id}"),
            ("GET", "/trainings/{object_id}/events"),
            ("POST", "/trainings/{training_id}/cancel"),
        ]
    },
}


def app_routes(live: LiveStack) -> set[tuple[str, str]]:
    """(method, pattern) of every route the API serves, from the app itself."""
    found = set()
    for route in iter_route_contexts(create_app(live.settings).routes):
        for method in route.methods or ():
            if method != "HEAD" and route.path_format:
                found.add((method, route.path_format))
    return found


def fill(template: str, owned: Owned) -> str:
    owner, name = owned.model.split("/")
    values = {
        "prediction_id": owned.prediction,
        "owner": owner,
        "name": name,
        "version_id": owned.version,
        "version": owned.version,
        "file_id": owned.file,
        "training_id": owned.prediction,
        "object_id": owned.prediction,  # a dashboard page's prediction or training
        "action": "share",
        "language": "curl",
        "token_id": "1",
        "build_id": owned.build,
        "expires": "4102444800",  # far ahead: only the forged signature is wrong
        "sig": "forged",
        "key": f"files/{owned.username}/{owned.file}",
        "slug": "built-in",  # a collection everyone sees; the owner's model is not in it
    }

    def value(match: re.Match[str]) -> str:
        key = match.group(1)
        assert key in values, f"no value for path parameter {{{key}}}: extend fill()"
        return values[key]

    return re.sub(r"\{(\w+)\}", value, template)


def fill_body(body: Any, owned: Owned) -> Any:
    if isinstance(body, dict):
        return {k: fill_body(v, owned) for k, v in body.items()}
    return fill(body, owned) if isinstance(body, str) else body


def test_every_route_is_in_the_privacy_matrix(live: LiveStack) -> None:
    routes = app_routes(live)
    assert ("GET", "/v1/predictions/{prediction_id}") in routes  # the walk finds routes
    missing = sorted(routes - MATRIX.keys())
    assert not missing, f"routes without a privacy decision in MATRIX: {missing}"


def test_privacy_matrix(live: LiveStack, owned: Owned) -> None:
    _, other_token = new_user(live, "other")
    # Plain clients: error bodies are checked here for privacy, not for the spec's shapes.
    callers = {
        "other account": (
            httpx.Client(
                base_url=live.url, headers={"Authorization": f"Bearer {other_token}"}, timeout=60
            ),
            "other",
        ),
        "no token": (httpx.Client(base_url=live.url, timeout=60), "anonymous"),
    }
    routes = app_routes(live)
    for (method, pattern), case in sorted(MATRIX.items()):
        if (method, pattern) not in routes:
            continue  # a route this tree does not have (yet)
        path = fill(pattern, owned)
        body = fill_body(case.body, owned) if case.body is not None else None
        for who, (client, attribute) in callers.items():
            response = client.request(method, path, json=body)
            check: Check = getattr(case, attribute)
            try:
                check(response, owned)
            except AssertionError as err:
                raise AssertionError(f"{method} {pattern} as {who}: {err}") from err
            for marker in owned.markers:
                assert marker not in response.text, f"{method} {pattern} leaks to {who}"
    for client, _ in callers.values():
        client.close()

    # Nothing the others tried changed the owner's things.
    with live.client(owned.token) as client:
        model = client.get(f"/v1/models/{owned.model}").json()
        assert model["visibility"] == "private" and model["description"] != "changed"
        assert model["latest_version"]["id"] == owned.version
        prediction = client.get(f"/v1/predictions/{owned.prediction}").json()
        assert prediction["status"] == "succeeded"
        assert prediction["input"] == {"text": owned.markers[0]}
        assert client.get(f"/v1/files/{owned.file}").status_code == 200
        assert owned.model not in client.get("/v1/deployments").text
    assert httpx.get(f"{live.url}/p/{owned.prediction}").status_code == 404
