"""Accounts, tokens, organizations and sharing, on the real stack (who may see what, route
by route: tests/test_privacy.py).

The CLI runs against the stack's database, configured by its environment as an operator
would run it (in the test's process: tests/accountkit.py `cli`); the API is the stack's own
process, so a revoked token is refused by another process than the one that revoked it
(within ``lookup_cache_ttl``: tests/test_concurrency.py checks two API processes).
"""

from __future__ import annotations

import httpx
import replicate

from tests.accountkit import HELLO, SLEEP, cli, cli_ok, new_user, private_model, unique
from tests.conftest import LiveStack
from tests.waiting import wait_until

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


def test_tokens_are_listed_without_secrets_and_revocation_is_honoured(live: LiveStack) -> None:
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
        # The API process, which may reuse the token's account for lookup_cache_ttl (1 s),
        # refuses it from then on.
        refused = wait_until(
            lambda: client.get("/v1/account"),
            lambda r: r.status_code != 200,
            what="the API to refuse the revoked token",
        )
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
            # Replicate's answer for a version that is not there or not yours.
            assert by_version.status_code == 422, version_ref
            assert by_version.json()["title"] == "Invalid version or not permitted"
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
