"""Models that misbehave end truthfully, and the worker keeps serving other models.

A stack of its own with a short setup timeout: a model whose setup() hangs, one whose
process exits mid-prediction, one that prints megabytes of logs, one that returns a huge
output.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from replicant.db import make_engine
from replicant.devstack import Stack
from replicant.versions import create_version, ensure_model
from tests.conftest import LiveStack, stack_settings, suite_database
from workers.runners.coglet import worker_died_error

MODELS = Path(__file__).parent / "models"
# A model process that exits or is killed under a run (no OOM kill counted here).
PROCESS_DIED = worker_died_error(oom_killed=False)
SETUP_TIMEOUT = 6.0
LOGS_MB = 20
OUTPUT_MB = 20


@pytest.fixture(scope="module")
def faulty(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveStack]:
    data_dir = tmp_path_factory.mktemp("faults")
    with contextlib.ExitStack() as cleanup:
        settings = stack_settings(
            data_dir,
            setup_timeout=SETUP_TIMEOUT,
            prediction_timeout=60.0,
            **cleanup.enter_context(suite_database()),
        )
        stack = Stack(settings, ui=False, log_dir=data_dir / "logs")
        cleanup.callback(stack.stop)
        token = stack.start()
        engine = make_engine(settings.resolved_database_url)
        cleanup.callback(engine.dispose)
        live = LiveStack(stack, settings, settings.resolved_public_url, token, engine)
        for name in ("faults", "setuphang"):
            model = ensure_model(engine, settings.default_account, name)
            create_version(settings, engine, model, MODELS / name)
        yield live


def run(live: LiveStack, model: str, input: dict[str, Any]) -> dict[str, Any]:
    with live.client() as api:
        response = api.post(f"/v1/models/{model}/predictions", json={"input": input})
        assert response.status_code == 201, response.text
    return live.wait_for(response.json()["id"], timeout=180)


def still_serving(live: LiveStack) -> None:
    """Other models, and the faulty one's next run, still work."""
    hello = run(live, "replicate/hello-world", {"text": "after"})
    assert (hello["status"], hello["output"]) == ("succeeded", "hello after")
    echo = run(live, f"{live.settings.default_account}/faults", {"mode": "echo"})
    assert (echo["status"], echo["output"]) == ("succeeded", "ok")


def test_a_model_whose_setup_hangs_fails_with_the_reason(faulty: LiveStack) -> None:
    final = run(faulty, f"{faulty.settings.default_account}/setuphang", {"text": "x"})
    assert final["status"] == "failed", final
    assert f"setup did not finish within {SETUP_TIMEOUT:g} s" in final["error"], final["error"]
    still_serving(faulty)


@pytest.mark.parametrize("mode", ["exit", "killed"])
def test_a_model_process_that_dies_mid_prediction_fails_it(faulty: LiveStack, mode: str) -> None:
    """It exits, or is SIGKILLed as the OOM killer would."""
    final = run(faulty, f"{faulty.settings.default_account}/faults", {"mode": mode})
    assert final["status"] == "failed", final
    assert final["error"] == PROCESS_DIED, final
    still_serving(faulty)


def test_megabytes_of_logs_end_truthfully(faulty: LiveStack) -> None:
    final = run(
        faulty, f"{faulty.settings.default_account}/faults", {"mode": "logs", "mb": LOGS_MB}
    )
    assert final["status"] == "succeeded", final.get("error")
    assert final["output"] == "logged"
    assert "x" * 1023 in final["logs"]
    still_serving(faulty)


def test_a_huge_output_ends_truthfully(faulty: LiveStack) -> None:
    final = run(
        faulty, f"{faulty.settings.default_account}/faults", {"mode": "output", "mb": OUTPUT_MB}
    )
    assert final["status"] == "succeeded", final.get("error")
    assert final["output"] == "y" * (OUTPUT_MB * 1024 * 1024)
    still_serving(faulty)
