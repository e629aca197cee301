"""Models written like Cog's own examples push and run unchanged.

Each model under ``tests/models/cog-*`` exercises what one of Cog's examples does (hello-world,
a streaming iterator, an image blur, async predict with concurrency, training with weights,
the type fixtures) and asks for ``python_version: "3.12"`` as they do. They are pushed with
``replicant push`` and run with the official client; the Python they run on is the 3.12 this
machine has (found as ``replicant.pythons`` finds it), or the host's with a warning.
"""

from __future__ import annotations

import base64
import io
import json
import os
import platform
import re
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
import replicate
from PIL import Image

from activities.predictions import model_cpu_threads
from replicant.accounts import create_account
from replicant.pythons import find_python
from tests.conftest import TERMINAL, LiveStack
from tests.trainkit import new_destination, wait_training

MODELS = Path(__file__).resolve().parent / "models"
NAMES = ["cog-hello", "cog-stream", "cog-blur", "cog-async", "cog-train", "cog-types"]
BUILD_TIMEOUT = 900


@dataclass
class Pushed:
    username: str
    token: str
    versions: dict[str, str]  # model name -> version id
    outputs: dict[str, str]  # model name -> what `replicant push` printed

    def ref(self, name: str) -> str:
        return f"{self.username}/{name}:{self.versions[name]}"

    def client(self, live: LiveStack) -> replicate.Client:
        return replicate.Client(api_token=self.token, base_url=live.url, timeout=120)


@pytest.fixture(scope="module")
def pushed(live: LiveStack) -> Pushed:
    """Every cog-* model pushed with `replicant push` by one fresh account."""
    username = f"cogex-{os.urandom(3).hex()}"
    _, token = create_account(live.engine, username)
    result = Pushed(username, token, {}, {})
    env = {**os.environ, "COLUMNS": "300"}
    for name in NAMES:
        done = subprocess.run(
            [sys.executable, "-m", "replicant.cli", "push", str(MODELS / name)]
            + [f"{username}/{name}", "--create", "--url", live.url, "--token", token],
            capture_output=True,
            text=True,
            env=env,
            timeout=BUILD_TIMEOUT,
            check=False,
        )
        assert done.returncode == 0, done.stdout + done.stderr
        match = re.search(rf"Pushed {re.escape(username)}/{name}:([0-9a-f]{{64}})", done.stdout)
        assert match, done.stdout
        result.versions[name] = match[1]
        result.outputs[name] = done.stdout
    return result


def expected_python() -> str:
    """The X.Y.Z a model asking for 3.12 runs on here."""
    found = find_python("3.12")
    return found.version if found is not None else platform.python_version()


def test_python_version_312_is_the_interpreter_this_machine_has(
    live: LiveStack, pushed: Pushed
) -> None:
    found = find_python("3.12")
    output = pushed.outputs["cog-types"]
    if found is not None:
        assert f"using Python {found.version} at {found.path}" in output
    else:
        assert "Python 3.12 is not installed here" in output
    png = Image.new("RGB", (3, 2), "blue")
    buffer = io.BytesIO()
    png.save(buffer, format="PNG")
    files = [
        "data:text/plain;base64," + base64.b64encode(b"four").decode(),
        "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode(),
    ]
    result = pushed.client(live).run(
        pushed.ref("cog-types"),
        input={"words": ["a", "b"], "numbers": [1, 2, 3], "files": files, "note": "n"},
    )
    assert result["python"] == expected_python()
    # The process is told its slot's share of the CPU (what onnxruntime should use).
    assert result["threads"] == str(model_cpu_threads(live.settings))
    assert result["count"] == 2 and result["ratio"] == 0.5 and result["flag"] is False
    assert result["color"] == "red" and result["note"] == "n"
    assert result["words"] == ["a", "b"] and result["numbers"] == [1, 2, 3]
    assert result["sizes"] == [4, len(buffer.getvalue())]
    echo = result["echo"]
    text = echo.read() if hasattr(echo, "read") else httpx.get(echo, timeout=60).content
    assert text == b"a b"


