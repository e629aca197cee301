"""Checking a prediction's or training's ``input`` against a version's ``openapi_schema``.

The API refuses bad input with a 422 that names each failing field, before anything
reaches a workflow. The rules are the ``Input`` (or ``TrainingInput``) component's, plus
one that coglet does not apply: unknown fields are errors here (coglet drops them silently,
which would hide a typo in a field name). ``format: uri`` fields (Cog's ``Path`` and ``File``)
take an http(s) URL or a data URI, as Replicate's do: coglet would read any other string as a
path on the worker's disk. Staging the inputs fetches and checks them further.
"""

from __future__ import annotations

import functools
import json
from collections.abc import Callable, Iterable
from typing import Any, cast

from jsonschema import Draft202012Validator, FormatChecker, validators
from jsonschema.exceptions import ValidationError
from jsonschema.protocols import Validator
from pydantic import BaseModel

MAX_ERRORS = 50


def _is_integer(_checker: object, instance: object) -> bool:
    return isinstance(instance, int) and not isinstance(instance, bool)


# coglet 0.23.1 accepts 2.0 for an int input, then hands the float to the model, which
# fails mid-run: refuse it here instead, where the caller gets a 422.
_StrictValidator = validators.extend(  # type: ignore[no-untyped-call]
    Draft202012Validator,
    type_checker=Draft202012Validator.TYPE_CHECKER.redefine("integer", _is_integer),
)


FILE_SCHEMES = ("http://", "https://", "data:")
FILE_MESSAGE = "must be an http(s) URL or a data URI"
_FORMATS = FormatChecker(formats=())


@_FORMATS.checks("uri")
def _is_file_uri(instance: object) -> bool:
    # Only strings have a format; a wrong type is the "type" rule's to report.
    return not isinstance(instance, str) or instance[:8].lower().startswith(FILE_SCHEMES)


class InvalidField(BaseModel):
    """One failing field: ``field`` is the input's name (``name.0`` inside a list)."""

    field: str
    message: str


@functools.lru_cache(maxsize=256)
def _validator(document: str, component: str) -> Validator:
    # Compiling is the slow part; versions are few and their schemas never change.
    schemas = json.loads(document)
    root = {**schemas[component], "additionalProperties": False}
    # "#/components/schemas/X" refs (enum choices) resolve against this root.
    root["components"] = {"schemas": schemas}
    validator: Validator = _StrictValidator(root, format_checker=_FORMATS)
    return validator


def _field(error: ValidationError) -> str:
    return ".".join(str(part) for part in error.absolute_path)


def _brief(value: Any) -> str:
    text = json.dumps(value) if not isinstance(value, str) else value
    return text if len(text) <= 80 else text[:77] + "..."


def _message(error: ValidationError) -> str:
    """A message that never echoes the (possibly huge or secret) input value."""
    kind, expected = error.validator, cast(Any, error.validator_value)
    if kind == "type":
        names = expected if isinstance(expected, list) else [expected]
        return "must be of type " + " or ".join(str(n) for n in names)
    if kind == "minimum":
        return f"must be greater than or equal to {expected}"
    if kind == "maximum":
        return f"must be less than or equal to {expected}"
    if kind == "exclusiveMinimum":
        return f"must be greater than {expected}"
    if kind == "exclusiveMaximum":
        return f"must be less than {expected}"
    if kind == "enum":
        return "must be one of " + ", ".join(_brief(v) for v in expected)
    if kind == "minLength":
        if expected == 1:
            return "must not be empty"
        return f"must be at least {expected} characters long"
    if kind == "maxLength":
        return f"must be at most {expected} characters long"
    if kind == "pattern":
        return f"must match the pattern {expected}"
    if kind == "minItems":
        return f"must have at least {expected} items"
    if kind == "maxItems":
        return f"must have at most {expected} items"
    if kind == "format" and expected == "uri":
        return FILE_MESSAGE
    if kind in ("anyOf", "oneOf"):
        return "does not match any of the allowed types"
    return error.message if len(error.message) <= 200 else error.message[:197] + "..."


