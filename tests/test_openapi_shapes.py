"""Replicant's own ``/openapi.json`` documents the shapes Replicate's spec says it returns.

For every operation both have, each property of the spec's success response schema must be
in ours, with a type the spec allows (recursively: nested objects, array items), and each
property the spec requires must be required in ours (always present). The spec's shapes come
from ``tests/spec/replicate-openapi.json``; Replicant's from the app it builds.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from api.app import create_app
from replicant.settings import Settings
from tests.conformance import EXTENSION_FIELDS

SPEC: dict[str, Any] = json.loads(
    (Path(__file__).resolve().parent / "spec" / "replicate-openapi.json").read_text()
)
METHODS = ("get", "post", "put", "patch", "delete", "query")

# Properties of Replicate's responses that Replicant does not return, by operation. Each must
# still be missing from our schema: an entry that goes stale fails the test too.
NOT_PROVIDED: dict[str, set[str]] = {
    "account.get": {"avatar_url"},
    "deployments.list": {"results[].current_release.created_by.avatar_url"},
    "deployments.create": {"current_release.created_by.avatar_url"},
    "deployments.get": {"current_release.created_by.avatar_url"},
    "deployments.update": {"current_release.created_by.avatar_url"},
}


@pytest.fixture(scope="module")
def ours(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """Replicant's ``/openapi.json``, as an app built on SQLite serves it."""
    app = create_app(Settings(data_dir=tmp_path_factory.mktemp("data")))
    with TestClient(app) as client:
        response = client.get("/openapi.json")
    assert response.status_code == 200
    doc: dict[str, Any] = response.json()
    return doc


def _key(method: str, path: str) -> tuple[str, str]:
    """An operation by method and path, parameter names left out (``/v1`` is the server's)."""
    parts = ["{}" if p.startswith("{") else p for p in path.strip("/").split("/")]
    return method, "/" + "/".join(parts)


def spec_operations() -> dict[tuple[str, str], tuple[str, dict[str, Any]]]:
    """The spec's operations: key -> (operationId, operation)."""
    return {
        _key(method, "/v1" + path): (op["operationId"], op)
        for path, ops in SPEC["paths"].items()
        for method, op in ops.items()
        if method in METHODS
    }


def our_operations(doc: dict[str, Any]) -> dict[tuple[str, str], dict[str, Any]]:
    return {
        _key(method, path): op
        for path, ops in doc["paths"].items()
        for method, op in ops.items()
        if method in METHODS
    }


def resolve(schema: dict[str, Any], doc: dict[str, Any]) -> dict[str, Any]:
    while "$ref" in schema:
        node: Any = doc
        for part in schema["$ref"].removeprefix("#/").split("/"):
            node = node[part]
        schema = node
    return schema


def _members(schema: dict[str, Any], doc: dict[str, Any]) -> list[dict[str, Any]]:
    """The alternatives of a schema (``anyOf``/``oneOf``/``allOf``), resolved; itself if none."""
    schema = resolve(schema, doc)
    for combinator in ("anyOf", "oneOf", "allOf"):
        if combinator in schema:
            return [m for sub in schema[combinator] for m in _members(sub, doc)]
    return [schema]


def types(schema: dict[str, Any], doc: dict[str, Any]) -> set[str] | None:
    """The JSON types a schema admits (3.0 ``nullable`` and 3.1 ``null`` alike); None: any."""
    out: set[str] = set()
    for member in _members(schema, doc):
        declared = member.get("type")
        if declared is None and "properties" in member:
            declared = "object"
        if declared is None and "enum" in member:
            declared = sorted({type(v).__name__.replace("str", "string") for v in member["enum"]})
        if declared is None:
            return None
        out.update(declared if isinstance(declared, list) else [declared])
        if member.get("nullable"):
            out.add("null")
    return out


def compatible(ours: set[str], spec: set[str]) -> bool:
    """Every type we may send is one the spec allows (an integer is a number)."""
    allowed = spec | ({"integer"} if "number" in spec else set())
    return ours <= allowed


def _objects(schema: dict[str, Any], doc: dict[str, Any]) -> list[dict[str, Any]]:
    return [m for m in _members(schema, doc) if "properties" in m or m.get("type") == "object"]


def _items(schema: dict[str, Any], doc: dict[str, Any]) -> dict[str, Any] | None:
    for member in _members(schema, doc):
        if "items" in member:
            items: dict[str, Any] = member["items"]
            return items
    return None


