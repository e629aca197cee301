"""``GET /v1/models`` sorts by ``sort_by`` (``latest_version_created_at``, the default, or
``model_created_at``) in ``sort_direction`` (``desc``, the default, or ``asc``), across cursor
pages in both directions."""

from __future__ import annotations

import os
from datetime import timedelta
from pathlib import Path
from typing import Any

import httpx
from sqlmodel import Session

from replicant.tables import Model
from replicant.timeutil import utcnow
from tests.conftest import LiveStack
from tests.modelkit import COG_YAML, PID_MODEL, pushed, someone, write_model


def walk(api: httpx.Client, params: dict[str, str]) -> list[dict[str, Any]]:
    """Every model of the list, following ``next``; then back along ``previous``, which
    must give the same pages."""
    pages = [api.get("/v1/models", params=params).json()]
    while pages[-1]["next"] is not None:
        assert "sort_by=" in pages[-1]["next"]  # the cursor URLs keep the sort
        pages.append(api.get(pages[-1]["next"]).json())
    back = [pages[-1]]
    while back[-1]["previous"] is not None:
        back.append(api.get(back[-1]["previous"]).json())
    assert [p["results"] for p in reversed(back)] == [p["results"] for p in pages]
    return [m for page in pages for m in page["results"]]


def refs(models: list[dict[str, Any]], owner: str) -> list[str]:
    return [m["name"] for m in models if m["owner"] == owner]


def test_models_sort_by_latest_version_or_creation_both_ways(
    live: LiveStack, tmp_path: Path
) -> None:
    who = someone(live, "sorter")
    with who.client(live) as api:
        for name in ("a", "b", "c"):
            created = api.post(
                "/v1/models", json={"owner": who.username, "name": name, "visibility": "private"}
            )
            assert created.status_code == 201, created.text
    # b gets a version, then a: a's is the latest; c has none (its own creation counts).
    for name in ("b", "a"):
        src = write_model(
            tmp_path / name, {"cog.yaml": COG_YAML, "predict.py": PID_MODEL + f"# {name}\n"}
        )
        pushed(live, who, f"{who.username}/{name}", src)
    with who.client(live) as api:
        default = walk(api, {})
        assert refs(default, who.username) == ["a", "b", "c"]
        assert default == walk(
            api, {"sort_by": "latest_version_created_at", "sort_direction": "desc"}
        )
        latest_asc = walk(api, {"sort_direction": "asc"})
        assert refs(latest_asc, who.username) == ["c", "b", "a"]
        created_desc = walk(api, {"sort_by": "model_created_at"})
        assert refs(created_desc, who.username) == ["c", "b", "a"]
        created_asc = walk(api, {"sort_by": "model_created_at", "sort_direction": "asc"})
        assert refs(created_asc, who.username) == ["a", "b", "c"]
        bad = api.get("/v1/models", params={"sort_by": "popularity"})
        assert bad.status_code == 422
        assert [f["field"] for f in bad.json()["invalid_fields"]] == ["sort_by"]


def test_sorting_holds_across_many_pages(live: LiveStack) -> None:
    who = someone(live, "manymodels")
    start = utcnow() - timedelta(days=3)
    with Session(live.engine) as session:
        for i in range(230):
            session.add(
                Model(
                    owner=who.username,
                    name=f"m{i:03d}-{os.urandom(2).hex()}",
                    visibility="private",
                    created_at=start + timedelta(minutes=i),
                )
            )
        session.commit()
    with who.client(live) as api:
        ascending = refs(
            walk(api, {"sort_by": "model_created_at", "sort_direction": "asc"}), who.username
        )
        assert len(ascending) == 230 and [n[:4] for n in ascending] == [
            f"m{i:03d}" for i in range(230)
        ]
        descending = refs(walk(api, {"sort_by": "model_created_at"}), who.username)
        assert descending == list(reversed(ascending))
        # Without versions, the default sort falls back to the models' creation.
        assert refs(walk(api, {}), who.username) == descending
