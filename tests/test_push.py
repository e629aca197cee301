"""Pushing models on the real stack: each example through the official client, content-hash
version ids, zip and multipart uploads, NDJSON progress, bad and unsafe archives, the
``replicant push`` CLI, hardware and system-package checks, and seeded models whose
environment builds on their first run.

Pushes go through ``POST /v1/models/{owner}/{name}/versions`` (our own endpoint, which
Replicate's spec does not describe) with a plain httpx client, and through ``replicant push``.
"""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
import zipfile
from pathlib import Path
from typing import Any

import httpx
import pytest

from api.push import WAITING_FOR_A_WORKER
from replicant.devstack import free_port
from replicant.envs import env_ready
from replicant.tables import Version
from replicant.versions import create_version, ensure_model, version_python
from tests.conftest import LiveStack
from tests.modelkit import (
    COG_YAML,
    EXAMPLES,
    Who,
    leftovers,
    model_row,
    pack,
    predict,
    push,
    pushed,
    someone,
    version_dirs,
    write_model,
)
from tests.test_envs import make_wheel


def test_push_each_example_then_run_it_through_the_official_client(live: LiveStack) -> None:
    alice = someone(live, "pusher")
    official = alice.official(live)
    versions = {}
    for example in ("hello-world", "sleep", "ngram", "thumbnail"):
        ref = f"{alice.username}/{example}"
        versions[example] = pushed(live, alice, ref, EXAMPLES / example, create=True)
        model = official.models.get(ref)
        assert model.owner == alice.username and model.name == example
        assert model.visibility == "public"
        assert model.latest_version is not None
        assert model.latest_version.id == versions[example]
        listed = [v.id for v in official.models.get(ref).versions.list()]
        assert listed == [versions[example]]
        version = official.models.get(ref).versions.get(versions[example])
        assert version.cog_version
        assert version.openapi_schema["components"]["schemas"]["Input"]["type"] == "object"

    hello = f"{alice.username}/hello-world"
    assert official.run(f"{hello}:{versions['hello-world']}", input={"text": "push"}) == (
        "hello push"
    )
    sleep = official.predictions.create(
        version=versions["sleep"], input={"seconds": 1.1}
    )  # by bare version id
    sleep.wait()
    assert sleep.status == "succeeded" and "slept" in sleep.output

    ngram = official.models.get(f"{alice.username}/ngram")
    schema = ngram.latest_version.openapi_schema["components"]["schemas"]
    assert schema["Output"]["x-cog-array-type"] == "iterator"
    assert "TrainingInput" in schema  # train() is part of the pushed version's schema
    generated = official.predictions.create(
        version=versions["ngram"], input={"prompt": "the", "max_tokens": 5, "seed": 1}
    )
    generated.wait()
    assert generated.status == "succeeded"
    assert isinstance(generated.output, list) and len(generated.output) == 5

    thumbnail = official.models.get(f"{alice.username}/thumbnail")
    schema = thumbnail.latest_version.openapi_schema["components"]["schemas"]
    assert schema["Input"]["required"] == ["image"]
    assert schema["Input"]["properties"]["image"]["format"] == "uri"
    assert schema["Input"]["properties"]["width"]["default"] == 128
    assert schema["Output"] == {"title": "Output", "type": "string", "format": "uri"}
    assert leftovers(live) == []


def test_the_version_id_is_the_content_hash(live: LiveStack, tmp_path: Path) -> None:
    alice = someone(live, "hasher")
    ref = f"{alice.username}/hello"
    src = write_model(tmp_path / "m", {"cog.yaml": COG_YAML})
    (src / "predict.py").write_text((EXAMPLES / "hello-world" / "predict.py").read_text())
    first = pushed(live, alice, ref, src, create=True)
    again = push(live, alice, ref, src)
    assert again.status_code == 200  # the same files: the same version, nothing new
    assert again.json()["id"] == first
    (src / "notes.txt").write_text("a change\n")
    second = pushed(live, alice, ref, src)
    assert second != first
    with alice.client(live) as api:
        assert api.get(f"/v1/models/{ref}").json()["latest_version"]["id"] == second
        listed = [v["id"] for v in api.get(f"/v1/models/{ref}/versions").json()["results"]]
    assert listed == [second, first]