def compare(
    spec: dict[str, Any],
    ours: dict[str, Any],
    doc: dict[str, Any],
    where: str,
    problems: list[str],
    missing: set[str],
) -> None:
    """Record where ``ours`` contradicts ``spec``: wrong types, required fields not required,
    and (in ``missing``) the spec's properties ours lacks."""
    spec_types, our_types = types(spec, SPEC), types(ours, doc)
    if spec_types is None:
        return
    label = where or "(body)"
    if our_types is None:
        problems.append(f"{label}: undocumented; the spec says {sorted(spec_types)}")
        return
    if not compatible(our_types, spec_types):
        problems.append(f"{label}: ours {sorted(our_types)}, the spec {sorted(spec_types)}")
    spec_objects, our_objects = _objects(spec, SPEC), _objects(ours, doc)
    our_props = {k: v for o in our_objects for k, v in o.get("properties", {}).items()}
    our_required = {k for o in our_objects for k in o.get("required", [])}
    for obj in spec_objects:
        for name, sub in obj.get("properties", {}).items():
            path = f"{where}.{name}" if where else name
            if name not in our_props:
                missing.add(path)
                continue
            compare(sub, our_props[name], doc, path, problems, missing)
        for name in obj.get("required", []):
            if name in our_props and name not in our_required:
                problems.append(f"{where}.{name}: required by the spec, optional in ours")
    spec_items, our_items = _items(spec, SPEC), _items(ours, doc)
    if spec_items is not None:
        if our_items is None:
            problems.append(f"{label}: the spec's array items are not documented")
        else:
            compare(spec_items, our_items, doc, f"{where}[]", problems, missing)


def _json_schema(response: dict[str, Any]) -> dict[str, Any] | None:
    content = response.get("content", {})
    media = content.get("application/json")
    return None if media is None else media.get("schema", {})


def _success(op: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """The JSON schemas of an operation's 2xx responses, by status code."""
    out = {}
    for status, response in op.get("responses", {}).items():
        schema = _json_schema(response)
        if status.startswith("2") and schema is not None:
            out[status] = schema
    return out


def test_replicant_has_every_operation_of_replicates_spec(ours: dict[str, Any]) -> None:
    mine = our_operations(ours)
    absent = sorted(op_id for key, (op_id, _) in spec_operations().items() if key not in mine)
    assert absent == []


def test_every_route_documents_a_json_response_model(ours: dict[str, Any]) -> None:
    """No route answers JSON without saying its shape (downloads, streams and 204s aside)."""
    undocumented = []
    for (method, path), op in our_operations(ours).items():
        for status, schema in _success(op).items():
            if types(schema, ours) is None:
                undocumented.append(f"{method.upper()} {path} {status}")
    assert undocumented == []


# The operations whose success answer the spec describes as JSON (not 204s, downloads).
JSON_OPERATIONS = sorted(key for key, (_, op) in spec_operations().items() if _success(op))


def _answers(
    ours: dict[str, Any], key: tuple[str, str]
) -> tuple[str, list[tuple[dict[str, Any], dict[str, Any]]]]:
    """An operation's id and its success schemas (the spec's, ours) of the statuses both
    answer with; fails when there are none."""
    op_id, spec_op = spec_operations()[key]
    spec_success = _success(spec_op)
    our_success = _success(our_operations(ours)[key])
    shared = sorted(set(spec_success) & set(our_success))
    assert shared, f"{op_id}: ours answers {sorted(our_success)}, the spec {sorted(spec_success)}"
    return op_id, [(spec_success[status], our_success[status]) for status in shared]


@pytest.mark.parametrize("key", JSON_OPERATIONS, ids=lambda k: spec_operations()[k][0])
def test_response_schema_matches_replicates_spec(
    ours: dict[str, Any], key: tuple[str, str]
) -> None:
    op_id, shared = _answers(ours, key)
    problems: list[str] = []
    missing: set[str] = set()
    for spec_schema, our_schema in shared:
        compare(spec_schema, our_schema, ours, "", problems, missing)
    assert problems == []
    assert missing == NOT_PROVIDED.get(op_id, set())


def _added(spec: dict[str, Any], ours: dict[str, Any], doc: dict[str, Any]) -> set[str]:
    """The top-level properties of ``ours`` that the spec's object does not have."""
    spec_props = {k for o in _objects(spec, SPEC) for k in o.get("properties", {})}
    our_props = {k for o in _objects(ours, doc) for k in o.get("properties", {})}
    return our_props - spec_props if spec_props else set()


def _model(schema: dict[str, Any], op_id: str) -> str:
    """The component a response schema names, else the operation's id."""
    return str(schema.get("$ref", op_id)).rpartition("/")[2]


def _results(schema: dict[str, Any], doc: dict[str, Any]) -> dict[str, Any] | None:
    """The item schema of a page's ``results``, or None when it is no page."""
    for member in _objects(schema, doc):
        results = member.get("properties", {}).get("results")
        if results is not None:
            return _items(results, doc)
    return None


@pytest.mark.parametrize("key", JSON_OPERATIONS, ids=lambda k: spec_operations()[k][0])
def test_fields_beyond_replicates_spec_are_the_listed_extensions(
    ours: dict[str, Any], key: tuple[str, str]
) -> None:
    op_id, shared = _answers(ours, key)
    for spec_schema, our_schema in shared:
        levels = [(spec_schema, our_schema)]
        spec_items, our_items = _results(spec_schema, SPEC), _results(our_schema, ours)
        if spec_items is not None and our_items is not None:
            levels.append((spec_items, our_items))
        for spec_level, our_level in levels:
            model = _model(our_level, op_id)
            assert _added(spec_level, our_level, ours) == EXTENSION_FIELDS.get(model, set()), model
