"""The examples of README.md and docs/api.md run as written."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import httpx
import replicate

from replicant.devstack import settings_env
from tests.conftest import LiveStack

ROOT = Path(__file__).resolve().parent.parent
README = ROOT / "README.md"
API_DOC = ROOT / "docs" / "api.md"


def python_block_after(heading: str, document: Path = README) -> str:
    """The first Python code block after ``heading`` in ``document``."""
    text = document.read_text()
    section = text[text.index(heading) :]
    match = re.search(r"```python\n(.*?)```", section, re.S)
    assert match is not None, f"no Python example under {heading!r}"
    return match.group(1)


def test_programmatic_start_snippet_runs_and_shows_up_in_the_api(
    live: LiveStack, api: httpx.Client, tmp_path: Path
) -> None:
    script = tmp_path / "start.py"
    script.write_text(python_block_after("## Starting a prediction through Temporal", API_DOC))
    done = subprocess.run(
        [sys.executable, str(script)],
        env=settings_env(live.settings),
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    prediction_id, status = done.stdout.split()
    assert status == "succeeded"
    body = api.get(f"/v1/predictions/{prediction_id}").json()
    assert body["output"] == "hello from Temporal"


def test_python_client_snippet_runs(live: LiveStack) -> None:
    code = python_block_after("With the official Python client")
    assert 'base_url="http://127.0.0.1:8000"' in code
    code = code.replace('"http://127.0.0.1:8000"', repr(live.url))
    code = code.replace('os.environ["REPLICATE_API_TOKEN"]', repr(live.token))
    namespace: dict[str, object] = {}
    exec(compile(code, "README.md", "exec"), namespace)
    client = namespace["client"]
    assert isinstance(client, replicate.Client)
    prediction = namespace["prediction"]
    assert getattr(prediction, "status", None) == "succeeded"
