"""Sealing Cog ``Secret`` inputs (replicant/sealing.py): what the workflow's input holds, and
what unsealing gives the model back or refuses."""

from __future__ import annotations

from typing import Any

import pytest

from replicant.sealing import SEALED_PREFIX, Sealer, UnsealError

PROPS = {
    "token": {"type": "string", "format": "password", "x-cog-secret": True},
    # What Cog makes of list[Secret]: the items are marked.
    "keys": {"type": "array", "items": {"type": "string", "x-cog-secret": True}},
    "prompt": {"type": "string"},
}
SCHEMA: dict[str, Any] = {"components": {"schemas": {"TrainingInput": {"properties": PROPS}}}}
KEY = "installation-secret-key"


def sealed(payload: dict[str, Any]) -> dict[str, Any]:
    return Sealer(KEY, "p1", "v1").seal_input(SCHEMA, payload, "TrainingInput")


def unsealed(
    payload: dict[str, Any], key: str = KEY, object_id: str = "p1", version: str = "v1"
) -> dict[str, Any]:
    return Sealer(key, object_id, version).unseal_input(SCHEMA, payload, "TrainingInput")


def test_secret_values_are_sealed_and_unseal_to_what_was_sent() -> None:
    payload = {"token": "r8_x", "keys": ["a", "b"], "prompt": "r8_x", "none": None}
    kept = sealed(payload)
    assert kept["prompt"] == "r8_x" and kept["none"] is None  # only secrets are sealed
    for value in [kept["token"], *kept["keys"]]:
        assert value.startswith(SEALED_PREFIX)
    assert "r8_x" not in kept["token"]
    assert unsealed(kept) == payload
    assert payload["token"] == "r8_x"  # the caller's dict is left as it was


def test_a_value_that_looks_sealed_is_sealed_again_and_reaches_the_model_as_sent() -> None:
    looks_sealed = SEALED_PREFIX + "not-a-token"
    kept = sealed({"token": looks_sealed})
    assert unsealed(kept) == {"token": looks_sealed}


def test_a_plain_secret_from_a_program_started_workflow_passes_as_it_is() -> None:
    plain = {"token": "r8_plain", "keys": ["k"]}
    assert unsealed(plain) == plain


def test_unsealing_refuses_another_key_or_another_run_without_showing_the_value() -> None:
    kept = sealed({"token": "r8_x"})
    with pytest.raises(UnsealError, match="sealed under another secret_key") as other_key:
        unsealed(kept, key="rotated-key")
    with pytest.raises(UnsealError, match="sealed for another run") as other_run:
        unsealed(kept, object_id="p2")
    for err in (other_key, other_run):
        assert "r8_x" not in str(err.value)
