"""Refresh the response shapes the conformance checks use from Replicate's published spec.

    python tests/refresh_spec.py PATH_OR_URL

reads Replicate's OpenAPI document (YAML or JSON; a file path or an http(s) URL) and writes
``tests/spec/replicate-openapi.json``: the same paths, operations and schemas with the prose
(descriptions, summaries, examples) left out. The suite reads only that file.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import httpx
import yaml

TARGET = Path(__file__).resolve().parent / "spec" / "replicate-openapi.json"
PROSE = frozenset({"description", "summary", "example", "examples", "externalDocs", "x-readme"})
# Maps whose keys are names chosen by the spec's authors (a property called "description").
NAMED = frozenset({"properties", "schemas", "responses", "paths", "headers", "parameters"})


def strip_prose(node: Any, named: bool = False, response: bool = False) -> Any:
    """``node`` without prose keys; keys of name maps (``properties`` ...) are kept as they are.

    A response object keeps an empty ``description``: OpenAPI requires the field.
    """
    if isinstance(node, dict):
        out = {
            key: strip_prose(value, key in NAMED and not named, named and key_is_status(key))
            for key, value in node.items()
            if named or key not in PROSE
        }
        if response:
            out["description"] = ""
        return out
    if isinstance(node, list):
        return [strip_prose(value) for value in node]
    return node


def key_is_status(key: str) -> bool:
    return key.isdigit() or key in {"default", "2XX", "4XX", "5XX"}


def load(source: str) -> dict[str, Any]:
    text = (
        httpx.get(source, follow_redirects=True, timeout=30).raise_for_status().text
        if source.startswith(("http://", "https://"))
        else Path(source).read_text()
    )
    data: dict[str, Any] = yaml.safe_load(text)
    return data


def main(argv: list[str]) -> int:
    if len(argv) != 1:
        print(__doc__, file=sys.stderr)
        return 2
    spec = strip_prose(load(argv[0]))
    TARGET.write_text(json.dumps(spec, indent=1, sort_keys=True) + "\n")
    print(f"wrote {TARGET} ({len(spec.get('paths', {}))} paths)")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
