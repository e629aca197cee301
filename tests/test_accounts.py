"""Accounts, tokens, organizations, privacy and sharing, on the real stack.

The CLI runs as its own process against the stack's database, as an operator would run it;
the API is the stack's own process, so a revoked token is refused by another process than
the one that revoked it.
"""

from __future__ import annotations

import io
import os
import re
import subprocess
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
import replicate
from fastapi.routing import iter_route_contexts

from api.app import create_app
from replicant.archives import pack_model
from replicant.devstack import settings_env
from replicant.tables import Model
from replicant.versions import create_version
from tests.conftest import LiveStack

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"
HELLO = "replicate/hello-world"
SLEEP = "replicant/sleep"


def cli(live: LiveStack, *args: str) -> subprocess.CompletedProcess[str]:
    """``replicant ...`` as its own process, configured for the test stack."""
    command = [str(Path(sys.executable).parent / "replicant"), *args]
    return subprocess.run(
        command, env=settings_env(live.settings), capture_output=True, text=True, timeout=120
    )


def cli_ok(live: LiveStack, *args: str) -> str:
    done = cli(live, *args)
    assert done.returncode == 0, done.stdout + done.stderr
    return done.stdout


def unique(name: str) -> str:
    return f"{name}-{os.urandom(3).hex()}"


def new_user(live: LiveStack, name: str) -> tuple[str, str]:
    """(username, token) of a fresh user made with the CLI."""
    username = unique(name)
    token = cli_ok(live, "accounts", "create", username).strip()
    return username, token


def private_model(live: LiveStack, token: str, owner: str, example: str) -> tuple[str, str]:
    """A private model under ``owner`` created through the API, with one version.

    Returns (``owner/name``, version id).
    """
    name = unique("secret")
    with live.client(token) as client:
        created = client.post(
            "/v1/models", json={"owner": owner, "name": name, "visibility": "private"}
        )
        assert created.status_code == 201, created.text
    from sqlmodel import Session, select

    with Session(live.engine, expire_on_commit=False) as session:
        model = session.exec(select(Model).where(Model.owner == owner, Model.name == name)).one()
    version = create_version(live.settings, live.engine, model, EXAMPLES / example)
    return f"{owner}/{name}", version.id


# --- accounts and tokens ------------------------------------------------------------------


def test_account_endpoint_describes_the_tokens_user(live: LiveStack) -> None:
    username, token = new_user(live, "ada")
    with live.client(token) as client:
        response = client.get("/v1/account")
    assert response.status_code == 200, response.text
    assert response.json() == {
        "type": "user",
        "username": username,
        "name": username,
        "fairness_weight": 1.0,  # beyond Replicate: its share of busy hardware queues
    }
    # The official client reads the same document.
    account = replicate.Client(api_token=token, base_url=live.url).accounts.current()
    assert (account.type, account.username, account.github_url) == ("user", username, None)


def test_organization_token_describes_the_organization(live: LiveStack) -> None:
    org = unique("acme")
    assert f"created organization {org}" in cli_ok(live, "orgs", "create", org)
    token = cli_ok(live, "tokens", "create", org, "--name", "ci").strip()
    with live.client(token) as client:
        body = client.get("/v1/account").json()
    assert body["type"] == "organization"
    assert body["username"] == org
    # An existing name cannot become an organization.
    again = cli(live, "orgs", "create", org)
    assert again.returncode != 0
    assert "exists already" in again.stdout + again.stderr


def test_tokens_are_listed_without_secrets_and_revocation_is_immediate(live: LiveStack) -> None:
    username, first = new_user(live, "rev")
    second = cli_ok(live, "tokens", "create", username, "--name", "laptop").strip()
    assert second.startswith("r8_") and second != first
    listing = cli_ok(live, "tokens", "list", username)
    assert first not in listing and second not in listing
    rows = [line.split("\t") for line in listing.strip().splitlines()[1:]]
    assert [row[1] for row in rows] == ["default", "laptop"]
    assert all(row[3] == "-" for row in rows)
    laptop_id = rows[1][0]

    with live.client(second) as client:
        assert client.get("/v1/account").status_code == 200
        assert "revoked" in cli_ok(live, "tokens", "revoke", laptop_id)
        # The very next request with it is refused, by the API process.
        refused = client.get("/v1/account")
        assert refused.status_code == 401
        assert refused.headers["content-type"].startswith("application/problem+json")
        assert client.get("/v1/predictions").status_code == 401
    # The account's other token still works; the listing shows when it was revoked.
    with live.client(first) as client:
        assert client.get("/v1/account").json()["username"] == username
    rows = [line.split("\t") for line in cli_ok(live, "tokens", "list", username).splitlines()[1:]]
    assert rows[0][3] == "-" and rows[1][3] != "-"
    # Unknown ids and accounts are refused with a message, not a traceback.
    missing = cli(live, "tokens", "revoke", "999999999")
    assert missing.returncode == 1 and "no token" in missing.stdout
    unknown = cli(live, "tokens", "list", unique("nobody"))
    assert unknown.returncode == 1 and "no account" in unknown.stdout


