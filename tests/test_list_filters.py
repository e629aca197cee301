"""Filters of ``GET /v1/predictions`` and ``GET /v1/trainings`` (beyond Replicate): status,
model, version, deployment, source and creation time, combined with each other and with cursor
pagination (the cursor URLs carry the filters)."""

from __future__ import annotations

from datetime import timedelta
from typing import Any
from urllib.parse import parse_qs, urlsplit

import httpx
import pytest
from sqlmodel import Session

from replicant.ids import new_id
from replicant.tables import Training
from replicant.timeutil import utcnow
from tests.conftest import LiveStack
from tests.deploykit import new_deployment


def ids(page: dict[str, Any]) -> list[str]:
    return [p["id"] for p in page["results"]]


def all_pages(client: httpx.Client, path: str, params: dict[str, str]) -> list[str]:
    """Every id of a filtered list, one row a page, following the ``next`` URLs."""
    page = client.get(path, params={**params, "page_size": "1"}).json()
    found = ids(page)
    while page["next"] is not None:
        query = parse_qs(urlsplit(page["next"]).query)
        # The cursor URL keeps every filter.
        assert {k: v[0] for k, v in query.items() if k in params} == params
        page = client.get(page["next"]).json()
        found += ids(page)
    return found


@pytest.fixture(scope="module")
def made(live: LiveStack) -> dict[str, Any]:
    """A fresh account with predictions of two models, a deployment, and mixed statuses."""
    token = live.new_account("lister")
    with live.client(token) as api:
        username = api.get("/v1/account").json()["username"]
        hello = api.get("/v1/models/replicate/hello-world").json()["latest_version"]["id"]
        _, deployment = new_deployment(api, version=hello)
        wait = {"Prefer": "wait"}
        before = utcnow()
        hellos = [
            api.post(
                "/v1/models/replicate/hello-world/predictions",
                json={"input": {"text": f"h{i}"}},
                headers=wait,
            ).json()["id"]
            for i in range(3)
        ]
        middle = utcnow()
        deployed = api.post(
            f"/v1/deployments/{username}/{deployment}/predictions",
            json={"input": {"text": "d"}},
            headers=wait,
        ).json()["id"]
        sleeping = api.post(
            "/v1/models/replicant/sleep/predictions", json={"input": {"seconds": 30}}
        ).json()["id"]
        live.wait_for(sleeping, lambda p: p["status"] == "processing", 60, token=token)
        assert api.post(f"/v1/predictions/{sleeping}/cancel").status_code == 200
        for pid in [*hellos, deployed]:
            assert live.wait_for(pid, token=token)["status"] == "succeeded"
        assert live.wait_for(sleeping, token=token)["status"] == "canceled"
    return {
        "token": token,
        "username": username,
        "hello_version": hello,
        "deployment": f"{username}/{deployment}",
        "hellos": hellos,
        "deployed": deployed,
        "sleeping": sleeping,
        "before": before,
        "middle": middle,
    }


def test_prediction_filters_combine_with_each_other_and_with_cursors(
    live: LiveStack, made: dict[str, Any]
) -> None:
    hellos, deployed, sleeping = made["hellos"], made["deployed"], made["sleeping"]
    newest_first = [sleeping, deployed, *reversed(hellos)]
    with live.client(made["token"]) as api:
        path = "/v1/predictions"
        assert all_pages(api, path, {}) == newest_first
        assert all_pages(api, path, {"status": "canceled"}) == [sleeping]
        assert all_pages(api, path, {"status": "succeeded"}) == newest_first[1:]
        assert all_pages(api, path, {"model": "replicate/hello-world"}) == newest_first[1:]
        assert all_pages(api, path, {"model": "replicant/sleep"}) == [sleeping]
        assert all_pages(api, path, {"version": made["hello_version"]}) == newest_first[1:]
        assert all_pages(api, path, {"deployment": made["deployment"]}) == [deployed]
        assert all_pages(api, path, {"source": "api"}) == newest_first
        assert all_pages(api, path, {"source": "web"}) == []
        middle = made["middle"].isoformat()
        assert all_pages(api, path, {"created_after": middle}) == [sleeping, deployed]
        assert all_pages(api, path, {"created_before": middle}) == list(reversed(hellos))
        combined = {
            "model": "replicate/hello-world",
            "status": "succeeded",
            "created_after": made["before"].isoformat(),
            "created_before": middle,
        }
        assert all_pages(api, path, combined) == list(reversed(hellos))
        assert all_pages(api, path, {**combined, "deployment": made["deployment"]}) == []
        assert all_pages(api, path, {"status": "aborted"}) == []
    # Filters never reach past the caller's own predictions.
    with live.client() as other:
        assert not set(all_pages(other, path, {"model": "replicant/sleep"})) & {sleeping}


def test_malformed_filters_are_refused_naming_the_parameter(
    live: LiveStack, made: dict[str, Any]
) -> None:
    with live.client(made["token"]) as api:
        for path, name, value in [
            ("/v1/predictions", "status", "finished"),
            ("/v1/predictions", "model", "hello-world"),
            ("/v1/predictions", "deployment", "a/b/c"),
            ("/v1/predictions", "source", "cli"),
            ("/v1/predictions", "created_after", "yesterday"),
            ("/v1/trainings", "status", "done"),
            ("/v1/trainings", "model", "/x"),
        ]:
            response = api.get(path, params={name: value})
            assert response.status_code == 422, (path, name, response.text)
            assert response.headers["content-type"].startswith("application/problem+json")
            assert [f["field"] for f in response.json()["invalid_fields"]] == [name]


def test_training_filters_combine_with_cursors(live: LiveStack) -> None:
    token = live.new_account("trainlister")
    with live.client(token) as api:
        username = api.get("/v1/account").json()["username"]
        start = utcnow() - timedelta(hours=1)
        # Rows as the training API writes them; listing is what is tested here.
        rows = [
            Training(
                id=new_id(),
                owner=username,
                model=model,
                version=version,
                destination=f"{username}/tuned",
                status=status,
                input={},
                created_at=start + timedelta(minutes=i),
            )
            for i, (model, version, status) in enumerate(
                [
                    ("replicant/ngram", "v1", "succeeded"),
                    ("replicant/ngram", "v2", "failed"),
                    ("other/model", "v3", "succeeded"),
                    ("replicant/ngram", "v1", "succeeded"),
                ]
            )
        ]
        with Session(live.engine) as session:
            session.add_all(rows)
            session.commit()
            row_ids = [r.id for r in rows]
        newest_first = list(reversed(row_ids))
        path = "/v1/trainings"
        assert all_pages(api, path, {}) == newest_first
        assert all_pages(api, path, {"model": "replicant/ngram"}) == [
            row_ids[3],
            row_ids[1],
            row_ids[0],
        ]
        assert all_pages(api, path, {"version": "v1", "status": "succeeded"}) == [
            row_ids[3],
            row_ids[0],
        ]
        assert all_pages(api, path, {"status": "failed"}) == [row_ids[1]]
        assert all_pages(api, path, {"source": "web"}) == []
        after = (start + timedelta(minutes=1, seconds=30)).isoformat()
        assert all_pages(api, path, {"created_after": after, "model": "replicant/ngram"}) == [
            row_ids[3]
        ]
        assert all_pages(api, path, {"created_before": after}) == [row_ids[1], row_ids[0]]
