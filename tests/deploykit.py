"""Helpers of the tests that make deployments through the API."""

from __future__ import annotations

import os

import httpx

HELLO = "replicate/hello-world"


def new_deployment(
    api: httpx.Client,
    model: str = HELLO,
    version: str | None = None,
    *,
    name: str | None = None,
    min_instances: int = 0,
    max_instances: int = 1,
) -> tuple[str, str]:
    """A new cpu deployment of ``model`` (its latest version unless ``version``) made by the
    caller of ``api`` (a unique name unless ``name``): its owner and name."""
    if version is None:
        version = api.get(f"/v1/models/{model}").json()["latest_version"]["id"]
    created = api.post(
        "/v1/deployments",
        json={
            "name": name or f"dep-{os.urandom(3).hex()}",
            "model": model,
            "version": version,
            "hardware": "cpu",
            "min_instances": min_instances,
            "max_instances": max_instances,
        },
    )
    assert created.status_code == 200, created.text
    body = created.json()
    return body["owner"], body["name"]
