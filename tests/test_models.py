"""Models, versions and hardware on the real stack: pushing, visibility, delete rules, queues.

Through the official ``replicate`` client where it has the call, httpx elsewhere. Pushes go
through ``POST /v1/models/{owner}/{name}/versions`` (our own endpoint, which Replicate's
spec does not describe) with a plain httpx client, and through ``replicant push``.
"""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
import tarfile
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
import replicate
from fastapi.testclient import TestClient
from replicate.exceptions import ReplicateError
from sqlmodel import Session, select

from api.app import create_app
from replicant.accounts import create_account
from replicant.archives import ArchiveError, ArchiveTooLarge, pack_model, unpack_model
from replicant.envs import env_ready
from replicant.ids import new_id
from replicant.settings import Settings
from replicant.tables import Deployment, Model, Version
from replicant.temporal import connect
from replicant.versions import create_version, ensure_model, version_python
from tests.conftest import LiveStack
from tests.test_cogmodel import make_wheel
from tests.workflow_runs import all_events, run_histories
from workers.main import build_workers, run_worker
from workers.runners import RunnerPool

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"
COG_YAML = 'build:\n  python_version: "3.11"\npredict: "predict.py:Predictor"\n'
PID_MODEL = (
    "import os\n\n"
    "from cog import BasePredictor\n\n\n"
    "class Predictor(BasePredictor):\n"
    "    def predict(self) -> int:\n"
    "        return os.getpid()\n"
)


@dataclass
class Who:
    username: str
    token: str

    def client(self, live: LiveStack) -> httpx.Client:
        return live.client(self.token)

    def official(self, live: LiveStack) -> replicate.Client:
        return replicate.Client(api_token=self.token, base_url=live.url)


def someone(live: LiveStack, prefix: str) -> Who:
    username = f"{prefix}-{os.urandom(3).hex()}"
    _, token = create_account(live.engine, username)
    return Who(username, token)


def pack(src: Path) -> bytes:
    buffer = io.BytesIO()
    pack_model(src, buffer)
    return buffer.getvalue()


def write_model(root: Path, files: dict[str, str]) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    for name, text in files.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_text(text)
    return root


def tar_of(entries: list[tarfile.TarInfo], data: dict[str, bytes] | None = None) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as tar:
        for info in entries:
            payload = (data or {}).get(info.name)
            if payload is not None:
                info.size = len(payload)
            tar.addfile(info, io.BytesIO(payload) if payload is not None else None)
    return buffer.getvalue()


def push(live: LiveStack, who: Who, ref: str, src: Path | bytes, **params: Any) -> httpx.Response:
    body = pack(src) if isinstance(src, Path) else src
    query = {k: str(v).lower() if isinstance(v, bool) else str(v) for k, v in params.items()}
    return httpx.post(
        f"{live.url}/v1/models/{ref}/versions",
        content=body,
        params=query,
        headers={"Authorization": f"Bearer {who.token}", "Content-Type": "application/gzip"},
        timeout=300,
    )


def pushed(live: LiveStack, who: Who, ref: str, src: Path | bytes, **params: Any) -> str:
    response = push(live, who, ref, src, **params)
    assert response.status_code == 201, response.text
    version: str = response.json()["id"]
    return version


def leftovers(live: LiveStack) -> list[str]:
    """Scratch and staging directories: a finished push, good or bad, leaves none."""
    data = live.settings.data_dir.resolve()
    found = [*(data / "versions").glob(".staging-*")]
    if (data / "uploads").exists():
        found += [*(data / "uploads").iterdir()]
    return sorted(p.name for p in found)


def version_dirs(live: LiveStack) -> set[str]:
    return {p.name for p in (live.settings.data_dir.resolve() / "versions").iterdir()}


def predict(client: httpx.Client, ref: str, input: dict[str, Any]) -> httpx.Response:
    return client.post(
        f"/v1/models/{ref}/predictions", json={"input": input}, headers={"Prefer": "wait"}
    )


def model_row(live: LiveStack, ref: str) -> Model:
    owner, name = ref.split("/")
    with Session(live.engine) as session:
        model = session.exec(select(Model).where(Model.owner == owner, Model.name == name)).one()
    return model


# --- pushing -------------------------------------------------------------------------------


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


def _member(name: str, kind: bytes = tarfile.REGTYPE, link: str = "") -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type = kind
    info.linkname = link
    return info