def test_a_create_by_the_models_name_runs_the_version_just_pushed(
    live: LiveStack, tmp_path: Path
) -> None:
    # An API process reuses a model's latest version for creates by its name
    # (lookup_cache_ttl, ten minutes here); a push it waited for, whose build a worker
    # recorded, is run by the very next create all the same.
    alice = someone(live, "repusher")
    ref = f"{alice.username}/hello"
    src = write_model(tmp_path / "m", {"cog.yaml": COG_YAML})
    code = (EXAMPLES / "hello-world" / "predict.py").read_text()
    (src / "predict.py").write_text(code)
    port = free_port()
    url = live.stack.start_api("api-ttl", port, env={"REPLICANT_LOOKUP_CACHE_TTL": "600"})
    auth = {"Authorization": f"Bearer {alice.token}"}
    try:
        with httpx.Client(base_url=url, headers=auth, timeout=300) as api:

            def push_here(params: dict[str, str]) -> str:
                gzip = {"Content-Type": "application/gzip"}
                response = api.post(
                    f"/v1/models/{ref}/versions", content=pack(src), params=params, headers=gzip
                )
                assert response.status_code == 201, response.text
                version: str = response.json()["id"]
                return version

            def run(text: str) -> tuple[str, str]:
                response = api.post(
                    f"/v1/models/{ref}/predictions",
                    json={"input": {"text": text}},
                    headers={"Prefer": "wait"},
                )
                assert response.status_code == 201, response.text
                return response.json()["version"], response.json()["output"]

            first = push_here({"create": "true"})
            assert run("a") == (first, "hello a")
            (src / "predict.py").write_text(code.replace('"hello "', '"hi "'))
            second = push_here({})
            assert second != first
            assert run("b") == (second, "hi b")
    finally:
        live.stack.stop("api-ttl")


def test_push_a_zip_as_a_multipart_upload(live: LiveStack) -> None:
    alice = someone(live, "zipper")
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        for path in (EXAMPLES / "hello-world").iterdir():
            # Wrapped in one folder, as zipping a directory does.
            archive.write(path, f"hello-world/{path.name}")
    response = httpx.post(
        f"{live.url}/v1/models/{alice.username}/zipped/versions",
        params={"create": "true", "visibility": "private", "description": "from a zip"},
        files={"archive": ("model.zip", buffer.getvalue(), "application/zip")},
        headers={"Authorization": f"Bearer {alice.token}"},
        timeout=300,
    )
    assert response.status_code == 201, response.text
    with alice.client(live) as api:
        model = api.get(f"/v1/models/{alice.username}/zipped").json()
        assert model["visibility"] == "private"
        assert model["description"] == "from a zip"
        assert model["latest_version"]["id"] == response.json()["id"]
        ran = predict(api, f"{alice.username}/zipped", {"text": "zip"}).json()
    assert ran["output"] == "hello zip"


def test_push_streams_build_progress_as_ndjson(live: LiveStack, tmp_path: Path) -> None:
    alice = someone(live, "streamer")
    headers = {
        "Authorization": f"Bearer {alice.token}",
        "Accept": "application/x-ndjson",
        "Content-Type": "application/gzip",
    }
    url = f"{live.url}/v1/models/{alice.username}/streamed/versions"
    good = httpx.post(
        url,
        params={"create": "true"},
        content=pack(EXAMPLES / "sleep"),
        headers=headers,
        timeout=300,
    )
    assert good.status_code == 200
    assert good.headers["content-type"].startswith("application/x-ndjson")
    events = [json.loads(line) for line in good.text.splitlines()]
    assert {e["event"] for e in events[:-1]} == {"log"}
    assert any("schema" in e["message"] for e in events[:-1])
    assert events[-1]["event"] == "version" and events[-1]["status"] == 201
    assert events[-1]["version"]["openapi_schema"]["components"]["schemas"]["Input"]

    broken = write_model(
        tmp_path / "broken", {"cog.yaml": COG_YAML, "predict.py": "raise RuntimeError('kaput')\n"}
    )
    bad = httpx.post(url, content=pack(broken), headers=headers, timeout=300)
    events = [json.loads(line) for line in bad.text.splitlines()]
    assert events[-1]["event"] == "error" and events[-1]["status"] == 422
    assert "kaput" in events[-1]["detail"] and "Traceback" in events[-1]["detail"]
    with alice.client(live) as api:
        versions = api.get(f"/v1/models/{alice.username}/streamed/versions").json()["results"]
    assert [v["id"] for v in versions] == [events_id(good)]
    assert leftovers(live) == []


