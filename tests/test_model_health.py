"""Models with a healthcheck() (Cog 0.23), through the API: one unhealthy from the start fails
at boot saying why, one that turns unhealthy is replaced before its next run (the worker's
/metrics series of them: tests/test_runners.py, as the shared stack's worker serves none)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from replicant.versions import create_version, ensure_model
from tests.conftest import LiveStack

MODELS = Path(__file__).parent / "models"


def push(live: LiveStack, name: str) -> str:
    """Push ``tests/models/<name>`` as a model of the default account; its name."""
    model = ensure_model(live.engine, live.settings.default_account, name)
    create_version(live.settings, live.engine, model, MODELS / name)
    return f"{live.settings.default_account}/{name}"


def run(live: LiveStack, model: str, input: dict[str, Any]) -> dict[str, Any]:
    with live.client() as api:
        response = api.post(f"/v1/models/{model}/predictions", json={"input": input})
        assert response.status_code == 201, response.text
    return live.wait_for(response.json()["id"], timeout=300)


def test_a_model_unhealthy_from_the_start_fails_saying_why(live: LiveStack) -> None:
    model = push(live, "unhealthy-boot")

    failed = run(live, model, {})

    assert failed["status"] == "failed"
    assert "reported itself unhealthy: RuntimeError: the GPU is gone" in failed["error"]
    assert "Setup complete" in failed["logs"]  # the boot's output, to its end


def test_a_model_that_turns_unhealthy_gets_a_new_process_for_its_next_run(
    live: LiveStack,
) -> None:
    model = push(live, "unhealthy")
    first = run(live, model, {})
    assert first["status"] == "succeeded", first
    sick = run(live, model, {"mode": "sick"})
    assert (sick["status"], sick["output"]) == ("succeeded", "sick")

    after = run(live, model, {"mode": "ok"})

    assert (after["status"], after["output"]) == ("succeeded", "ok")
