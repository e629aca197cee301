"""Models with a healthcheck() (Cog 0.23), through the API: one unhealthy from the start fails
at boot saying why, one that turns unhealthy is replaced before its next run, also when its
healthcheck() is inherited from a base class in another file (found at push), and each state
goes into the version's boot log, which its owner's model page and its owner's GET of the
version show (the worker's /metrics series of them: tests/test_runners.py, as the shared
stack's worker serves none)."""

from __future__ import annotations

import html
from pathlib import Path
from typing import Any

from sqlmodel import Session

from replicant.tables import Version
from replicant.versions import create_version, ensure_model
from tests.conftest import LiveStack
from tests.test_dashboard_privacy import session_client
from tests.waiting import wait_until

MODELS = Path(__file__).parent / "models"


def push(live: LiveStack, name: str) -> str:
    """Push ``tests/models/<name>`` as a model of the default account; its name."""
    model = ensure_model(live.engine, live.settings.default_account, name)
    create_version(live.settings, live.engine, model, MODELS / name)
    return f"{live.settings.default_account}/{name}"


def version_of(live: LiveStack, prediction: dict[str, Any]) -> Version:
    with Session(live.engine) as session:
        version = session.get(Version, prediction["version"])
    assert version is not None
    return version


def boot_log(live: LiveStack, prediction: dict[str, Any], says: str) -> str:
    """The boot log of the prediction's version, once it says ``says`` (the worker writes it
    in the background)."""
    return wait_until(
        lambda: version_of(live, prediction).boot_logs,
        lambda logs: says in logs,
        what=f"the boot log saying {says!r}",
        timeout=30,
    )


def test_a_model_unhealthy_from_the_start_fails_saying_why(live: LiveStack) -> None:
    model = push(live, "unhealthy-boot")

    failed = live.predict(model, {})

    assert failed["status"] == "failed"
    assert "reported itself unhealthy: RuntimeError: the GPU is gone" in failed["error"]
    assert "Setup complete" in failed["logs"]  # the boot's output, to its end
    logs = boot_log(live, failed, "unhealthy: The model reported itself unhealthy")
    assert "RuntimeError: the GPU is gone" in logs

    # The API shows the boot log to the model's owner only (the model is public).
    version = f"/v1/models/{model}/versions/{failed['version']}"
    with live.client() as owner:
        mine = owner.get(version)
    with live.client(live.new_account("onlooker")) as other:
        theirs = other.get(version)
    assert mine.status_code == theirs.status_code == 200, (mine.text, theirs.text)
    assert "RuntimeError: the GPU is gone" in mine.json()["boot_logs"]
    assert "boot_logs" not in theirs.json()
    assert theirs.json()["openapi_schema"] == mine.json()["openapi_schema"]


def test_a_model_that_turns_unhealthy_gets_a_new_process_for_its_next_run(
    live: LiveStack,
) -> None:
    model = push(live, "unhealthy")
    first = live.predict(model, {})
    assert first["status"] == "succeeded", first
    sick = live.predict(model, {"mode": "sick"})
    assert (sick["status"], sick["output"]) == ("succeeded", "sick")

    after = live.predict(model, {"mode": "ok"})

    assert (after["status"], after["output"]) == ("succeeded", "ok")


def test_an_inherited_healthcheck_is_found_at_push_and_asked_after_boot(live: LiveStack) -> None:
    # predict.py has no `def healthcheck`: its class inherits one from base.py.
    model = push(live, "unhealthy-inherited")
    sick = live.predict(model, {"mode": "sick"})
    assert sick["status"] == "succeeded", sick
    assert version_of(live, sick).healthcheck is True

    after = live.predict(model, {"mode": "ok"})

    # The unhealthy process was asked, stopped and replaced: another process ran the next run.
    assert after["status"] == "succeeded", after
    assert after["output"].split()[0] == "ok"
    assert after["output"].split()[1] != sick["output"].split()[1]
    logs = boot_log(live, after, "unhealthy: The model reported itself unhealthy")
    assert "healthcheck() did not pass" in logs or "returned False" in logs, logs

    # Its owner sees the boot log on the model's page; another account does not.
    for token, sees in ((live.token, True), (live.new_account("bystander"), False)):
        dashboard, _ = session_client(live, token)
        try:
            page = dashboard.get(f"/models/{model}")
        finally:
            dashboard.close()
        shown = "unhealthy: The model reported itself unhealthy" in html.unescape(page.text)
        assert ("Boot log" in page.text, shown) == (sees, sees), page.text
