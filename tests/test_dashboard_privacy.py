"""The privacy matrix through the dashboard's pages: a second signed-in account (and a
signed-out visitor) gets nothing of the first's from any dashboard route, with the owner's
things in the path, and changes nothing of theirs."""

from __future__ import annotations

import os
import re
from typing import Any

import httpx

from tests.conftest import LiveStack
from tests.deploykit import new_deployment


def session_client(live: LiveStack, token: str) -> tuple[httpx.Client, str]:
    """A signed-in dashboard session outside the browser: the client (cookie) and its CSRF."""
    client = httpx.Client(base_url=live.url, timeout=90)
    csrf = re.search(r'name="csrf" value="([^"]+)"', client.get("/signin").text)
    assert csrf is not None
    signed = client.post("/signin", files={"csrf": (None, csrf[1]), "token": (None, token)})
    assert signed.status_code == 303, signed.text
    # Signing in starts a session with a CSRF token of its own.
    fresh = re.search(r'name="csrf" value="([^"]+)"', client.get("/account").text)
    assert fresh is not None and fresh[1] != csrf[1]
    return client, fresh[1]


def is_own_page(response: httpx.Response) -> None:
    assert response.status_code == 200, response.text


def is_not_found(response: httpx.Response) -> None:
    assert response.status_code == 404, response.text


# Every dashboard route, and what another signed-in account gets from it with the owner's
# things in the path. (Sign-in, sign-out and the static files hold nothing of anyone's.)
PAGE_MATRIX: dict[tuple[str, str], Any] = {
    ("GET", "/"): is_own_page,
    ("GET", "/account"): is_own_page,
    ("POST", "/account/tokens"): is_own_page,
    ("POST", "/account/tokens/{token_id}/revoke"): is_not_found,
    ("POST", "/account/webhook-secret"): is_own_page,
    ("GET", "/account/usage"): is_own_page,
    ("GET", "/account/usage.csv"): is_own_page,
    ("GET", "/deployments"): is_own_page,
    ("POST", "/deployments/{owner}/{deployment}"): is_not_found,
    ("GET", "/models/{owner}/{name}"): is_not_found,
    ("POST", "/models/{owner}/{name}/run"): is_not_found,
    ("GET", "/predictions"): is_own_page,
    ("GET", "/predictions/{prediction_id}"): is_not_found,
    ("GET", "/predictions/{object_id}/events"): is_not_found,
    ("GET", "/predictions/{object_id}/input.json"): is_not_found,
    ("GET", "/trainings/{object_id}/input.json"): is_not_found,
    ("GET", "/predictions/{prediction_id}/output"): is_not_found,
    ("GET", "/predictions/{prediction_id}/code/{language}"): is_not_found,
    ("GET", "/predictions/{prediction_id}/inputs/{name}"): is_not_found,
    ("POST", "/predictions/{prediction_id}/cancel"): is_not_found,
    ("POST", "/predictions/{prediction_id}/share"): is_not_found,
    ("POST", "/predictions/{prediction_id}/unshare"): is_not_found,
    ("GET", "/trainings"): is_own_page,
    ("GET", "/trainings/{training_id}"): is_not_found,
    ("GET", "/trainings/{object_id}/events"): is_not_found,
    ("POST", "/trainings/{training_id}/cancel"): is_not_found,
}
SESSION_ROUTES = {
    ("GET", "/signin"),
    ("POST", "/signin"),
    ("POST", "/signout"),
    ("GET", "/static/dashboard/{name}"),
    ("GET", "/favicon.ico"),
}


def dashboard_routes(live: LiveStack) -> set[tuple[str, str]]:
    from fastapi.routing import iter_route_contexts

    from api.app import create_app

    found = set()
    for route in iter_route_contexts(create_app(live.settings).routes):
        module = getattr(route.endpoint, "__module__", "") or ""
        if module.startswith("api.dashboard"):
            found.update((m, route.path_format) for m in route.methods or () if m != "HEAD")
    return found


def test_a_second_account_gets_nothing_of_the_firsts_through_any_page(live: LiveStack) -> None:
    from replicant.accounts import list_tokens

    owner_token = live.new_account("owner")
    marker = f"marker{os.urandom(4).hex()}"
    with live.client(owner_token) as api:
        owner = api.get("/v1/account").json()["username"]
        secret = api.get("/v1/webhooks/default/secret").json()["key"]
        model = f"private-{os.urandom(4).hex()}"
        created = api.post(
            "/v1/models", json={"owner": owner, "name": model, "visibility": "private"}
        )
        assert created.status_code == 201, created.text
        version = api.get("/v1/models/replicate/hello-world").json()["latest_version"]["id"]
        _, deployment = new_deployment(api, version=version)
        prediction = api.post(
            "/v1/predictions",
            json={"version": version, "input": {"text": marker}},
            headers={"Prefer": "wait"},
        ).json()
    values = {
        "owner": owner,
        "name": model,
        "deployment": deployment,
        "prediction_id": prediction["id"],
        "training_id": prediction["id"],  # the same id space
        "object_id": prediction["id"],
        "language": "curl",
        "token_id": str(list_tokens(live.engine, owner)[0].id),
    }
    routes = dashboard_routes(live)
    assert ("GET", "/predictions/{prediction_id}") in routes  # the walk finds routes
    decided = {
        (m, re.sub(r"/(cancel|share|unshare)$", "/{action}", p)) if "prediction_id" in p else (m, p)
        for m, p in PAGE_MATRIX
    }
    decided |= {(m, p.replace("{deployment}", "{name}")) for m, p in decided}
    unknown = routes - SESSION_ROUTES - decided
    assert not unknown, f"dashboard routes without a privacy decision: {sorted(unknown)}"

    other, csrf = session_client(live, live.new_account("other"))
    anonymous = httpx.Client(base_url=live.url, timeout=90)
    form = {
        "csrf": (None, csrf),
        "min_instances": (None, "1"),
        "max_instances": (None, "2"),
        "hardware": (None, "cpu"),
        "text": (None, "x"),
    }
    for (method, pattern), check in PAGE_MATRIX.items():
        path = re.sub(r"\{(\w+)\}", lambda m: values[m.group(1)], pattern)
        response = other.request(method, path, files=form if method == "POST" else None)
        try:
            check(response)
        except AssertionError as err:
            raise AssertionError(f"{method} {pattern} as another account: {err}") from err
        # A 404 may repeat the path it was asked for; pages of one's own name nothing else.
        names = (model, deployment) if check is is_own_page else ()
        for leak in (marker, secret, *names):
            assert leak not in response.text, f"{method} {pattern} leaks to another account"
        refused = anonymous.request(method, path, files=form if method == "POST" else None)
        assert refused.status_code in (303, 403), f"{method} {pattern}: {refused.status_code}"
        assert marker not in refused.text
    other.close()
    anonymous.close()

    # Nothing the other account tried changed the owner's things.
    with live.client(owner_token) as api:
        assert api.get(f"/v1/predictions/{prediction['id']}").json()["status"] == "succeeded"
        release = api.get(f"/v1/deployments/{owner}/{deployment}").json()["current_release"]
        assert release["number"] == 1
    assert httpx.get(f"{live.url}/p/{prediction['id']}").status_code == 404