@pytest.mark.parametrize(
    ("archive", "message"),
    [
        (tar_of([_member("../escaped.py")], {"../escaped.py": b"x"}), "'..'"),
        (tar_of([_member("a/../../escaped.py")], {"a/../../escaped.py": b"x"}), "'..'"),
        (tar_of([_member("/tmp/escaped.py")], {"/tmp/escaped.py": b"x"}), "absolute"),
        (tar_of([_member("cog.yaml", tarfile.SYMTYPE, "/etc/passwd")]), "links"),
        (tar_of([_member("cog.yaml", tarfile.LNKTYPE, "/etc/passwd")]), "links"),
        (b"this is not an archive", "not a .tar.gz"),
        (b"", "no body"),
    ],
    ids=["dotdot", "nested-dotdot", "absolute", "symlink", "hardlink", "garbage", "empty"],
)
def test_unsafe_or_damaged_archives_are_refused(
    live: LiveStack, archive: bytes, message: str
) -> None:
    alice = someone(live, "unsafe")
    response = push(live, alice, f"{alice.username}/unsafe", archive, create=True)
    assert response.status_code == 422, response.text
    body = response.json()
    assert body["invalid_fields"][0]["field"] == "archive"
    assert message in body["detail"]
    data = live.settings.data_dir.resolve()
    assert not (data / "escaped.py").exists() and not (data / "uploads" / "escaped.py").exists()
    assert leftovers(live) == []


def test_oversized_archives_are_refused(tmp_path: Path) -> None:
    """Limits, on an app of its own with a small ``max_push_bytes`` (no Temporal needed)."""
    settings = Settings(data_dir=tmp_path / "data", max_push_bytes=64 * 1024)
    app = create_app(settings)
    username = "big"
    _, token = create_account(app.state.replicant.engine, username)
    headers = {"Authorization": f"Bearer {token}", "Content-Type": "application/gzip"}
    url = f"/v1/models/{username}/big/versions?create=true"
    bomb = tar_of(
        [_member("cog.yaml"), _member("weights.bin")],
        {
            "cog.yaml": COG_YAML.encode(),
            "weights.bin": b"\0" * (1024 * 1024),  # compresses to ~1 kB, unpacks past the limit
        },
    )
    assert len(bomb) < settings.max_push_bytes
    with TestClient(app) as client:
        too_big = client.post(url, content=os.urandom(settings.max_push_bytes + 1), headers=headers)
        assert too_big.status_code == 413
        unpacks_too_big = client.post(url, content=bomb, headers=headers)
        assert unpacks_too_big.status_code == 413
        assert "too large" in unpacks_too_big.json()["detail"]
        assert client.get(f"/v1/models/{username}/big", headers=headers).status_code == 404
    assert list((settings.data_dir / "uploads").iterdir()) == []