def events_id(response: httpx.Response) -> str:
    last = json.loads(response.text.splitlines()[-1])
    version_id: str = last["version"]["id"]
    return version_id


BROKEN_MODELS: dict[str, tuple[dict[str, str], str, list[str]]] = {
    "missing cog.yaml": (
        {"predict.py": "x = 1\n"},
        "cog.yaml",
        ["no cog.yaml"],
    ),
    "cog.yaml is not YAML": (
        {"cog.yaml": "predict: [unclosed\n", "predict.py": "x = 1\n"},
        "cog.yaml",
        ["not valid YAML"],
    ),
    "cog.yaml names no predictor": (
        {"cog.yaml": "build:\n  gpu: false\n", "predict.py": "x = 1\n"},
        "cog.yaml",
        ["missing predict"],
    ),
    "predictor fails to import": (
        {
            "cog.yaml": COG_YAML,
            "predict.py": "import helper\n",
            "helper.py": "import replicant_surely_missing_module\n",
        },
        "predictor",
        ["Traceback", "ModuleNotFoundError", "replicant_surely_missing_module", "helper.py"],
    ),
    "unsupported input type": (
        {
            "cog.yaml": COG_YAML,
            "predict.py": (
                "from cog import BasePredictor\n\n"
                "class Predictor(BasePredictor):\n"
                "    def predict(self, when: complex) -> str:\n"
                "        return str(when)\n"
            ),
        },
        "predictor",
        ["when"],
    ),
    "requirements fail to install": (
        {
            "cog.yaml": (
                'build:\n  python_version: "3.11"\n  python_requirements: requirements.txt\n'
                'predict: "predict.py:Predictor"\n'
            ),
            # --no-index: pip fails at once, without asking any package index.
            "requirements.txt": "--no-index\nreplicant-surely-missing-package==1.0\n",
            "predict.py": (EXAMPLES / "hello-world" / "predict.py").read_text(),
        },
        "build.python_packages",
        ["replicant-surely-missing-package"],
    ),
}


@pytest.mark.parametrize("case", list(BROKEN_MODELS))
def test_a_bad_push_fails_cleanly_and_leaves_nothing(
    live: LiveStack, tmp_path: Path, case: str
) -> None:
    files, field, in_detail = BROKEN_MODELS[case]
    alice = someone(live, "broken")
    ref = f"{alice.username}/broken"
    before = version_dirs(live)
    response = push(live, alice, ref, write_model(tmp_path / "m", files), create=True)
    assert response.status_code == 422, response.text
    assert response.headers["content-type"].startswith("application/problem+json")
    body = response.json()
    assert [f["field"] for f in body["invalid_fields"]] == [field]
    for text in in_detail:
        assert text in body["detail"]
    # Nothing half-created: no model, no version, no directory.
    with alice.client(live) as api:
        assert api.get(f"/v1/models/{ref}").status_code == 404
    assert version_dirs(live) == before
    assert leftovers(live) == []


def test_a_bad_push_to_an_existing_model_changes_nothing(live: LiveStack, tmp_path: Path) -> None:
    alice = someone(live, "keeper")
    ref = f"{alice.username}/kept"
    good = pushed(live, alice, ref, EXAMPLES / "hello-world", create=True)
    files, _, _ = BROKEN_MODELS["predictor fails to import"]
    response = push(live, alice, ref, write_model(tmp_path / "m", files))
    assert response.status_code == 422
    with alice.client(live) as api:
        assert api.get(f"/v1/models/{ref}").json()["latest_version"]["id"] == good
        listed = api.get(f"/v1/models/{ref}/versions").json()["results"]
        assert [v["id"] for v in listed] == [good]
        assert predict(api, ref, {"text": "still"}).json()["output"] == "hello still"


