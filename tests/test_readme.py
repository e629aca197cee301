"""The examples of README.md and docs/api.md run as written."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
import replicate
from PIL import Image

from replicant.devstack import settings_env
from tests.conftest import LiveStack
from tests.trainkit import CorpusServer

ROOT = Path(__file__).resolve().parent.parent
README = ROOT / "README.md"
API_DOC = ROOT / "docs" / "api.md"
MODELS_DOC = ROOT / "docs" / "models.md"


def block_after(heading: str, document: Path = README, language: str = "python") -> str:
    """The first code block in ``language`` after ``heading`` in ``document``."""
    text = document.read_text()
    section = text[text.index(heading) :]
    match = re.search(rf"```{language}\n(.*?)```", section, re.S)
    assert match is not None, f"no {language} example under {heading!r}"
    return match.group(1)


def python_block_after(heading: str, document: Path = README) -> str:
    return block_after(heading, document)


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


def test_curl_snippet_answers_the_finished_prediction(live: LiveStack) -> None:
    script = block_after("## Try it", language="sh")
    assert "http://127.0.0.1:8000/" in script and ".replicant/api-token" in script
    script = script.replace("http://127.0.0.1:8000", live.url)
    script = script.replace(".replicant/api-token", str(live.settings.data_dir / "api-token"))
    done = subprocess.run(
        ["bash", "-ec", script], capture_output=True, text=True, timeout=120, cwd=ROOT
    )
    assert done.returncode == 0, done.stderr
    body = json.loads(done.stdout)
    assert (body["status"], body["output"]) == ("succeeded", "hello Alice")


def test_replicate_base_url_in_the_environment_points_the_client_at_replicant(
    live: LiveStack, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert "`REPLICATE_BASE_URL=http://127.0.0.1:8000` in the environment" in README.read_text()
    monkeypatch.setenv("REPLICATE_BASE_URL", live.url)
    client = replicate.Client(api_token=live.token)
    assert client.run("replicate/hello-world", input={"text": "Alice"}) == "hello Alice"


def test_files_snippet_runs_against_a_plain_http_api(
    live: LiveStack, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert live.url.startswith("http://")  # as with `make dev`: no FileOutput, the URL itself
    Image.new("RGB", (256, 64), "orange").save(tmp_path / "photo.png")
    monkeypatch.chdir(tmp_path)
    client = replicate.Client(api_token=live.token, base_url=live.url)
    exec(compile(python_block_after("## Files", API_DOC), "api.md", "exec"), {"client": client})
    with Image.open(tmp_path / "thumb.png") as thumb:
        assert thumb.size == (128, 32)


def test_training_example_prints_the_fine_tunes_text(
    live: LiveStack, capsys: pytest.CaptureFixture[str]
) -> None:
    code = python_block_after("## Fine-tuning (trainings)", MODELS_DOC)
    token = live.new_account("docs-trainer")
    with live.client(token) as api:
        username = api.get("/v1/account").json()["username"]
        base = api.get("/v1/models/replicant/ngram").json()["latest_version"]["id"]
    words = " ".join(f"word{i % 7}" for i in range(300))
    corpora = CorpusServer()
    try:
        code = code.replace("https://example.com/corpus.txt", corpora.add("corpus.txt", words))
        code = code.replace("<a version id of replicant/ngram>", base)
        code = code.replace('"alice', f'"{username}')
        client = replicate.Client(api_token=token, base_url=live.url)
        exec(compile(code, "models.md", "exec"), {"client": client, "time": time})
    finally:
        corpora.close()
    text = capsys.readouterr().out.splitlines()[-1]
    # Text, not a generator's repr: twenty words of the corpus.
    assert len(text.split()) == 20 and set(text.split()) <= set(words.split())
