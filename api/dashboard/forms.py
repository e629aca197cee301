"""The Run form of a model: fields from a version's Cog ``Input`` schema, and back to input.

The form only shapes what the browser sends; the API validates it (a 422 names each field),
so no rule of validation lives here.
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from starlette.datastructures import FormData, UploadFile

# Inputs are posted as "in-<name>", so no input name meets the form's own fields (csrf, ...).
PREFIX = "in-"


@dataclass
class Field:
    """One input of the form, as a template draws it."""

    name: str
    title: str
    kind: str  # text, textarea, integer, number, checkbox, select, file, password, list
    description: str = ""
    required: bool = False
    default: Any = None
    minimum: float | None = None
    maximum: float | None = None
    choices: list[Any] = field(default_factory=list)
    item_kind: str = ""  # the kind of a list's items

    @property
    def value(self) -> str:
        """The default as the form field shows it."""
        if self.default is None:
            return ""
        if isinstance(self.default, list):
            return "\n".join(str(v) for v in self.default)
        return str(self.default)


def _resolve(prop: dict[str, Any], schemas: dict[str, Any]) -> dict[str, Any]:
    """A property with its ``allOf: [{$ref}]`` (Cog's choices) merged in; the property's own
    keys win (its description, not the enum's "An enumeration.")."""
    merged: dict[str, Any] = {}
    for part in prop.get("allOf", []):
        ref = part.get("$ref", "")
        merged.update(schemas.get(ref.rsplit("/", 1)[-1], {}))
    merged.update(prop)
    return merged


def _kind(prop: dict[str, Any]) -> str:
    if "enum" in prop:
        return "select"
    kind = prop.get("type", "string")
    if kind == "string" and prop.get("format") == "uri":
        return "file"
    if kind == "string" and (prop.get("x-cog-secret") or prop.get("format") == "password"):
        return "password"
    return {"integer": "integer", "number": "number", "boolean": "checkbox"}.get(kind, "text")


def form_fields(openapi_schema: dict[str, Any]) -> list[Field]:
    """The version's inputs in Cog's ``x-order``, ready for the Run form."""
    schemas = openapi_schema.get("components", {}).get("schemas", {})
    inputs = schemas.get("Input", {})
    required = set(inputs.get("required", []))
    props = inputs.get("properties", {})
    ordered = sorted(props.items(), key=lambda item: item[1].get("x-order", 0))
    fields = []
    for name, raw in ordered:
        prop = _resolve(raw, schemas)
        kind = "list" if prop.get("type") == "array" else _kind(prop)
        item_kind = _kind(_resolve(prop.get("items", {}), schemas)) if kind == "list" else ""
        fields.append(
            Field(
                name=name,
                title=prop.get("title") or name,
                kind=kind,
                description=prop.get("description", ""),
                required=name in required,
                default=prop.get("default"),
                minimum=prop.get("minimum"),
                maximum=prop.get("maximum"),
                choices=list(prop.get("enum", [])),
                item_kind=item_kind,
            )
        )
    return fields


def _scalar(kind: str, text: str) -> Any:
    """A typed value from a form string; left as text when it is not one (the API says why)."""
    if kind == "integer":
        try:
            return int(text)
        except ValueError:
            return text
    if kind == "number":
        try:
            return float(text)
        except ValueError:
            return text
    return text


# Stores a file picked in the form and returns the URL that names it in an input.
Uploader = Callable[[UploadFile], Awaitable[str]]


async def form_input(fields: list[Field], form: FormData, upload: Uploader) -> dict[str, Any]:
    """The prediction ``input`` from a submitted Run form; empty fields are left out, so the
    model's defaults apply. Picked files go through ``upload`` (the Files API)."""
    payload: dict[str, Any] = {}
    for f in fields:
        key = PREFIX + f.name
        if f.kind == "checkbox":
            payload[f.name] = form.get(key) is not None
            continue
        if f.kind == "file" or (f.kind == "list" and f.item_kind == "file"):
            uploads = [u for u in form.getlist(key) if isinstance(u, UploadFile) and u.filename]
            uris = [await upload(u) for u in uploads]
            if uris:
                payload[f.name] = uris if f.kind == "list" else uris[0]
            continue
        raw = form.get(key)
        text = raw.strip() if isinstance(raw, str) else ""
        if text == "":
            continue
        if f.kind == "list":
            if text.startswith("["):
                try:
                    payload[f.name] = json.loads(text)
                    continue
                except ValueError:
                    pass
            items = [line.strip() for line in text.splitlines() if line.strip()]
            payload[f.name] = [_scalar(f.item_kind, item) for item in items]
        elif f.kind == "select":
            choices = {str(c): c for c in f.choices}
            payload[f.name] = choices.get(text, text)
        else:
            # Text is sent as typed (spaces may matter); numbers without the spaces.
            payload[f.name] = _scalar(f.kind, str(raw) if f.kind in ("text", "password") else text)
    return payload


def input_values(fields: list[Field], given: dict[str, Any]) -> dict[str, str]:
    """A prediction's input as the form shows it (for "tweak"): text as typed, one list item a
    line, a checkbox by its presence (as the browser posts it). Files are picked again."""
    values: dict[str, str] = {}
    for f in fields:
        if f.name not in given or f.kind == "file" or (f.kind == "list" and f.item_kind == "file"):
            continue
        value = given[f.name]
        if f.kind == "checkbox":
            if value:
                values[f.name] = "on"
        elif isinstance(value, list):
            scalar = all(isinstance(v, str | int | float) for v in value)
            values[f.name] = "\n".join(map(str, value)) if scalar else json.dumps(value)
        elif isinstance(value, dict):
            values[f.name] = json.dumps(value)
        elif value is not None:
            values[f.name] = str(value)
    return values


def form_values(form: FormData) -> dict[str, str]:
    """The text the user typed, by input name, to fill the form in again after a 422."""
    return {
        k.removeprefix(PREFIX): v
        for k, v in form.items()
        if k.startswith(PREFIX) and isinstance(v, str)
    }


def output_type(openapi_schema: dict[str, Any]) -> str:
    """The version's output in words, for its schema table: ``string``, ``file``,
    ``iterator of string``, ``list of object``, ``object (text, lines)``."""
    schemas = openapi_schema.get("components", {}).get("schemas", {})
    return _type_words(_resolve(schemas.get("Output", {}), schemas), schemas)


def _type_words(prop: dict[str, Any], schemas: dict[str, Any]) -> str:
    if "$ref" in prop:
        prop = {**schemas.get(prop["$ref"].rsplit("/", 1)[-1], {}), **prop}
    kind = prop.get("type", "any")
    if kind == "array":
        items = _type_words(_resolve(prop.get("items", {}), schemas), schemas)
        iterator = prop.get("x-cog-array-type") == "iterator"
        return f"{'iterator' if iterator else 'list'} of {items}"
    if kind == "string" and prop.get("format") == "uri":
        return "file"
    if kind == "object" and prop.get("properties"):
        return f"object ({', '.join(prop['properties'])})"
    return str(kind)