def _flatten(
    error: ValidationError, instance: Any, properties: Iterable[str]
) -> list[InvalidField]:
    if error.validator == "required" and not error.absolute_path:
        present = instance if isinstance(instance, dict) else {}
        return [
            InvalidField(field=name, message="required field is missing")
            for name in cast(list[str], error.validator_value)
            if name not in present
        ]
    if error.validator == "additionalProperties" and not error.absolute_path:
        known = set(properties)
        return [
            InvalidField(field=str(name), message="additional property not allowed")
            for name in instance
            if name not in known
        ]
    if not error.absolute_path and error.validator == "type":
        return [InvalidField(field="input", message="must be an object")]
    return [InvalidField(field=_field(error) or "input", message=_message(error))]


def validate_input(
    openapi_schema: dict[str, Any], payload: dict[str, Any], component: str = "Input"
) -> list[InvalidField]:
    """Return every problem with ``payload`` against ``components.schemas[component]``.

    An empty list means the input is valid. Missing required fields, unknown fields, wrong
    types, out-of-bounds numbers and values outside ``choices`` are each reported by field
    name. Defaults are not applied (coglet does that). Raises ``KeyError`` if the schema has
    no such component (a version without a trainer has no ``TrainingInput``).
    """
    return InputChecker.of(openapi_schema, component).problems(payload)


class InputChecker:
    """The compiled rules of one input component (see ``validate_input``)."""

    def __init__(self, validator: Validator, properties: dict[str, Any]) -> None:
        self.validator = validator
        self.properties = properties
        self.order = {name: prop.get("x-order", 0) for name, prop in properties.items()}

    @classmethod
    def of(cls, openapi_schema: dict[str, Any], component: str = "Input") -> InputChecker:
        """The checker of ``component``; ``KeyError`` when the schema has none."""
        schemas = openapi_schema.get("components", {}).get("schemas", {})
        if component not in schemas:
            raise KeyError(f"the version's schema has no {component} component")
        validator = _validator(json.dumps(schemas, sort_keys=True), component)
        return cls(validator, schemas[component].get("properties", {}))

    def problems(self, payload: dict[str, Any]) -> list[InvalidField]:
        """Every problem of ``payload``, in the order the model declares its fields."""
        found: list[InvalidField] = []
        for error in self.validator.iter_errors(payload):
            for item in _flatten(error, payload, self.properties):
                if item not in found:
                    found.append(item)
            if len(found) >= MAX_ERRORS:
                break
        # Report fields in the order the model declares them, unknown ones last.
        order = self.order
        found.sort(key=lambda f: (order.get(f.field.split(".")[0], len(order)), f.field))
        return found[:MAX_ERRORS]


REDACTED = "**********"


def secret_fields(openapi_schema: dict[str, Any], component: str = "Input") -> set[str]:
    """The names of the Cog ``Secret`` inputs (``x-cog-secret``) of ``component``."""
    schemas = openapi_schema.get("components", {}).get("schemas", {})
    properties = schemas.get(component, {}).get("properties", {})
    # A list[Secret] marks its items.
    return {
        name
        for name, prop in properties.items()
        if prop.get("x-cog-secret") or prop.get("items", {}).get("x-cog-secret")
    }


def change_secret(value: Any, change: Callable[[str], Any]) -> Any:
    """A ``Secret`` input's value with ``change`` applied to its string (to each string of
    a ``list[Secret]``); anything else is kept as it is."""
    if isinstance(value, list):
        return [change_secret(item, change) for item in value]
    return change(value) if isinstance(value, str) else value


def map_secrets(
    openapi_schema: dict[str, Any],
    payload: dict[str, Any],
    change: Callable[[str], Any],
    component: str = "Input",
) -> dict[str, Any]:
    """A copy of ``payload`` with ``change`` applied to each string value of its ``Secret``
    inputs (each item of a ``list[Secret]``); other values are kept as they are."""
    secret = secret_fields(openapi_schema, component)
    return {name: change_secret(v, change) if name in secret else v for name, v in payload.items()}


def redact_secrets(
    openapi_schema: dict[str, Any], payload: dict[str, Any], component: str = "Input"
) -> dict[str, Any]:
    """``payload`` with the values of Cog ``Secret`` inputs (``x-cog-secret``) replaced by
    ``**********``: what the read model keeps, as Replicate redacts them once sent."""
    return map_secrets(openapi_schema, payload, lambda _: REDACTED, component)
