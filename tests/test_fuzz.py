"""Fuzzing: schemathesis over Replicant's own /openapi.json, every operation, a valid token.

A short deterministic budget (seeded, a few examples per operation, valid and invalid data):
no answer is a 5xx, and every 4xx is problem+json. The calls run as a fresh account, so
whatever the fuzzer deletes or revokes is its own.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import httpx
import schemathesis
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis.errors import Unsatisfiable
from schemathesis import GenerationMode

from tests.conftest import LiveStack

EXAMPLES = 4
REPLICATE_SPEC = Path(__file__).parent / "spec" / "replicate-openapi.json"
BUDGET = settings(
    max_examples=EXAMPLES,
    derandomize=True,  # the same examples on every run
    deadline=None,
    database=None,
    phases=[Phase.explicit, Phase.generate],
    suppress_health_check=list(HealthCheck),
)


def problems_of(operation: Any, mode: GenerationMode, url: str, token: str) -> list[str]:
    """What is wrong with the answers to ``operation``'s generated calls (empty: nothing)."""
    found: list[str] = []

    @given(case=operation.as_strategy(generation_mode=mode))
    @BUDGET
    def run(case: Any) -> None:
        response = case.call(base_url=url, headers={"Authorization": f"Bearer {token}"}, timeout=30)
        where = f"{case.method} {case.formatted_path} ({mode.value}) -> {response.status_code}"
        if response.status_code >= 500:
            found.append(f"{where}: {response.text[:300]}")
        elif response.status_code >= 400:
            kind = (response.headers.get("content-type") or [""])[0]  # header -> values
            if not kind.startswith("application/problem+json"):
                found.append(f"{where}: content-type {kind!r}: {response.text[:200]}")

    try:
        run()
    except Unsatisfiable:
        # Nothing to generate in this mode (e.g. no parameter that can be made invalid).
        assert mode is GenerationMode.NEGATIVE, operation.label
    return found


def fuzz(spec: dict[str, Any], base_url: str, token: str) -> list[str]:
    """The problems found over every operation of ``spec``, valid and invalid data alike."""
    schema = schemathesis.openapi.from_dict(spec)
    operations = [result.ok() for result in schema.get_all_operations()]
    assert len(operations) > 20
    problems: list[str] = []
    for operation in operations:
        for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE):
            problems += problems_of(operation, mode, base_url, token)
    return problems


def test_no_operation_answers_5xx_and_every_4xx_is_a_problem(live: LiveStack) -> None:
    spec = httpx.get(f"{live.url}/openapi.json", timeout=30).json()
    problems = fuzz(spec, live.url, live.new_account("fuzz"))
    assert problems == [], "\n".join(problems)


def test_replicates_own_spec_finds_no_5xx_either(live: LiveStack) -> None:
    """Requests shaped by Replicate's spec (as its clients send them), at /v1."""
    spec = json.loads(REPLICATE_SPEC.read_text())
    problems = fuzz(spec, f"{live.url}/v1", live.new_account("fuzz-replicate"))
    assert problems == [], "\n".join(problems)