def test_replicant_push_cli(live: LiveStack, tmp_path: Path) -> None:
    alice = someone(live, "cli")
    ref = f"{alice.username}/sleeper"
    command = [sys.executable, "-m", "replicant.cli", "push"]
    auth = ["--url", live.url, "--token", alice.token]
    env = {**os.environ, "COLUMNS": "200"}
    done = subprocess.run(
        [
            *command,
            str(EXAMPLES / "sleep"),
            ref,
            "--create",
            "--private",
            "--hardware",
            "gpu-t4",
            *auth,
        ],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
        check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert "Uploading" in done.stdout
    # Until a worker takes the build, the pusher reads that it waits for one.
    assert done.stdout.index(WAITING_FOR_A_WORKER) < done.stdout.index("fetching the pushed")
    assert "deriving the schema from the predictor" in done.stdout
    with alice.client(live) as api:
        model = api.get(f"/v1/models/{ref}").json()
    assert f"Pushed {ref}:{model['latest_version']['id']}" in done.stdout
    assert model["visibility"] == "private"
    assert model_row(live, ref).hardware == "gpu-t4"

    files, _, _ = BROKEN_MODELS["predictor fails to import"]
    broken = write_model(tmp_path / "broken", files)
    failed = subprocess.run(
        [*command, str(broken), ref, *auth],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
        check=False,
    )
    assert failed.returncode == 1
    assert "Push failed" in failed.stdout
    assert "Traceback" in failed.stdout and "replicant_surely_missing_module" in failed.stdout


def ndjson_push(live: LiveStack, who: Who, ref: str, src: Path, **params: Any) -> list[Any]:
    """Push with streamed progress; the events, the outcome last."""
    query = {k: str(v).lower() if isinstance(v, bool) else str(v) for k, v in params.items()}
    response = httpx.post(
        f"{live.url}/v1/models/{ref}/versions",
        content=pack(src),
        params=query,
        headers={
            "Authorization": f"Bearer {who.token}",
            "Accept": "application/x-ndjson",
            "Content-Type": "application/gzip",
        },
        timeout=300,
    )
    assert response.status_code == 200, response.text
    return [json.loads(line) for line in response.text.splitlines()]


def gpu_model(root: Path) -> Path:
    cog_yaml = 'build:\n  gpu: true\n  python_version: "3.11"\npredict: "predict.py:Predictor"\n'
    hello = (EXAMPLES / "hello-world" / "predict.py").read_text()
    return write_model(root, {"cog.yaml": cog_yaml, "predict.py": hello})


def test_a_gpu_model_is_refused_on_gpu_hardware_of_a_cpu_only_installation(
    live: LiveStack, tmp_path: Path
) -> None:
    alice = someone(live, "gpu")
    src = gpu_model(tmp_path / "gpu")
    refused = push(live, alice, f"{alice.username}/big", src, create=True, hardware="gpu-t4")
    assert refused.status_code == 422
    body = refused.json()
    assert "build.gpu is true" in body["detail"] and "no GPU" in body["detail"]
    assert "hardware to cpu" in body["detail"]
    assert body["invalid_fields"][0]["field"] == "cog.yaml"
    assert leftovers(live) == []
    with alice.client(live) as api:
        assert api.get(f"/v1/models/{alice.username}/big").status_code == 404
    # On the cpu hardware it runs on the CPU, as Cog's GPU models with a CPU fallback do.
    version = pushed(live, alice, f"{alice.username}/small", src, create=True, hardware="cpu")
    output = alice.official(live).run(f"{alice.username}/small:{version}", input={"text": "gpu"})
    assert output == "hello gpu"


def test_a_model_on_gpu_hardware_of_a_cpu_only_installation_is_told_it_runs_on_the_cpu(
    live: LiveStack, tmp_path: Path
) -> None:
    alice = someone(live, "gpu-on-cpu")
    cog_yaml = 'predict: "predict.py:Predictor"\n'
    hello = (EXAMPLES / "hello-world" / "predict.py").read_text()
    src = write_model(tmp_path / "t4", {"cog.yaml": cog_yaml, "predict.py": hello})
    ref = f"{alice.username}/t4"
    events = ndjson_push(live, alice, ref, src, create=True, hardware="gpu-t4")
    assert events[-1]["event"] == "version"
    warnings = [e["message"] for e in events if "warning" in e.get("message", "")]
    assert warnings == [
        "warning: the model's hardware is gpu-t4, but this installation has no GPU: "
        "it runs on the CPU"
    ]
    version = events[-1]["version"]["id"]
    assert alice.official(live).run(f"{ref}:{version}", input={"text": "t4"}) == "hello t4"


def test_system_packages_the_host_lacks_are_named_as_a_warning(
    live: LiveStack, tmp_path: Path
) -> None:
    alice = someone(live, "apt")
    cog_yaml = (
        "build:\n  system_packages:\n    - libgl1\n    - replicant-no-such-deb\n"
        'predict: "predict.py:Predictor"\n'
    )
    hello = (EXAMPLES / "hello-world" / "predict.py").read_text()
    src = write_model(tmp_path / "apt", {"cog.yaml": cog_yaml, "predict.py": hello})
    events = ndjson_push(live, alice, f"{alice.username}/apt", src, create=True)
    assert events[-1]["event"] == "version"
    warnings = [e["message"] for e in events if "warning" in e.get("message", "")]
    assert len(warnings) == 1
    assert "replicant-no-such-deb" in warnings[0] and "libgl1" not in warnings[0]


LAZY_MODEL = (
    "from cog import BasePredictor, Input\n\n\n"
    "class Predictor(BasePredictor):\n"
    "    def setup(self) -> None:\n"
    "        import replicant_test_pkg\n\n"
    "        self.value = replicant_test_pkg.VALUE\n\n"
    "    def predict(self, text: str = Input(default='x')) -> str:\n"
    "        return f'{text} {self.value}'\n"
)


def deferred_version(live: LiveStack, root: Path, requirements: str) -> tuple[str, Version]:
    """A version recorded the way built-in models are seeded: its env not built yet."""
    src = write_model(
        root,
        {
            "cog.yaml": (
                'build:\n  python_version: "3.11"\n  python_requirements: requirements.txt\n'
                'predict: "predict.py:Predictor"\n'
            ),
            "requirements.txt": requirements,
            "predict.py": LAZY_MODEL,
        },
    )
    owner = someone(live, "seeded").username
    model = ensure_model(live.engine, owner, root.name)
    version = create_version(live.settings, live.engine, model, src, defer_env=True)
    return f"{owner}/{root.name}", version


def test_a_seeded_model_is_recorded_at_once_and_its_first_run_builds_its_env(
    live: LiveStack, tmp_path: Path
) -> None:
    root = tmp_path / "lazy"
    root.mkdir()
    wheel = make_wheel(root)  # a package file of the model's own (outside it is refused)
    ref, version = deferred_version(live, root, f"./{wheel.name}\n")
    python = version_python(version)
    assert version.python and not env_ready(python)
    assert version.openapi_schema["components"]["schemas"]["Input"]["properties"]["text"]
    output = live.client().post(
        f"/v1/models/{ref}/predictions", json={"input": {"text": "v"}}, headers={"Prefer": "wait"}
    )
    assert output.status_code == 201, output.text
    body = live.wait_for(output.json()["id"], timeout=300)
    assert body["status"] == "succeeded", body
    assert body["output"] == "v 42"
    assert env_ready(python)


def test_a_seeded_model_whose_env_cannot_be_built_fails_its_predictions_saying_why(
    live: LiveStack, tmp_path: Path
) -> None:
    # --no-index: pip fails at once, without asking any package index.
    ref, version = deferred_version(
        live, tmp_path / "unbuildable", "--no-index\nreplicant-surely-missing-package==1.0\n"
    )
    assert not env_ready(version_python(version))
    created = live.client().post(f"/v1/models/{ref}/predictions", json={"input": {}})
    assert created.status_code == 201, created.text
    body = live.wait_for(created.json()["id"], timeout=300)
    assert body["status"] == "failed"
    assert body["error"].startswith("The model's environment could not be built")
    assert "replicant-surely-missing-package" in body["error"]