def test_unpacking_stops_at_the_byte_limit_and_leaves_the_target_empty(tmp_path: Path) -> None:
    archive = tmp_path / "bomb.zip"
    with zipfile.ZipFile(archive, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        zf.writestr("cog.yaml", COG_YAML)
        zf.writestr("weights.bin", b"\0" * 200_000)
    target = tmp_path / "out"
    target.mkdir()
    with pytest.raises(ArchiveTooLarge):
        unpack_model(archive, target, max_bytes=100_000)
    assert list(target.iterdir()) == []
    with pytest.raises(ArchiveError, match="links"):
        unpack_model(_symlink_zip(tmp_path), target, max_bytes=100_000)


def _symlink_zip(tmp_path: Path) -> Path:
    path = tmp_path / "link.zip"
    with zipfile.ZipFile(path, "w") as zf:
        info = zipfile.ZipInfo("cog.yaml")
        info.external_attr = 0o120777 << 16  # a symlink, as `zip --symlinks` stores it
        zf.writestr(info, "/etc/passwd")
    return path


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
    wheel = make_wheel(tmp_path)
    ref, version = deferred_version(live, tmp_path / "lazy", f"{wheel}\n")
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


# --- visibility ----------------------------------------------------------------------------


def _hidden_from(live: LiveStack, who: Who, ref: str, version: str) -> None:
    """Everything about ``ref`` answers 404 for ``who``: it might as well not exist."""
    with who.client(live) as api:
        assert api.get(f"/v1/models/{ref}").status_code == 404
        assert api.get(f"/v1/models/{ref}/versions").status_code == 404
        assert api.get(f"/v1/models/{ref}/versions/{version}").status_code == 404
        assert predict(api, ref, {"text": "x"}).status_code == 404
        for by in (version, f"{ref}:{version}"):
            created = api.post("/v1/predictions", json={"version": by, "input": {"text": "x"}})
            assert created.status_code == 404
        assert api.patch(f"/v1/models/{ref}", json={"description": "mine now"}).status_code == 404
        assert api.delete(f"/v1/models/{ref}").status_code == 404
        assert api.delete(f"/v1/models/{ref}/versions/{version}").status_code == 404
    assert push(live, who, ref, EXAMPLES / "hello-world").status_code == 404
    with pytest.raises(ReplicateError) as caught:
        who.official(live).models.get(ref)
    assert caught.value.status == 404
    listed = [f"{m.owner}/{m.name}" for m in _all_models(who.official(live))]
    assert ref not in listed


def _all_models(client: replicate.Client) -> list[Any]:
    page = client.models.list()
    models = list(page.results)
    while page.next:
        page = client.models.list(cursor=page.next)
        models += page.results
    return models


def test_a_private_model_is_invisible_to_other_accounts(live: LiveStack) -> None:
    alice, bob = someone(live, "alice"), someone(live, "bob")
    ref = f"{alice.username}/secret"
    version = pushed(live, alice, ref, EXAMPLES / "hello-world", create=True, visibility="private")
    _hidden_from(live, bob, ref, version)
    # The owner sees and runs it.
    with alice.client(live) as api:
        assert api.get(f"/v1/models/{ref}").json()["visibility"] == "private"
        assert predict(api, ref, {"text": "me"}).json()["output"] == "hello me"
    assert ref in [f"{m.owner}/{m.name}" for m in _all_models(alice.official(live))]


def test_making_a_public_model_private_cuts_access_at_once(live: LiveStack) -> None:
    alice, bob = someone(live, "alice"), someone(live, "bob")
    ref = f"{alice.username}/was-public"
    version = pushed(live, alice, ref, EXAMPLES / "hello-world", create=True)
    with bob.client(live) as api:
        assert api.get(f"/v1/models/{ref}").status_code == 200
        assert predict(api, ref, {"text": "bob"}).json()["output"] == "hello bob"
        # Someone else's public model: visible, but not bob's to change.
        assert api.patch(f"/v1/models/{ref}", json={"description": "x"}).status_code == 403
    with alice.client(live) as api:
        changed = api.patch(f"/v1/models/{ref}", json={"visibility": "private"})
        assert changed.status_code == 200 and changed.json()["visibility"] == "private"
    _hidden_from(live, bob, ref, version)


# --- delete rules --------------------------------------------------------------------------


def test_model_delete_rules(live: LiveStack) -> None:
    alice, bob = someone(live, "alice"), someone(live, "bob")
    ref = f"{alice.username}/doomed"
    model = alice.official(live).models.create(
        owner=alice.username, name="doomed", visibility="public", hardware="cpu"
    )
    assert model.latest_version is None and model.run_count == 0
    with bob.client(live) as api:
        refused = api.delete(f"/v1/models/{ref}")
        assert refused.status_code == 403  # public: bob may know it exists, not delete it
    with alice.client(live) as api:
        public = api.delete(f"/v1/models/{ref}")
        assert public.status_code == 409 and "private" in public.json()["detail"]
        api.patch(f"/v1/models/{ref}", json={"visibility": "private"})
    with bob.client(live) as api:
        assert api.delete(f"/v1/models/{ref}").status_code == 404
    version = pushed(live, alice, ref, EXAMPLES / "hello-world")
    with alice.client(live) as api:
        has_versions = api.delete(f"/v1/models/{ref}")
        assert has_versions.status_code == 409 and "versions" in has_versions.json()["detail"]
        assert api.delete(f"/v1/models/{ref}/versions/{version}").status_code == 202
    assert alice.official(live).models.delete(ref) is True
    with alice.client(live) as api:
        assert api.get(f"/v1/models/{ref}").status_code == 404


def test_version_delete_rules(live: LiveStack, tmp_path: Path) -> None:
    alice, bob = someone(live, "alice"), someone(live, "bob")
    ref = f"{alice.username}/versioned"
    src = write_model(tmp_path / "m", {"cog.yaml": COG_YAML})
    (src / "predict.py").write_text((EXAMPLES / "hello-world" / "predict.py").read_text())

    def new_version(tag: str) -> str:
        (src / "tag.txt").write_text(tag)
        return pushed(live, alice, ref, src, create=True)

    def delete(version: str, token: Who = alice) -> httpx.Response:
        with token.client(live) as api:
            return api.delete(f"/v1/models/{ref}/versions/{version}")

    ran_by_bob = new_version("1")
    public = delete(ran_by_bob)
    assert public.status_code == 409 and "private" in public.json()["detail"]
    with bob.client(live) as api:
        assert predict(api, ref, {"text": "bob"}).json()["status"] == "succeeded"
    assert delete(ran_by_bob, bob).status_code == 403  # public and not his
    with alice.client(live) as api:
        api.patch(f"/v1/models/{ref}", json={"visibility": "private"})
    assert delete(ran_by_bob, bob).status_code == 404  # now he cannot even see it
    others_ran = delete(ran_by_bob)
    assert others_ran.status_code == 409
    assert "other than you" in others_ran.json()["detail"]

    base = new_version("2")
    tuned = alice.official(live).models.create(
        owner=alice.username, name="versioned-tuned", visibility="private", hardware="cpu"
    )
    with Session(live.engine) as session:
        tuned_row = session.exec(
            select(Model).where(Model.owner == alice.username, Model.name == tuned.name)
        ).one()
        session.add(
            Version(
                id=new_id(),
                model_id=tuned_row.id or 0,
                base_version_id=base,
                weights_url="http://127.0.0.1/weights.json",
            )
        )
        session.commit()
    fine_tuned = delete(base)
    assert fine_tuned.status_code == 409 and "fine-tune" in fine_tuned.json()["detail"]

    deployed = new_version("3")
    with Session(live.engine) as session:
        session.add(
            Deployment(
                owner=alice.username, name=f"dep-{new_id()[:8]}", model=ref, version=deployed
            )
        )
        session.commit()
    in_deployment = delete(deployed)
    assert in_deployment.status_code == 409
    assert "deployment" in in_deployment.json()["detail"]

    mine = new_version("4")
    with alice.client(live) as api:
        assert predict(api, ref, {"text": "own runs do not count"}).json()["version"] == mine
    # 202, as Replicate's spec has it (the official client expects 204 and answers False).
    assert delete(mine).status_code == 202
    with alice.client(live) as api:
        assert api.get(f"/v1/models/{ref}/versions/{mine}").status_code == 404
        # The newest version left becomes the latest.
        assert api.get(f"/v1/models/{ref}").json()["latest_version"]["id"] == deployed
        missing = api.delete(f"/v1/models/{ref}/versions/{'0' * 64}")
        assert missing.status_code == 404


# --- hardware ------------------------------------------------------------------------------


def test_hardware_list_is_the_configured_skus(live: LiveStack) -> None:
    listed = replicate.Client(api_token=live.token, base_url=live.url).hardware.list()
    assert [h.sku for h in listed] == list(live.settings.hardware)
    names = live.settings.hardware_names
    assert [h.name for h in listed] == [names.get(sku, sku) for sku in live.settings.hardware]


def test_hardware_slots_come_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("REPLICANT_HARDWARE", '{"cpu": 3, "gpu-a100-large": 2}')
    assert Settings().hardware == {"cpu": 3, "gpu-a100-large": 2}


def test_unknown_hardware_is_refused(live: LiveStack) -> None:
    alice = someone(live, "alice")
    with pytest.raises(ReplicateError) as caught:
        alice.official(live).models.create(
            owner=alice.username, name="nowhere", visibility="public", hardware="gpu-h9000"
        )
    assert caught.value.status == 422
    ref = f"{alice.username}/somewhere"
    pushed(live, alice, ref, EXAMPLES / "hello-world", create=True)
    with alice.client(live) as api:
        patched = api.patch(f"/v1/models/{ref}", json={"hardware": "gpu-h9000"})
        assert patched.status_code == 422
        assert patched.json()["invalid_fields"][0]["field"] == "hardware"
        assert api.get(f"/v1/models/{alice.username}/nowhere").status_code == 404
    refused = push(
        live,
        alice,
        f"{alice.username}/nowhere",
        EXAMPLES / "hello-world",
        create=True,
        hardware="gpu-h9000",
    )
    assert refused.status_code == 422
    assert model_row(live, ref).hardware == "cpu"


async def _run_queue(live: LiveStack, prediction_id: str) -> str:
    """The task queue the workflow scheduled the prediction's run activity on."""
    client = await connect(live.settings)
    queues = [
        event.activity_task_scheduled_event_attributes.task_queue.name
        for event in await all_events(client, f"prediction-{prediction_id}")
        if event.HasField("activity_task_scheduled_event_attributes")
        and event.activity_task_scheduled_event_attributes.activity_type.name == "run_prediction"
    ]
    assert len(queues) == 1, queues
    return queues[0]


async def _workflow_queue(live: LiveStack, prediction_id: str) -> str:
    client = await connect(live.settings)
    # The first run's queue: the after-life continues on the orchestration queue.
    first = (await run_histories(client, f"prediction-{prediction_id}"))[0]
    queue: str = first.events[0].workflow_execution_started_event_attributes.task_queue.name
    return queue


async def test_changing_hardware_routes_new_predictions_to_its_queue(live: LiveStack) -> None:
    alice = someone(live, "mover")
    ref = f"{alice.username}/mover"
    pushed(live, alice, ref, EXAMPLES / "hello-world", create=True, hardware="cpu")
    with alice.client(live) as api:
        before = predict(api, ref, {"text": "cpu"}).json()
        assert before["output"] == "hello cpu"
        patched = api.patch(f"/v1/models/{ref}", json={"hardware": "gpu-t4"})
        assert patched.status_code == 200
        after = predict(api, ref, {"text": "t4"}).json()
        assert after["output"] == "hello t4"
    assert await _run_queue(live, before["id"]) == "replicant-hw-cpu"
    assert await _run_queue(live, after["id"]) == "replicant-hw-gpu-t4"
    # The workflow itself runs on that queue too, so its worker takes the run at once.
    assert await _workflow_queue(live, after["id"]) == "replicant-hw-gpu-t4"


async def test_a_worker_started_for_one_sku_serves_only_that_queue(live: LiveStack) -> None:
    client = await connect(live.settings)
    pool = RunnerPool(max_warm=1)
    only_t4 = build_workers(
        client, live.settings, live.engine, pool, orchestration=False, hardware=["gpu-t4"]
    )
    assert [w.task_queue for w in only_t4] == ["replicant-hw-gpu-t4"]
    # A client may hold one worker per task queue: the second set gets a client of its own.
    other_client = await connect(live.settings)
    everything = build_workers(other_client, live.settings, live.engine, pool)
    assert [w.task_queue for w in everything] == [
        live.settings.orchestration_queue,
        live.settings.build_queue,
        *(f"replicant-hw-{sku}" for sku in live.settings.hardware),
    ]
    with pytest.raises(SystemExit, match="unknown hardware: gpu-h9000"):
        await run_worker(live.settings, hardware=["gpu-h9000"])


# --- run count and warm pool ---------------------------------------------------------------


def test_run_count_counts_created_predictions(live: LiveStack) -> None:
    alice, bob = someone(live, "counter"), someone(live, "bob")
    ref = f"{alice.username}/counted"
    version = pushed(live, alice, ref, EXAMPLES / "hello-world", create=True)
    assert alice.official(live).models.get(ref).run_count == 0
    with alice.client(live) as api:
        assert predict(api, ref, {"text": "1"}).status_code == 201
        assert predict(api, ref, {}).status_code == 422  # refused: not a run
    with bob.client(live) as api:
        assert predict(api, ref, {"text": "2"}).status_code == 201
    bob.official(live).run(f"{ref}:{version}", input={"text": "3"})
    assert alice.official(live).models.get(ref).run_count == 3
    listed = {f"{m.owner}/{m.name}": m for m in _all_models(alice.official(live))}
    assert listed[ref].run_count == 3


def test_least_recently_used_model_process_is_evicted_and_boots_again(
    live: LiveStack, tmp_path: Path
) -> None:
    alice = someone(live, "warm")
    src = write_model(tmp_path / "pid", {"cog.yaml": COG_YAML, "predict.py": PID_MODEL})
    first = f"{alice.username}/pid-0"
    pushed(live, alice, first, src, create=True)
    with alice.client(live) as api:
        booted = predict(api, first, {}).json()["output"]
        assert predict(api, first, {}).json()["output"] == booted  # warm: the same process
        # As many other versions as the worker keeps warm push the first one out.
        for i in range(1, live.settings.max_warm_runners + 1):
            other = f"{alice.username}/pid-{i}"
            pushed(live, alice, other, src, create=True)
            assert predict(api, other, {}).json()["status"] == "succeeded"
        again = predict(api, first, {}).json()
    assert again["status"] == "succeeded"
    assert again["output"] != booted  # evicted, so a new process booted for it
