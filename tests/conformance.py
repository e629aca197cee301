"""Validate API responses against Replicate's published OpenAPI spec.

The spec's shapes live in ``tests/spec/replicate-openapi.json`` (``tests/refresh_spec.py``
refreshes them from Replicate's published document). Every response is held to it: an
operation the spec describes, answered with a status it lists, must validate; any other answer
fails unless it is one of Replicant's documented extensions below (``EXTENSION_ROUTES``,
``EXTENSION_STATUSES``, and error statuses answered with a Replicant problem body).
``SEEN`` records which (operation, status) pairs were checked, so tests can prove coverage.
"""

from __future__ import annotations

import json
import re
from functools import lru_cache
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx
import jsonschema
from openapi_core import OpenAPI
from openapi_core.datatypes import RequestParameters

PROBLEM = "application/problem+json"
SPEC_PATH = Path(__file__).resolve().parent / "spec" / "replicate-openapi.json"
API_PREFIX = "/v1"

# Replicant's routes that Replicate's spec does not describe (docs/conformance.md), each with
# why it exists. Their success bodies are Replicant's own; their errors are problem bodies.
EXTENSION_ROUTES: dict[tuple[str, str], str] = {
    ("GET", "/health"): "liveness and readiness for operators and load balancers",
    ("GET", "/metrics"): "Prometheus scrape",
    ("GET", "/files-signed/{expires}/{sig}/{key}"): "the signed, expiring URLs of stored files",
    ("GET", "/p/{prediction_id}"): "a shared prediction's public page",
    ("GET", "/t/{training_id}"): "a training's public page",
    ("POST", "/v1/predictions/{prediction_id}/share"): "make a prediction public",
    ("POST", "/v1/predictions/{prediction_id}/unshare"): "make it private again",
    ("GET", "/v1/predictions/{prediction_id}/stream"): "the SSE stream a prediction's urls name",
    ("GET", "/v1/trainings/{training_id}/stream"): "the SSE stream a training's urls name",
    ("DELETE", "/v1/predictions/{prediction_id}"): "remove a prediction's data now",
    ("QUERY", "/v1/models"): "models.search of both official clients",
    ("POST", "/v1/models/{model_owner}/{model_name}/versions"): "push a version (cog push)",
    ("GET", "/v1/builds/{build_id}"): "follow a push's build",
    ("GET", "/v1/account/usage"): "what an account's runs cost, by model and hardware",
    ("POST", "/v1/models/{model_owner}/{model_name}/examples"): "mark a prediction an example",
    ("DELETE", "/v1/models/{model_owner}/{model_name}/examples/{prediction_id}"): "unmark one",
}

# Extension routes whose success bodies are shaped like a spec operation's answer.
EXTENSION_SHAPES: dict[tuple[str, str], tuple[str, str, int]] = {
    ("DELETE", "/v1/predictions/{prediction_id}"): ("GET", "/predictions/{prediction_id}", 200),
    ("QUERY", "/v1/models"): ("GET", "/models", 200),
    ("POST", "/v1/predictions/{prediction_id}/share"): ("GET", "/predictions/{prediction_id}", 200),
    ("POST", "/v1/predictions/{prediction_id}/unshare"): (
        "GET",
        "/predictions/{prediction_id}",
        200,
    ),
    ("POST", "/v1/models/{model_owner}/{model_name}/examples"): (
        "GET",
        "/predictions/{prediction_id}",
        200,
    ),
}

# Fields Replicant's answers carry beyond the spec's, by the response model they belong to
# (the component of Replicant's /openapi.json; a page's are its results'). Every field a
# response model adds must be here, and nothing else (tests/test_openapi_shapes.py).
EXTENSION_FIELDS: dict[str, set[str]] = {
    "Account": {"fairness_weight"},  # its share of busy hardware queues (docs/fairness.md)
    # Replicate's own answers carry these (its docs show them); its spec leaves them out.
    # And the SKU that runs it, why it has not started (docs/usage.md), its trace (docs/tracing.md).
    "Prediction": {"webhook", "webhook_events_filter", "hardware", "queue", "trace_id"},
    "Training": {
        "destination",
        "webhook",
        "webhook_events_filter",
        "hardware",
        "queue",
        "trace_id",
    },
    # What the run cost (docs/usage.md).
    "Metrics": {"cost", "predict_time"},
    "File": {"name", "etag"},
    # Why its model processes were stopped, for the model's owner only (docs/api.md).
    "Version": {"boot_logs"},
    # Its predictions' priority and placement (docs/fairness.md); what runs now.
    "Deployment": {
        "priority",
        "shared_hardware",
        "instances",
        "instances_booting",
        "instances_draining",
        "queue_depth",
        "running",
    },
}

