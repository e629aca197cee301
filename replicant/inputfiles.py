"""Input files as a model's schema and Replicate's API describe them: which inputs take files,
data URIs, and file names safe to hand a model. Pure functions, used by the API (data URIs
stored at create time) and by the activities (staging, outputs)."""

from __future__ import annotations

import base64
import binascii
import mimetypes
from typing import Any
from urllib.parse import unquote, unquote_to_bytes

MAX_FILENAME = 200


class InputFileError(Exception):
    """An input file cannot be staged; the message names the field and says why."""


def file_fields(openapi_schema: dict[str, Any], component: str = "Input") -> dict[str, bool]:
    """Inputs that take files (``format: uri``): name -> whether it is a list of them.
    ``component`` is the schema's input component (``TrainingInput`` for a trainer)."""
    schemas = openapi_schema.get("components", {}).get("schemas", {})
    properties = schemas.get(component, {}).get("properties", {})
    fields: dict[str, bool] = {}
    for name, prop in properties.items():
        for option in [prop, *prop.get("anyOf", []), *prop.get("allOf", [])]:
            if option.get("format") == "uri":
                fields[name] = False
            elif option.get("type") == "array" and option.get("items", {}).get("format") == "uri":
                fields[name] = True
    return fields


def safe_filename(name: str, content_type: str | None = None) -> str:
    """A plain file name for the model (no directories, no leading dots), with an extension."""
    name = name.replace("\0", "").replace("\\", "/").rsplit("/", 1)[-1].strip().lstrip(".")
    if len(name.encode()) > MAX_FILENAME:
        stem, dot, ext = name.rpartition(".")
        keep = MAX_FILENAME - len(ext.encode()) - 1
        name = (stem.encode()[:keep].decode("utf-8", "ignore") + dot + ext) if dot else ""
    if not name:
        name = "file"
    if "." not in name and content_type:
        name += mimetypes.guess_extension(content_type.split(";")[0].strip()) or ""
    return name


def parse_data_uri(uri: str) -> tuple[str, bytes]:
    """(content type, bytes) of a ``data:`` URI."""
    header, comma, payload = uri[5:].partition(",")
    if not comma:
        raise InputFileError("is not a valid data URI")
    params = header.split(";")
    content_type = params[0].strip() or "text/plain"
    if "base64" in (p.strip().lower() for p in params[1:]):
        try:
            data = base64.b64decode(unquote(payload), validate=False)
        except (binascii.Error, ValueError) as err:
            raise InputFileError("is a data URI with invalid base64") from err
    else:
        data = unquote_to_bytes(payload)
    return content_type, data


def get_at(value: Any, path: list[str | int]) -> Any:
    """The item at ``path`` (keys and list indexes) inside ``value``."""
    for part in path:
        value = value[part]
    return value


def set_at(value: Any, path: list[str | int], item: Any) -> None:
    """Replace the item at ``path`` (keys and list indexes) inside ``value``."""
    for part in path[:-1]:
        value = value[part]
    value[path[-1]] = item
