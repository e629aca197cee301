"""A create's input in one pass over the version's input facts: problems, sealed and redacted
copies, and where the data URIs and long texts are."""

from __future__ import annotations

from typing import Any

import pytest

from replicant.inputfacts import LONG_TEXT, derive, input_facts
from replicant.sealing import Sealer
from replicant.validation import REDACTED

SCHEMA: dict[str, Any] = {
    "components": {
        "schemas": {
            "Input": {
                "type": "object",
                "required": ["prompt"],
                "properties": {
                    "prompt": {"type": "string", "x-order": 0},
                    "token": {"type": "string", "format": "password", "x-cog-secret": True},
                    "image": {"type": "string", "format": "uri"},
                    "images": {"type": "array", "items": {"type": "string", "format": "uri"}},
                },
            }
        }
    }
}
IMAGE = "data:image/png;base64,iVBORw0KGgo="


def test_one_pass_seals_redacts_and_finds_files_and_long_texts() -> None:
    sealer = Sealer("k" * 32, "p1", "v1")
    payload = {
        "prompt": "x" * (LONG_TEXT + 1),
        "token": "hunter2",
        "image": IMAGE,
        "images": ["https://example.com/a.png", IMAGE],
    }
    prepared = derive(SCHEMA).prepare(payload, sealer.seal_value)
    assert prepared.problems == []
    assert prepared.redacted == {**payload, "token": REDACTED}
    assert prepared.sealed["token"] != "hunter2"
    assert sealer.unseal_value(prepared.sealed["token"]) == "hunter2"
    assert {k: v for k, v in prepared.sealed.items() if k != "token"} == {
        k: v for k, v in payload.items() if k != "token"
    }
    assert prepared.data_uris == [["image"], ["images", 1]]
    assert prepared.long_texts == [["prompt"]]
    assert payload["token"] == "hunter2"  # the caller's input is left as it was


def test_invalid_input_reports_its_fields_and_nothing_else() -> None:
    prepared = derive(SCHEMA).prepare({"token": 5, "typo": 1}, str.upper)
    assert [p.field for p in prepared.problems] == ["prompt", "token", "typo"]
    assert prepared.data_uris == prepared.long_texts == []


def test_facts_are_derived_once_per_version_and_component() -> None:
    assert input_facts("v-facts", SCHEMA) is input_facts("v-facts", SCHEMA)
    with pytest.raises(KeyError):
        input_facts("v-facts", SCHEMA, "TrainingInput")