def test_requests_without_a_valid_token_get_401(live: LiveStack) -> None:
    for headers in ({}, {"Authorization": "Bearer r8_not-a-token"}, {"Authorization": "Basic x"}):
        response = httpx.get(f"{live.url}/v1/account", headers=headers)
        assert response.status_code == 401, headers
        assert response.json()["status"] == 401
    # Replicate's older `Token` scheme is accepted too.
    _, token = new_user(live, "scheme")
    response = httpx.get(f"{live.url}/v1/account", headers={"Authorization": f"Token {token}"})
    assert response.status_code == 200


# --- organizations ------------------------------------------------------------------------


def test_organization_private_models_are_for_members_only(live: LiveStack) -> None:
    org = unique("team")
    cli_ok(live, "orgs", "create", org)
    member, member_token = new_user(live, "member")
    colleague, colleague_token = new_user(live, "colleague")
    outsider, outsider_token = new_user(live, "outsider")
    cli_ok(live, "orgs", "add-member", org, member)
    cli_ok(live, "orgs", "add-member", org, colleague)
    # Only users join organizations, and only organizations have members.
    assert cli(live, "orgs", "add-member", member, colleague).returncode == 1
    assert cli(live, "orgs", "add-member", org, org).returncode == 1

    # A member creates a private model under the organization.
    ref, version = private_model(live, member_token, org, "hello-world")
    with live.client(outsider_token) as client:
        refused = client.post("/v1/models", json={"owner": org, "name": unique("nope")})
        assert refused.status_code in (403, 404)

    # Every member sees and runs it.
    runs = {}
    for who, token in ((member, member_token), (colleague, colleague_token)):
        with live.client(token) as client:
            assert client.get(f"/v1/models/{ref}").json()["visibility"] == "private"
            versions = client.get(f"/v1/models/{ref}/versions").json()["results"]
            assert [v["id"] for v in versions] == [version]
            assert client.get(f"/v1/models/{ref}/versions/{version}").status_code == 200
            listed = client.get("/v1/models").json()["results"]
            assert ref in [f"{m['owner']}/{m['name']}" for m in listed]
            run = client.post(
                f"/v1/models/{ref}/predictions",
                json={"input": {"text": who}},
                headers={"Prefer": "wait"},
            )
            assert run.status_code == 201, run.text
            assert run.json()["output"] == f"hello {who}"
            runs[who] = run.json()["id"]
    # The official client of a member runs it by name too.
    official = replicate.Client(api_token=member_token, base_url=live.url)
    assert official.run(f"{ref}:{version}", input={"text": "sdk"}) == "hello sdk"

    # Nobody else learns it exists.
    with live.client(outsider_token) as client:
        for path in (f"/v1/models/{ref}", f"/v1/models/{ref}/versions"):
            assert client.get(path).status_code == 404
        assert client.get(f"/v1/models/{ref}/versions/{version}").status_code == 404
        by_model = client.post(f"/v1/models/{ref}/predictions", json={"input": {"text": "x"}})
        assert by_model.status_code == 404
        for version_ref in (version, f"{ref}:{version}", ref):
            by_version = client.post(
                "/v1/predictions", json={"version": version_ref, "input": {"text": "x"}}
            )
            assert by_version.status_code == 404, version_ref
        listed = client.get("/v1/models").json()["results"]
        assert ref not in [f"{m['owner']}/{m['name']}" for m in listed]
        assert outsider not in ref

    # Predictions stay their creator's, even between members of one organization.
    with live.client(colleague_token) as client:
        assert client.get(f"/v1/predictions/{runs[member]}").status_code == 404
        mine = [p["id"] for p in client.get("/v1/predictions").json()["results"]]
        assert runs[colleague] in mine and runs[member] not in mine


# --- sharing ------------------------------------------------------------------------------


