"""Helpers of the account tests: users made with the CLI, private models."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

from typer.testing import CliRunner

from replicant.cli import app
from replicant.devstack import settings_env
from replicant.settings import get_settings
from replicant.tables import Model
from replicant.versions import create_version
from tests.conftest import LiveStack

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"
HELLO = "replicate/hello-world"
SLEEP = "replicant/sleep"


def cli(live: LiveStack, *args: str) -> subprocess.CompletedProcess[str]:
    """``replicant ...`` configured for the test stack by its environment, as an operator runs
    it, but in this process (a process of its own spends seconds importing): the command's
    exit status and output. An error other than the command's own exit is raised, so a crash
    never passes for a refusal."""
    env = {
        name: value
        for name, value in settings_env(live.settings).items()
        if name.startswith("REPLICANT_")
    }
    get_settings.cache_clear()  # the command reads its settings from `env`, not this process's
    try:
        result = CliRunner().invoke(app, list(args), env=env)
    finally:
        get_settings.cache_clear()
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        raise result.exception
    return subprocess.CompletedProcess(
        ["replicant", *args], result.exit_code, result.stdout, result.stderr
    )


def cli_ok(live: LiveStack, *args: str) -> str:
    done = cli(live, *args)
    assert done.returncode == 0, done.stdout + done.stderr
    return done.stdout


def unique(name: str) -> str:
    return f"{name}-{os.urandom(3).hex()}"


def new_user(live: LiveStack, name: str) -> tuple[str, str]:
    """(username, token) of a fresh user made with the CLI."""
    username = unique(name)
    token = cli_ok(live, "accounts", "create", username).strip()
    return username, token


def private_model(live: LiveStack, token: str, owner: str, example: str) -> tuple[str, str]:
    """A private model under ``owner`` created through the API, with one version.

    Returns (``owner/name``, version id).
    """
    name = unique("secret")
    with live.client(token) as client:
        created = client.post(
            "/v1/models", json={"owner": owner, "name": name, "visibility": "private"}
        )
        assert created.status_code == 201, created.text
    from sqlmodel import Session, select

    with Session(live.engine, expire_on_commit=False) as session:
        model = session.exec(select(Model).where(Model.owner == owner, Model.name == name)).one()
    version = create_version(live.settings, live.engine, model, EXAMPLES / example)
    return f"{owner}/{name}", version.id