# Success statuses the spec does not list for an operation that Replicant answers with.
EXTENSION_STATUSES: dict[tuple[str, int], str] = {}

# Answers whose media type differs from the spec's on purpose.
EXTENSION_MEDIA: dict[tuple[str, int], str] = {
    ("GET /files/{file_id}/download", 200): "a file keeps its own content type for browsers",
}

# Error statuses Replicant answers on any route, always as a problem body (PROBLEM_SCHEMA).
ERROR_STATUSES = {400, 401, 402, 403, 404, 405, 409, 413, 415, 422, 429, 500, 503}

# Replicate's error body is {"detail": ...}; Replicant's adds title and status (RFC 9457) and
# names the invalid fields of a 422.
PROBLEM_SCHEMA: dict[str, Any] = {
    "type": "object",
    "required": ["title", "detail", "status"],
    "properties": {
        "title": {"type": "string", "minLength": 1},
        "detail": {"type": "string", "minLength": 1},
        "status": {"type": "integer"},
        "invalid_fields": {
            "type": "array",
            "minItems": 1,
            "items": {
                "type": "object",
                "required": ["field", "message"],
                "properties": {"field": {"type": "string"}, "message": {"type": "string"}},
            },
        },
    },
}

# (operation, status) pairs checked so far, e.g. ("GET /predictions/{prediction_id}", 404).
SEEN: set[tuple[str, int]] = set()


@lru_cache
def spec_dict() -> dict[str, Any]:
    data: dict[str, Any] = json.loads(SPEC_PATH.read_text())
    return data


def spec_operations() -> dict[str, list[int]]:
    """Each operation of the spec ("GET /predictions") with the statuses it documents."""
    return {
        f"{method.upper()} {path}": sorted(int(code) for code in op.get("responses", {}))
        for path, ops in spec_dict()["paths"].items()
        for method, op in ops.items()
        if isinstance(op, dict) and "responses" in op
    }


def _template_regex(template: str) -> re.Pattern[str]:
    # The last parameter of the signed-file route spans slashes (an object key).
    pattern = re.sub(r"\\\{key\\\}$", r"[^?]+", re.escape(template))
    return re.compile("^" + re.sub(r"\\\{[^}]+\\\}", r"[^/]+", pattern) + "$")


@lru_cache
def _templates() -> list[tuple[str, re.Pattern[str]]]:
    paths = [API_PREFIX + p for p in spec_dict()["paths"]]
    paths += sorted({path for _, path in EXTENSION_ROUTES})
    return [(p, _template_regex(p)) for p in paths]


def route_of(method: str, path: str) -> tuple[str, bool] | None:
    """``(template, in_spec)`` of a request, or None when neither the spec nor
    EXTENSION_ROUTES describes it."""
    for template, regex in _templates():
        if not regex.match(path):
            continue
        if (method, template) in EXTENSION_ROUTES:
            return template, False
        op = spec_dict()["paths"].get(template.removeprefix(API_PREFIX), {})
        if method.lower() in op:
            return template, True
    return None


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
    spec["servers"] = [{"url": f"{base_url}{API_PREFIX}"}]
    return OpenAPI.from_dict(spec)


class _Request:
    def __init__(self, request: httpx.Request) -> None:
        url = urlsplit(str(request.url))
        self.host_url = f"{url.scheme}://{url.netloc}"
        self.path = url.path
        self.method = request.method.lower()
        try:
            self.body = request.content or None
        except httpx.RequestNotRead:
            self.body = None  # a streamed upload: only the response is validated
        self.content_type = request.headers.get("content-type", "application/json")
        self.parameters = RequestParameters(
            query=dict(httpx.QueryParams(url.query)),
            header=dict(request.headers),
        )


class _Response:
    def __init__(self, response: httpx.Response) -> None:
        self.status_code = response.status_code
        self.content_type = _media_type(response)
        if self.content_type == PROBLEM:
            self.content_type = "application/json"
        self.headers = dict(response.headers)
        self.data = response.content


def _media_type(response: httpx.Response) -> str:
    return response.headers.get("content-type", "").split(";")[0].strip()


def _as_json_media(media: str) -> str:
    return "application/json" if media == PROBLEM else media


def _is_json(response: httpx.Response) -> bool:
    media = _media_type(response)
    return media == "application/json" or media.endswith("+json")


def _fail(response: httpx.Response, why: str) -> AssertionError:
    try:
        body = response.text[:2000]
    except httpx.ResponseNotRead:
        body = "(a stream, unread)"
    return AssertionError(
        f"{response.request.method} {response.request.url} -> {response.status_code} "
        f"does not match Replicate's OpenAPI spec: {why}\n{body}"
    )