def test_share_and_unshare_a_prediction(live: LiveStack) -> None:
    _, owner_token = new_user(live, "sharer")
    _, other_token = new_user(live, "viewer")
    secret_hook = "https://hooks.example.invalid/replicate?token=hook-secret-42"
    with live.client(owner_token) as owner:
        created = owner.post(
            f"/v1/models/{SLEEP}/predictions",
            json={
                "input": {"seconds": 1.1},
                "webhook": secret_hook,
                "webhook_events_filter": ["completed"],
            },
            headers={"Prefer": "wait"},
        )
        assert created.status_code == 201, created.text
        prediction = created.json()
        assert prediction["status"] == "succeeded" and "slept 1s" in prediction["logs"]
        web = prediction["urls"]["web"]
        assert web == f"{live.url}/p/{prediction['id']}"

        # Private until shared: nobody else can read the page, with a token or without.
        assert httpx.get(web).status_code == 404
        with live.client(other_token) as other:
            assert other.get(web).status_code == 404
            # Only the owner shares it; to anyone else it does not exist.
            for action in ("share", "unshare"):
                refused = other.post(f"/v1/predictions/{prediction['id']}/{action}")
                assert refused.status_code == 404
        assert httpx.post(f"{live.url}/v1/predictions/{prediction['id']}/share").status_code == 401
        assert httpx.get(web).status_code == 404

        shared = owner.post(f"/v1/predictions/{prediction['id']}/share")
        assert shared.status_code == 200
        assert shared.json()["id"] == prediction["id"]

    page = httpx.get(web)
    assert page.status_code == 200
    assert page.headers["cache-control"] == "no-store"
    public = page.json()
    assert public["id"] == prediction["id"]
    assert public["input"] == {"seconds": 1.1}
    assert public["output"] == prediction["output"]
    assert public["status"] == "succeeded"
    assert public["model"] == SLEEP
    for stamp in ("created_at", "started_at", "completed_at"):
        assert public[stamp] == prediction[stamp]
    # Never the webhook (it can carry a secret) nor the logs.
    assert "webhook" not in public and "logs" not in public
    assert "hook-secret-42" not in page.text and "slept 1s" not in page.text
    # Another account sees the same public view, not the owner's full prediction.
    with live.client(other_token) as other:
        assert other.get(web).json() == public
        assert other.get(f"/v1/predictions/{prediction['id']}").status_code == 404

    html = httpx.get(web, headers={"Accept": "text/html,application/xhtml+xml,*/*;q=0.8"})
    assert html.status_code == 200
    assert html.headers["content-type"].startswith("text/html")
    assert prediction["output"] in html.text and "succeeded" in html.text
    assert "hook-secret-42" not in html.text and "slept 1s" not in html.text

    with live.client(owner_token) as owner:
        assert owner.post(f"/v1/predictions/{prediction['id']}/unshare").status_code == 200
        # The owner still reads its prediction in full through the API.
        assert owner.get(f"/v1/predictions/{prediction['id']}").json()["logs"]
    assert httpx.get(web).status_code == 404
    assert httpx.get(web, headers={"Accept": "text/html"}).status_code == 404


def test_shared_page_escapes_what_the_input_holds(live: LiveStack) -> None:
    _, token = new_user(live, "escaper")
    with live.client(token) as client:
        body = client.post(
            f"/v1/models/{HELLO}/predictions",
            json={"input": {"text": "<script>alert(1)</script>"}},
            headers={"Prefer": "wait"},
        ).json()
        client.post(f"/v1/predictions/{body['id']}/share")
    page = httpx.get(body["urls"]["web"], headers={"Accept": "text/html"})
    assert "<script>" not in page.text
    assert "&lt;script&gt;" in page.text
    assert "default-src 'none'" in page.headers["content-security-policy"]


def test_another_account_cannot_cancel_a_running_prediction(live: LiveStack) -> None:
    _, owner_token = new_user(live, "runner")
    _, other_token = new_user(live, "canceller")
    with live.client(owner_token) as owner:
        running = owner.post(f"/v1/models/{SLEEP}/predictions", json={"input": {"seconds": 2}})
        assert running.status_code == 201
    prediction_id = running.json()["id"]
    with live.client(other_token) as other:
        assert other.post(f"/v1/predictions/{prediction_id}/cancel").status_code == 404
    final = live.wait_for(prediction_id, token=owner_token)
    assert final["status"] == "succeeded"


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
    signed-in accounts: tests/test_dashboard.py)."""
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
    ("GET", "/v1/hardware"): Case(OPEN, UNAUTHENTICATED),
    ("GET", "/v1/webhooks/default/secret"): Case(answered_own, UNAUTHENTICATED),
    # predictions
    ("GET", "/v1/predictions"): Case(answered_own, UNAUTHENTICATED),
    ("POST", "/v1/predictions"): Case(
        NOT_FOUND, UNAUTHENTICATED, body={"version": "{version}", "input": {"text": "x"}}
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
    **{
        route: Case(to_sign_in, to_sign_in)
        for route in [
            ("GET", "/"),
            ("GET", "/account"),
            ("POST", "/account/tokens"),
            ("POST", "/account/tokens/{token_id}/revoke"),
            ("POST", "/account/webhook-secret"),
            ("GET", "/deployments"),
            ("POST", "/deployments/{owner}/{name}"),
            ("GET", "/models/{owner}/{name}"),
            ("POST", "/models/{owner}/{name}/run"),
            ("GET", "/predictions"),
            ("GET", "/predictions/{prediction_id}"),
            ("GET", "/predictions/{object_id}/events"),
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