def test_type_fixtures_are_validated_from_the_schema(live: LiveStack, pushed: Pushed) -> None:
    with live.client(pushed.token) as api:
        schema = api.get(
            f"/v1/models/{pushed.username}/cog-types/versions/{pushed.versions['cog-types']}"
        ).json()["openapi_schema"]["components"]["schemas"]
        inputs = schema["Input"]["properties"]
        assert inputs["words"]["type"] == "array" and inputs["words"]["items"]["type"] == "string"
        assert inputs["files"]["items"]["format"] == "uri"
        assert sorted(schema["Input"]["required"]) == ["files", "numbers", "words"]
        good = {"words": ["a"], "numbers": [1], "files": []}
        for wrong, field in (({"numbers": ["x"]}, "numbers.0"), ({"color": "blue"}, "color")):
            bad = api.post(
                "/v1/predictions",
                json={"version": pushed.versions["cog-types"], "input": {**good, **wrong}},
            )
            assert bad.status_code == 422
            assert [f["field"] for f in bad.json()["invalid_fields"]] == [field], bad.json()


def test_a_secret_input_reaches_the_model_and_is_redacted_after(
    live: LiveStack, pushed: Pushed
) -> None:
    prediction = pushed.client(live).predictions.create(
        version=pushed.versions["cog-types"],
        input={"words": [], "numbers": [], "files": [], "token": "r8_very_secret"},
    )
    body = live.wait_for(prediction.id, token=pushed.token)
    assert body["status"] == "succeeded", body
    assert body["output"]["token_length"] == len("r8_very_secret")
    # As on Replicate, the prediction shows the secret redacted once it was sent.
    assert body["input"]["token"] == "**********"
    assert "r8_very_secret" not in json.dumps(body)


def test_hello_world(live: LiveStack, pushed: Pushed) -> None:
    assert pushed.client(live).run(pushed.ref("cog-hello"), input={"text": "cog"}) == "hello cog"


def test_a_streaming_iterator_streams_its_tokens(live: LiveStack, pushed: Pushed) -> None:
    client = pushed.client(live)
    events = list(client.stream(pushed.ref("cog-stream"), input={"prompt": "go", "repeats": 4}))
    assert [str(e) for e in events if e.event.value == "output"] == ["go0 ", "go1 ", "go2 ", "go3 "]
    assert events[-1].event.value == "done"


def test_an_image_blur_takes_and_returns_a_path(live: LiveStack, pushed: Pushed) -> None:
    image = Image.new("L", (40, 20), 0)
    image.paste(255, (20, 0, 40, 20))  # a sharp black/white edge down the middle
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    client = pushed.client(live)

    def blurred(radius: float) -> Image.Image:
        buffer.seek(0)
        output = client.run(pushed.ref("cog-blur"), input={"image": buffer, "blur": radius})
        data = output.read() if hasattr(output, "read") else httpx.get(output, timeout=60).content
        return Image.open(io.BytesIO(data)).convert("L")

    sharp, soft = blurred(0), blurred(4)
    assert sharp.size == soft.size == (40, 20)
    assert sharp.getpixel((19, 10)) == 0 and sharp.getpixel((20, 10)) == 255
    edge = [soft.getpixel((x, 10)) for x in range(17, 23)]
    assert all(0 < value < 255 for value in edge), edge  # the edge is now a ramp


def test_async_predict_serves_concurrent_predictions(live: LiveStack, pushed: Pushed) -> None:
    client = pushed.client(live)
    version = pushed.versions["cog-async"]
    names = [f"n{i}" for i in range(4)]
    predictions = [
        client.predictions.create(version=version, input={"name": name, "chunks": 3})
        for name in names
    ]
    with ThreadPoolExecutor(4) as pool:
        done = list(pool.map(lambda p: live.wait_for(p.id, token=pushed.token), predictions))
    for name, body in zip(names, done, strict=True):
        assert body["status"] == "succeeded", body
        assert body["output"] == [f"{name}-0", f"{name}-1", f"{name}-2"]


def test_training_makes_weights_the_new_version_loads(live: LiveStack, pushed: Pushed) -> None:
    client = pushed.client(live)
    destination = new_destination(live, pushed.token, f"greeter-{os.urandom(2).hex()}")
    training = client.trainings.create(
        model=f"{pushed.username}/cog-train",
        version=pushed.versions["cog-train"],
        input={"prefix": "howdy"},
        destination=destination,
    )
    wait_training(training, timeout=BUILD_TIMEOUT)
    assert training.status == "succeeded", (training.error, training.logs)
    trained = training.output["version"]
    assert trained.startswith(destination + ":")
    assert client.run(trained, input={"text": "partner"}) == "howdy partner"
    # The base version still says hello.
    assert client.run(pushed.ref("cog-train"), input={"text": "partner"}) == "hello partner"
    assert training.status in TERMINAL
