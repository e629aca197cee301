"""Collections (``/v1/collections``, managed with ``replicant collections``; the built-in
models come in the seeded ``built-in`` collection) and search (``GET /v1/search`` and the
official client's ``models.search``, which sends ``QUERY /v1/models``)."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import httpx
import replicate
from replicate.exceptions import ReplicateError

from tests.accountkit import cli
from tests.conftest import LiveStack
from tests.modelkit import Who, someone

BUILTINS = {"replicate/hello-world", "replicant/sleep", "replicant/thumbnail", "replicant/ngram"}


def collections(live: LiveStack, *args: str) -> subprocess.CompletedProcess[str]:
    return cli(live, "collections", *args)


def private_model(live: LiveStack, who: Who, name: str, description: str) -> str:
    with who.client(live) as api:
        created = api.post(
            "/v1/models",
            json={
                "owner": who.username,
                "name": name,
                "visibility": "private",
                "description": description,
            },
        )
        assert created.status_code == 201, created.text
    return f"{who.username}/{name}"


def test_the_builtin_models_come_in_a_seeded_collection(live: LiveStack) -> None:
    client = replicate.Client(api_token=live.token, base_url=live.url)
    builtin = client.collections.get("built-in")
    assert builtin.name == "Built-in models"
    assert {f"{m.owner}/{m.name}" for m in builtin.models or []} >= BUILTINS
    hello = next(m for m in builtin.models or [] if m.name == "hello-world")
    assert hello.latest_version is not None
    assert "built-in" in [c.slug for c in client.collections.list().results]
    try:
        client.collections.get("no-such-collection")
    except ReplicateError as err:
        assert err.status == 404
    else:
        raise AssertionError("an unknown collection was found")


def test_an_operator_manages_collections_and_callers_see_only_visible_models(
    live: LiveStack,
) -> None:
    slug = f"picks-{os.urandom(3).hex()}"
    owner = someone(live, "curator")
    secret = private_model(live, owner, "secret", "kept private")
    made = collections(live, "create", slug, "--name", "Picks", "--description", "Models we like")
    assert made.returncode == 0, made.stderr
    added = collections(live, "add", slug, "replicate/hello-world", secret)
    assert added.returncode == 0, added.stderr
    refused = collections(live, "add", slug, "nobody/nothing")
    assert refused.returncode == 1 and "no model nobody/nothing" in refused.stdout
    bad_slug = collections(live, "create", "Not A Slug", "--name", "x")
    assert bad_slug.returncode == 1
    with owner.client(live) as api:
        mine = api.get(f"/v1/collections/{slug}").json()
    assert mine["name"] == "Picks" and mine["description"] == "Models we like"
    assert [f"{m['owner']}/{m['name']}" for m in mine["models"]] == [
        "replicate/hello-world",
        secret,
    ]
    stranger = replicate.Client(api_token=someone(live, "stranger").token, base_url=live.url)
    theirs = stranger.collections.get(slug)
    assert [f"{m.owner}/{m.name}" for m in theirs.models or []] == ["replicate/hello-world"]
    removed = collections(live, "remove", slug, "replicate/hello-world")
    assert removed.returncode == 0, removed.stderr
    assert stranger.collections.get(slug).models == []
    assert collections(live, "delete", slug).returncode == 0
    with live.client() as api:
        assert api.get(f"/v1/collections/{slug}").status_code == 404


def test_search_finds_models_and_collections_the_caller_may_see(live: LiveStack) -> None:
    owner = someone(live, "searcher")
    word = f"zebra{os.urandom(2).hex()}"
    secret = private_model(live, owner, "striped", f"A {word} detector")
    with owner.client(live) as api:
        found = api.get("/v1/search", params={"query": f"{word} detector"}).json()
        assert found["query"] == f"{word} detector"
        assert [f"{h['model']['owner']}/{h['model']['name']}" for h in found["models"]] == [secret]
        assert found["models"][0]["metadata"]["score"] > 0
        assert found["pages"] == []
        # Other tests of the session may push public models that say hello too: hello-world is
        # among the best hits, and the hits come best first.
        hello = api.get("/v1/search", params={"query": "hello", "limit": 5}).json()
        refs = [f"{h['model']['owner']}/{h['model']['name']}" for h in hello["models"]]
        assert "replicate/hello-world" in refs and len(refs) <= 5
        scores = [h["metadata"]["score"] for h in hello["models"]]
        assert scores == sorted(scores, reverse=True)
        collections = api.get("/v1/search", params={"query": "built-in"}).json()["collections"]
        assert [c["slug"] for c in collections] == ["built-in"]
        assert set(collections[0]["models"]) >= BUILTINS
        missing = api.get("/v1/search")
        assert missing.status_code == 400
        assert missing.headers["content-type"].startswith("application/problem+json")
        assert api.get("/v1/search", params={"query": "x", "limit": 51}).status_code == 422
    with live.client() as api:
        assert api.get("/v1/search", params={"query": word}).json()["models"] == []


def test_the_official_clients_models_search_uses_query(live: LiveStack) -> None:
    owner = someone(live, "querier")
    word = f"okapi{os.urandom(2).hex()}"
    secret = private_model(live, owner, "forest", f"Finds the {word}")
    client = owner.official(live)
    page = client.models.search(word)
    assert [f"{m.owner}/{m.name}" for m in page.results] == [secret]
    assert "replicate/hello-world" in [
        f"{m.owner}/{m.name}" for m in client.models.search("hello world").results
    ]
    other = replicate.Client(api_token=live.token, base_url=live.url)
    assert other.models.search(word).results == []
    raw = httpx.request(
        "QUERY",
        f"{live.url}/v1/models",
        content=b"",
        headers={"Authorization": f"Bearer {owner.token}", "Content-Type": "text/plain"},
    )
    assert raw.status_code == 400


def test_the_npm_client_searches_and_reads_collections(live: LiveStack, node_client: Path) -> None:
    owner = someone(live, "jsquerier")
    word = f"quokka{os.urandom(2).hex()}"
    secret = private_model(live, owner, "marsupial", f"Spots a {word} in the wild")
    done = subprocess.run(
        ["node", str(node_client.parent / "search.mjs"), live.url, owner.token, f"{word} wild"],
        cwd=node_client.parent,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    seen = json.loads(done.stdout)
    assert seen["found"] == [secret]
    assert "built-in" in seen["slugs"]
    assert set(seen["builtin"]) >= BUILTINS