def _check_problem(response: httpx.Response) -> None:
    if _media_type(response) != PROBLEM:
        raise _fail(response, f"an error must be {PROBLEM}, not {_media_type(response)!r}")
    body = response.json()
    try:
        jsonschema.validate(body, PROBLEM_SCHEMA)
    except jsonschema.ValidationError as err:
        raise _fail(response, f"not a problem body: {err.message}") from err
    if body["status"] != response.status_code:
        raise _fail(response, f"problem status {body['status']} differs from the answer's")
    if response.status_code == 422 and not body.get("invalid_fields"):
        raise _fail(response, "a 422 must name its invalid fields")
    if response.status_code == 429 and "retry-after" not in response.headers:
        raise _fail(response, "a 429 must say Retry-After")


def _check_documented(response: httpx.Response, template: str, status: int) -> None:
    op = spec_dict()["paths"][template.removeprefix(API_PREFIX)][response.request.method.lower()]
    content: dict[str, Any] = op["responses"][str(status)].get("content") or {}
    media = _media_type(response)
    if not content:
        # No body described (204, 202, readme 404): only an empty one or a problem body fits.
        if response.content and status >= 400:
            _check_problem(response)
        elif response.content:
            raise _fail(response, "the spec describes no body for this answer")
        return
    if status >= 400:
        _check_problem(response)
    operation = f"{response.request.method} {template.removeprefix(API_PREFIX)}"
    described = {_as_json_media(m) for m in content}
    if _as_json_media(media) not in described and (operation, status) not in EXTENSION_MEDIA:
        raise _fail(response, f"media type {media!r} is not one of {sorted(content)}")
    if not _is_json(response):
        return
    try:
        base = f"{response.request.url.scheme}://{response.request.url.netloc.decode()}"
        openapi_for(base).validate_response(_Request(response.request), _Response(response))
    except Exception as err:
        raise _fail(response, repr(err)) from err


def _check_shaped_like(response: httpx.Response, method: str, template: str, status: int) -> None:
    """Validate an extension's body as the answer of the spec operation it is shaped like."""
    path = API_PREFIX + re.sub(r"\{[^}]+\}", "x", template)
    twin = httpx.Request(method, response.request.url.copy_with(path=path, query=None))
    shaped = httpx.Response(
        status, headers=response.headers, content=response.content, request=twin
    )
    _check_documented(shaped, API_PREFIX + template, status)


def check(response: httpx.Response, base_url: str | None = None) -> None:
    """Raise when ``response`` is an answer Replicate's spec does not describe and that is
    not one of Replicant's documented extensions; record the operation and status checked.
    Bodies are read only when JSON (streams and downloads are left unread)."""
    del base_url  # the spec's server is the request's own origin
    request = response.request
    status = response.status_code
    if _is_json(response) or not _media_type(response):
        response.read()  # JSON documents and untyped (empty) bodies; never streams
    route = route_of(request.method, request.url.path)
    if route is None and not request.url.path.startswith(API_PREFIX) and not _is_json(response):
        return  # the web dashboard's pages, redirects and assets (docs/dashboard.md): no API
    if route is None and status in (404, 405):
        # Any other path or method is refused with a problem body: that is described too.
        _check_problem(response)
        return
    if route is None:
        raise _fail(response, "neither the spec nor Replicant's extensions describe this route")
    template, in_spec = route
    if not in_spec:
        if status >= 400:
            _check_problem(response)
        elif (request.method, template) in EXTENSION_SHAPES and _is_json(response):
            _check_shaped_like(response, *EXTENSION_SHAPES[request.method, template])
        SEEN.add((f"{request.method} {template}", status))
        return
    operation = f"{request.method} {template.removeprefix(API_PREFIX)}"
    documented = spec_operations()[operation]
    if status in documented:
        _check_documented(response, template, status)
    elif status >= 400 and status in ERROR_STATUSES:
        _check_problem(response)
    elif (operation, status) not in EXTENSION_STATUSES:
        raise _fail(response, f"{operation} documents only {documented}")
    SEEN.add((operation, status))


def conformance_hook(base_url: str | None = None) -> Any:
    """An httpx response hook that checks every response it sees."""

    def hook(response: httpx.Response) -> None:
        check(response)

    return hook


def async_conformance_hook() -> Any:
    """The same check for an httpx.AsyncClient (its hooks must be coroutines)."""

    async def hook(response: httpx.Response) -> None:
        if _is_json(response) or not _media_type(response):
            await response.aread()
        check(response)

    return hook
