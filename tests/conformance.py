"""Validate API responses against Replicate's published OpenAPI spec.

The spec's shapes live in ``tests/spec/replicate-openapi.json`` (``tests/refresh_spec.py``
refreshes them from Replicate's published document). Responses to operations the
spec describes, with a status code it lists, must validate; anything else (our own
extras such as ``/health``, or error codes the spec does not list) is left alone.
"""

from __future__ import annotations

import json
from functools import lru_cache
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx
from openapi_core import OpenAPI
from openapi_core.datatypes import RequestParameters
from openapi_core.templating.paths.exceptions import OperationNotFound, PathNotFound
from openapi_core.templating.responses.exceptions import ResponseNotFound

PROBLEM = "application/problem+json"
SPEC_PATH = Path(__file__).resolve().parent / "spec" / "replicate-openapi.json"


@lru_cache
def spec_dict() -> dict[str, Any]:
    data: dict[str, Any] = json.loads(SPEC_PATH.read_text())
    return data


def _problem_as_json(node: Any) -> Any:
    # openapi-core parses no problem+json bodies: describe them as the JSON they are.
    if isinstance(node, dict):
        return {
            ("application/json" if k == PROBLEM else k): _problem_as_json(v)
            for k, v in node.items()
        }
    if isinstance(node, list):
        return [_problem_as_json(v) for v in node]
    return node


@lru_cache
def openapi_for(base_url: str) -> OpenAPI:
    spec = _problem_as_json(spec_dict())
    spec["servers"] = [{"url": f"{base_url}/v1"}]
    return OpenAPI.from_dict(spec)


class _Request:
    def __init__(self, request: httpx.Request) -> None:
        url = urlsplit(str(request.url))
        self.host_url = f"{url.scheme}://{url.netloc}"
        self.path = url.path
        self.method = request.method.lower()
        self.body = request.content or None
        self.content_type = request.headers.get("content-type", "application/json")
        self.parameters = RequestParameters(
            query=dict(httpx.QueryParams(url.query)),
            header=dict(request.headers),
        )


class _Response:
    def __init__(self, response: httpx.Response) -> None:
        self.status_code = response.status_code
        content_type = response.headers.get("content-type", "").split(";")[0]
        self.content_type = "application/json" if content_type == PROBLEM else content_type
        self.headers = dict(response.headers)
        self.data = response.content


def check(response: httpx.Response, base_url: str) -> None:
    """Raise when ``response`` contradicts the spec's description of its operation."""
    if not response.content or "json" not in response.headers.get("content-type", ""):
        return
    openapi = openapi_for(base_url)
    try:
        openapi.validate_response(_Request(response.request), _Response(response))
    except (PathNotFound, OperationNotFound, ResponseNotFound):
        return
    except Exception as err:
        body = json.dumps(response.json())[:2000]
        raise AssertionError(
            f"{response.request.method} {response.request.url} -> {response.status_code} "
            f"does not match Replicate's OpenAPI spec: {err!r}\n{body}"
        ) from err


def conformance_hook(base_url: str) -> Any:
    """An httpx response hook that checks every response it sees."""

    def hook(response: httpx.Response) -> None:
        # Streams (SSE, downloads) are not JSON documents: never read them here.
        if "json" in response.headers.get("content-type", ""):
            response.read()
            check(response, base_url)

    return hook
