"""What a Cog 0.17-0.23 model declares, read at push and when its process starts, as Cog
reads it.

Each model under ``tests/models/`` here mirrors one of Cog's own integration tests (named in
its cog.yaml): schemas as ``cog build`` writes them (a TypedDict output, an optional Secret,
the required list), what Cog refuses at build (``accept=`` on a str, ``@cog.concurrent`` on a
plain function) refused at push with Cog's reason, ``@cog.concurrent(max=N)`` sizing the
process, cog.yaml's ``environment:`` (``COG_SETUP_TIMEOUT`` among it), local package files in
``python_requirements``, ``sys.exit()`` in a run, a trainer class with no ``predict``
whose ``str`` output becomes the weights, a cog.yaml with ``train:`` alone, and managed
weights (``weights:``) from each source Replicant fetches, an organization's files among
them, and their objects removed once no version refers to them. Each is pushed to the shared stack
and run with the official client.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import http.server
import io
import json
import os
import shutil
import tarfile
import threading
import zipfile
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import pytest
import replicate
from sqlmodel import Session, col, select
from temporalio.testing import ActivityEnvironment

from activities.expiry import ExpiryActivities
from activities.predictions import model_concurrency
from replicant.accounts import add_member, create_organization, create_token
from replicant.contracts import ExpireFiles
from replicant.managedweights import read_manifest
from replicant.objectkeys import managed_weight_file
from replicant.storage import open_store
from replicant.tables import ManagedWeightRef
from tests.conftest import LiveStack
from tests.modelkit import Who, push, someone, write_model
from tests.receiver import Delivery, running_receiver
from tests.trainkit import new_destination, wait_training

MODELS = Path(__file__).resolve().parent / "models"
BUILD_TIMEOUT = 600


@pytest.fixture(scope="module")
def who(live: LiveStack) -> Who:
    return someone(live, "cogfeat")


def pushed(live: LiveStack, who: Who, name: str, src: Path | None = None) -> str:
    """Push ``tests/models/<name>`` (or ``src``) as ``<who>/<name>``; its version id."""
    response = push(live, who, f"{who.username}/{name}", src or MODELS / name, create=True)
    assert response.status_code == 201, response.text
    version: str = response.json()["id"]
    return version


def refused(live: LiveStack, who: Who, name: str, src: Path | None = None) -> dict[str, Any]:
    """The problem body of a push that must be refused (422)."""
    response = push(live, who, f"{who.username}/{name}", src or MODELS / name, create=True)
    assert response.status_code == 422, response.text
    body: dict[str, Any] = response.json()
    return body


def client(live: LiveStack, who: Who) -> replicate.Client:
    return replicate.Client(api_token=who.token, base_url=live.url, timeout=120)


def train_to_end(
    live: LiveStack,
    who: Who,
    model: str,
    version: str,
    input: dict[str, Any],
    name: str,
    **extra: Any,
) -> Any:
    """A training of ``who``'s ``model`` into a new destination ``name``, run to its end
    through the official client; it must succeed."""
    training = client(live, who).trainings.create(
        model=f"{who.username}/{model}",
        version=version,
        input=input,
        destination=new_destination(live, who.token, name),
        **extra,
    )
    wait_training(training, timeout=BUILD_TIMEOUT)
    assert training.status == "succeeded", (training.error, training.logs)
    return training


def components(live: LiveStack, who: Who, name: str, version: str) -> dict[str, Any]:
    with who.client(live) as api:
        answer = api.get(f"/v1/models/{who.username}/{name}/versions/{version}")
    assert answer.status_code == 200, answer.text
    schemas: dict[str, Any] = answer.json()["openapi_schema"]["components"]["schemas"]
    return schemas


# -- schemas as `cog build` writes them ------------------------------------------------------


def test_a_typeddict_output_lists_its_fields_and_required_keys(live: LiveStack, who: Who) -> None:
    version = pushed(live, who, "cog-typeddict")
    assert components(live, who, "cog-typeddict", version)["Output"] == {
        "title": "Output",
        "type": "object",
        "properties": {
            "name": {"type": "string", "title": "Name"},
            "count": {"type": "integer", "title": "Count"},
        },
        "required": ["name"],
    }
    output = client(live, who).run(f"{who.username}/cog-typeddict:{version}", input={})
    assert output == {"name": "alice", "count": 3}


def test_an_optional_secret_is_nullable_and_the_seed_idiom_is_required(
    live: LiveStack, who: Who
) -> None:
    version = pushed(live, who, "cog-secret-optional")
    schema = components(live, who, "cog-secret-optional", version)["Input"]
    api_key = schema["properties"]["api_key"]
    assert api_key["format"] == "password" and api_key["x-cog-secret"] is True
    assert api_key["nullable"] is True and api_key["default"] is None
    # Cog's static generator: a bare Secret stays required, and so does `seed: int =
    # Input(default=None)` (None on a non-nullable input is no default).
    assert schema["required"] == ["prompt", "api_key_required", "seed"]
    ref = f"{who.username}/cog-secret-optional:{version}"
    output = client(live, who).run(ref, input={"prompt": "hi", "api_key_required": "k", "seed": 7})
    assert output == "hi key=none seed=7"
    with who.client(live) as api:
        answer = api.post(
            "/v1/predictions",
            json={"version": version, "input": {"prompt": "hi", "api_key_required": "k"}},
        )
    assert answer.status_code == 422, answer.text
    assert [f["field"] for f in answer.json()["invalid_fields"]] == ["seed"]


# -- what Cog refuses at build ---------------------------------------------------------------


def test_accept_on_a_str_input_is_refused_with_cogs_reason(live: LiveStack, who: Who) -> None:
    body = refused(live, who, "cog-accept-str")
    assert [f["field"] for f in body["invalid_fields"]] == ["predictor"]
    assert "accept is only valid on Path or File inputs (parameter 'name')" in body["detail"]


def test_cog_concurrent_on_a_plain_run_is_refused_with_cogs_reason(
    live: LiveStack, who: Who
) -> None:
    body = refused(live, who, "cog-concurrent-sync")
    assert [f["field"] for f in body["invalid_fields"]] == ["predictor"]
    reason = "@cog.concurrent(max > 1) requires an async run() or predict() method"
    assert body["invalid_fields"][0]["message"] == reason


def test_a_reserved_environment_name_is_refused(live: LiveStack, who: Who, tmp_path: Path) -> None:
    src = tmp_path / "reserved"
    shutil.copytree(MODELS / "cog-environment", src)
    (src / "cog.yaml").write_text(
        'predict: "predict.py:Predictor"\nenvironment:\n  - REPLICANT_CGROUP_PROCS=/etc/x\n'
    )
    body = refused(live, who, "cog-reserved-env", src)
    assert [f["field"] for f in body["invalid_fields"]] == ["cog.yaml"]
    assert "reserved for internal use" in body["detail"]


# -- @cog.concurrent sizes the process -------------------------------------------------------


def test_cog_concurrent_serves_that_many_runs_in_one_process(live: LiveStack, who: Who) -> None:
    version = pushed(live, who, "cog-concurrent")
    # The pool reads it as it reads cog.yaml's concurrency.max.
    assert model_concurrency(live.settings.data_dir.resolve() / "versions" / version) == 3
    official = client(live, who)
    assert official.run(f"{who.username}/cog-concurrent:{version}", input={}) == 1  # warm
    predictions = [
        official.predictions.create(version=version, input={"together": 3}) for _ in range(3)
    ]
    with ThreadPoolExecutor(3) as pool:
        done = list(pool.map(lambda p: live.wait_for(p.id, token=who.token), predictions))
    # Each run waited until all three were in the process at once.
    assert [body["output"] for body in done] == [3, 3, 3], done


# -- cog.yaml's environment: ---------------------------------------------------------------


def test_environment_reaches_setup_and_runs(live: LiveStack, who: Who) -> None:
    version = pushed(live, who, "cog-environment")
    output = client(live, who).run(f"{who.username}/cog-environment:{version}", input={})
    assert output == {
        "setup": "hello from cog.yaml",
        "test_var": "hello from cog.yaml",
        "empty_var": "",
    }


def test_cog_setup_timeout_fails_a_longer_setup(live: LiveStack, who: Who) -> None:
    version = pushed(live, who, "cog-setup-timeout")
    prediction = client(live, who).predictions.create(version=version, input={"s": "x"})
    body = live.wait_for(prediction.id, token=who.token, timeout=120)
    assert body["status"] == "failed", body
    # Two seconds into a 30-second setup, not the stack's own setup timeout.
    assert "timed out" in body["error"] or "did not finish within 3 s" in body["error"], body


# -- errors keep their type ------------------------------------------------------------------


def test_sys_exit_fails_the_prediction_naming_systemexit(live: LiveStack, who: Who) -> None:
    version = pushed(live, who, "cog-exit")
    official = client(live, who)
    ref = f"{who.username}/cog-exit:{version}"
    before = official.run(ref, input={})
    prediction = official.predictions.create(version=version, input={"do_exit": True})
    body = live.wait_for(prediction.id, token=who.token)
    assert body["status"] == "failed", body
    assert body["error"] == "SystemExit: 1"
    assert "sys.exit(1)" in body["logs"]  # the model's own line, in its traceback
    # The process goes on: the next prediction runs in it.
    assert official.run(ref, input={}) == before


# -- python_requirements with local package files --------------------------------------------


def make_local_packages(model: Path) -> None:
    """The three package files Cog's test builds: an sdist (.tar.gz), one as .zip (its name
    with spaces), and a wheel."""
    dist = model / "dist"
    dist.mkdir()
    src = model.parent / "packages"
    tar_pkg = write_model(
        src / "local_pkg-0.1.0",
        {
            "setup.py": (
                "from setuptools import setup\n\n"
                'setup(name="local-pkg", version="0.1.0", packages=["local_pkg"])\n'
            ),
            "local_pkg/__init__.py": 'MESSAGE = "tar package"\n',
        },
    )
    with tarfile.open(dist / "local_pkg-0.1.0.tar.gz", "w:gz") as archive:
        archive.add(tar_pkg, arcname="local_pkg-0.1.0")
    with zipfile.ZipFile(dist / "local zip pkg-0.2.0.zip", "w") as archive:
        archive.writestr(
            "setup.py",
            "from setuptools import setup\n\n"
            'setup(name="local-zip-pkg", version="0.2.0", packages=["local_zip_pkg"])\n',
        )
        archive.writestr("local_zip_pkg/__init__.py", 'MESSAGE = "zip package"\n')
    info = "local_wheel_pkg-0.3.0.dist-info"
    with zipfile.ZipFile(dist / "local_wheel_pkg-0.3.0-py3-none-any.whl", "w") as wheel:
        wheel.writestr("local_wheel_pkg/__init__.py", 'MESSAGE = "wheel package"\n')
        wheel.writestr(
            f"{info}/METADATA", "Metadata-Version: 2.1\nName: local-wheel-pkg\nVersion: 0.3.0\n"
        )
        wheel.writestr(
            f"{info}/WHEEL",
            "Wheel-Version: 1.0\nGenerator: replicant-test\nRoot-Is-Purelib: true\n"
            "Tag: py3-none-any\n",
        )
        wheel.writestr(
            f"{info}/RECORD",
            f"local_wheel_pkg/__init__.py,,\n{info}/METADATA,,\n{info}/WHEEL,,\n{info}/RECORD,,\n",
        )


def test_local_package_files_install_from_the_model_directory(
    live: LiveStack, who: Who, tmp_path: Path
) -> None:
    model = tmp_path / "model"
    shutil.copytree(MODELS / "cog-local-packages", model)
    make_local_packages(model)
    version = pushed(live, who, "cog-local-packages", model)
    output = client(live, who).run(f"{who.username}/cog-local-packages:{version}", input={})
    assert output == "tar package 0.1.0; zip package 0.2.0; wheel package 0.3.0"


# -- trainings -----------------------------------------------------------------------------


def test_a_trainer_class_without_predict_trains_its_str_output_as_weights(
    live: LiveStack, who: Who
) -> None:
    version = pushed(live, who, "cog-trainer")
    official = client(live, who)
    training = train_to_end(live, who, "cog-trainer", version, {"s": "world"}, "trained-greeter")
    # What setup() printed comes first in the training's logs, as under Cog.
    logs = training.logs or ""
    assert "Trainer is setting up." in logs, logs
    assert logs.index("Trainer is setting up.") < logs.index("Trainer.train called.")
    weights = httpx.get(training.output["weights"], timeout=60)
    assert weights.status_code == 200 and weights.text == "hello train world"
    trained = training.output["version"]
    assert official.run(trained, input={"s": "x"}) == "hello train world; x"
    assert official.run(f"{who.username}/cog-trainer:{version}", input={"s": "x"}) == (
        "no weights; x"
    )


def test_a_trainer_alone_pushes_and_trains_and_refuses_predictions(
    live: LiveStack, who: Who
) -> None:
    version = pushed(live, who, "cog-train-only")
    schemas = components(live, who, "cog-train-only", version)
    assert "TrainingInput" in schemas and "Input" not in schemas
    official = client(live, who)
    training = train_to_end(live, who, "cog-train-only", version, {"text": "hi"}, "trained-alone")
    assert "training on hi" in (training.logs or "")
    weights = httpx.get(training.output["weights"], timeout=60)
    assert weights.status_code == 200 and weights.text == "trained: hi"
    # Neither it nor what it trained has a predictor: a prediction is refused, saying why.
    trained = training.output["version"].rpartition(":")[2]
    for version_id in (version, trained):
        with pytest.raises(replicate.exceptions.ReplicateError) as refusal:
            official.predictions.create(version=version_id, input={"text": "x"})
        assert refusal.value.status == 422
        assert "has a trainer and no predictor" in str(refusal.value.detail), version_id
    # Nor can a deployment run it.
    body = {"name": "alone", "model": f"{who.username}/cog-train-only", "version": version}
    body |= {"hardware": "cpu", "min_instances": 0, "max_instances": 1}
    with who.client(live) as api:
        deployment = api.post("/v1/deployments", json=body)
    assert deployment.status_code == 422, deployment.text
    assert "has a trainer and no predictor" in deployment.json()["detail"]


# -- metrics a model records -----------------------------------------------------------------

RECORDED = {
    "temperature": 0.7,
    "token_count": 2,
    "logprobs": [-1.5, -0.5],
    "timing": {"preprocess": 0.25},
    "model_name": "metrics-test",
    "legacy": 3,
}


@pytest.fixture(scope="module")
def metrics_model(live: LiveStack, who: Who) -> str:
    return pushed(live, who, "cog-metrics")


def test_metrics_a_model_records_appear_beside_the_timings(
    live: LiveStack, who: Who, metrics_model: str
) -> None:
    version = metrics_model
    official = client(live, who)
    with running_receiver() as receiver:
        prediction = official.predictions.create(
            version=version, input={}, webhook=f"{receiver.url}/hook"
        )
        prediction.wait()
        assert prediction.status == "succeeded", (prediction.error, prediction.logs)
        metrics = prediction.metrics or {}
        assert {k: metrics[k] for k in RECORDED} == RECORDED, metrics
        assert metrics["predict_time"] > 0 and metrics["total_time"] >= metrics["predict_time"]
        deliveries = receiver.wait(
            lambda ds: any(d.json()["status"] == "succeeded" for d in ds), prediction.id
        )
        hooked = [d.json() for d in deliveries if d.json()["status"] == "succeeded"][-1]
        assert hooked["metrics"] == metrics
    # The live events carry the metrics recorded so far: none at `start`, all by the last
    # `output` (the model records them before it returns).
    (start,) = [d.json() for d in deliveries if event_of(d) == "start"]
    assert not (start.get("metrics") or {}).keys() & RECORDED.keys(), start
    last_output = [d.json() for d in deliveries if event_of(d) == "output"][-1]
    assert last_output["status"] == "processing"
    assert {k: last_output["metrics"][k] for k in RECORDED} == RECORDED, last_output
    # A metric recorded before the model fails is kept.
    failed = official.predictions.create(version=version, input={"fail": True})
    failed.wait()
    assert failed.status == "failed" and "failed after recording" in (failed.error or "")
    assert (failed.metrics or {})["token_count"] == 2, failed.metrics
    assert "total_time" in (failed.metrics or {})


def event_of(delivery: Delivery) -> str:
    """The webhook event of a delivery, from its ``webhook-id`` (``msg_<id>_<event>_<n>``)."""
    return delivery.headers["webhook-id"].split("_")[2]


def test_a_streaming_model_s_metrics_ride_its_live_webhooks_and_end_its_stream(
    live: LiveStack, who: Who
) -> None:
    version = pushed(live, who, "cog-metrics-stream")
    official = client(live, who)
    ref = f"{who.username}/cog-metrics-stream:{version}"
    with running_receiver() as receiver:
        input = {"tokens": 4, "interval": 1.0}
        events = list(official.stream(ref, input=input, webhook=receiver.url))
        with receiver.lock:
            (prediction_id,) = {d.json()["id"] for d in receiver.deliveries}
        deliveries = receiver.wait(
            lambda ds: any(d.json()["status"] == "succeeded" for d in ds), prediction_id
        )
    prediction = official.predictions.get(prediction_id)
    assert prediction.status == "succeeded" and prediction.output == ["t0 ", "t1 ", "t2 ", "t3 "]
    assert (prediction.metrics or {})["tokens"] == 4
    # The stream's `done` carries the metrics as GET shows them.
    assert events[-1].event.value == "done"
    assert json.loads(events[-1].data) == {"metrics": prediction.metrics}
    # Each live event carries the metrics recorded when it was sent; the last all of them.
    counts = [
        (d.json().get("metrics") or {}).get("tokens", 0)
        for d in deliveries
        if event_of(d) in ("output", "logs")
    ]
    assert counts and counts == sorted(counts) and counts[-1] == 4, counts
    # A token a second: the events sent while it ran had fewer (coglet reports them so far).
    assert any(0 < count < 4 for count in counts), counts
    (completed,) = [d.json() for d in deliveries if event_of(d) == "completed"]
    assert completed["metrics"] == prediction.metrics


def test_metrics_a_trainer_records_appear_in_the_training(
    live: LiveStack, who: Who, metrics_model: str
) -> None:
    version = metrics_model
    with running_receiver() as receiver:
        training = train_to_end(
            live, who, "cog-metrics", version, {"steps": 3}, "metrics-trained", webhook=receiver.url
        )
        deliveries = receiver.wait(
            lambda ds: any(event_of(d) == "completed" for d in ds), training.id
        )
    with who.client(live) as api:  # the official client's Training has no metrics
        metrics = api.get(f"/v1/trainings/{training.id}").json()["metrics"]
    assert metrics["steps"] == 3, metrics
    assert "predict_time" in metrics and "total_time" in metrics
    (completed,) = [d.json() for d in deliveries if event_of(d) == "completed"]
    assert completed["metrics"] == metrics
    # Its stream ends with them too.
    with httpx.Client(timeout=60) as http, http.stream("GET", training.urls["stream"]) as events:
        lines = [line for line in events.iter_lines() if line.startswith("data:")]
    assert json.loads(lines[-1].removeprefix("data:").strip()) == {"metrics": metrics}


# -- cog.File inputs -------------------------------------------------------------------------


def test_cog_file_inputs_arrive_as_file_objects(live: LiveStack, who: Who, tmp_path: Path) -> None:
    version = pushed(live, who, "cog-file")
    official = client(live, who)
    ref = f"{who.username}/cog-file:{version}"
    for name in ("a", "b", "c", "d"):
        (tmp_path / f"{name}.txt").write_text(f"text {name}")

    def opened(name: str) -> Any:
        return open(tmp_path / f"{name}.txt", "rb")  # noqa: SIM115 (the client reads it)

    given = {"file": opened("a"), "files": [opened("b"), opened("c")], "maybe": opened("d")}
    assert official.run(ref, input=given) == "text a|text b|text c|text d"
    given = {"file": opened("a"), "files": [opened("b")]}
    assert official.run(ref, input=given) == "text a|text b|none"


# -- context ---------------------------------------------------------------------------------


def test_the_context_a_caller_passes_reaches_the_model(live: LiveStack, who: Who) -> None:
    version = pushed(live, who, "cog-context")
    official = client(live, who)
    context = {"user": "alice", "trace": "abc-123"}
    # An extension of Replicate's create body: the official client does not send it.
    with who.client(live) as api:
        created = api.post("/v1/predictions", json={"version": version, "context": context})
        assert created.status_code == 201, created.text
        refused_body = api.post("/v1/predictions", json={"version": version, "context": ["x"]})
        assert refused_body.status_code == 422, refused_body.text
    prediction = official.predictions.get(created.json()["id"])
    prediction.wait()
    assert prediction.status == "succeeded", (prediction.error, prediction.logs)
    assert json.loads(prediction.output) == context
    assert json.loads(official.run(f"{who.username}/cog-context:{version}", input={})) == {}
    # A training's create body takes it too.
    destination = new_destination(live, who.token, "context-trained")
    with who.client(live) as api:
        created = api.post(
            f"/v1/models/{who.username}/cog-context/versions/{version}/trainings",
            json={"destination": destination, "context": context},
        )
        assert created.status_code == 201, created.text
    training = official.trainings.get(created.json()["id"])
    wait_training(training, timeout=BUILD_TIMEOUT)
    assert training.status == "succeeded", (training.error, training.logs)
    weights = httpx.get(training.output["weights"], timeout=60)
    assert weights.status_code == 200 and json.loads(weights.text) == context


# -- weights: --------------------------------------------------------------------------------


def test_managed_weights_from_a_hub_are_refused_at_push(live: LiveStack, who: Who) -> None:
    problem = refused(live, who, "cog-weights-hub")
    assert "weights base come from a model hub (hf://example-org/example-model)" in str(problem)


@contextlib.contextmanager
def serving_file(root: Path, name: str, data: bytes) -> Iterator[tuple[str, list[str]]]:
    """An http server on 127.0.0.1 with one file: its URL, and the paths asked for."""
    (root / name).write_bytes(data)
    asked: list[str] = []

    class Handler(http.server.SimpleHTTPRequestHandler):
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            super().__init__(*args, directory=str(root), **kwargs)

        def do_GET(self) -> None:
            asked.append(self.path)
            super().do_GET()

        def log_message(self, format: str, *args: Any) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/{name}", asked
    finally:
        server.shutdown()
        server.server_close()


def weights_model(tmp_path: Path, file_id: str, url: str) -> Path:
    """``tests/models/cog-weights`` with its stored file and URL filled in."""
    src = tmp_path / "cog-weights"
    shutil.copytree(MODELS / "cog-weights", src)
    config = src / "cog.yaml"
    text = config.read_text().replace("STORED_FILE_ID", file_id).replace("WEIGHTS_URL", url)
    config.write_text(text)
    return src


def test_managed_weights_from_each_source_are_placed_at_their_targets(
    live: LiveStack, who: Who, tmp_path: Path
) -> None:
    official = client(live, who)
    stored = official.files.create(io.BytesIO(b"kept in the store"), filename="stored.txt")
    with serving_file(tmp_path, "fetched.txt", b"fetched once") as (url, asked):
        src = weights_model(tmp_path, stored.id, url)
        version = pushed(live, who, "cog-weights", src)
        # The same push again is the same version: nothing is fetched again.
        again = push(live, who, f"{who.username}/cog-weights", src)
        assert again.status_code == 200 and again.json()["id"] == version, again.text
        output = json.loads(official.run(f"{who.username}/cog-weights:{version}", input={}))
        assert output["seen"] == {
            # include *.txt, exclude skip*: the model's own weights/ shows only what is kept.
            "/src/weights": {"a.txt": "alpha", "sub/b.txt": "beta"},
            "/weights/stored": {"stored.txt": "kept in the store"},
            "/srv/models/fetched": {"fetched.txt": "fetched once"},
        }
        assert output["writable"] == [] and output["trained"] is None
        # A fine-tune gets its COG_WEIGHTS and still sees the managed weights.
        training = train_to_end(
            live, who, "cog-weights", version, {"word": "tuned"}, "weights-tuned"
        )
        tuned = json.loads(official.run(training.output["version"], input={}))
        assert tuned["trained"] == "tuned kept in the store"
        assert tuned["seen"] == output["seen"]
        assert asked == ["/fetched.txt"]  # once, at the push; workers read the store
    # Each weight was assembled once on the worker, under its digest.
    sets = live.settings.data_dir / "weights-cache" / "sets"
    assert len([p for p in sets.iterdir() if p.is_dir()]) >= 3


def test_a_member_may_use_a_file_of_the_models_organization_as_managed_weights(
    live: LiveStack, who: Who, tmp_path: Path
) -> None:
    team = f"weightteam-{os.urandom(3).hex()}"
    create_organization(live.engine, team)
    add_member(live.engine, team, who.username)
    _, team_token = create_token(live.engine, team)
    data = b"the team's weights"
    theirs = client(live, Who(team, team_token)).files.create(io.BytesIO(data), filename="t.txt")
    with serving_file(tmp_path, "fetched.txt", b"x") as (url, _):
        src = weights_model(tmp_path, theirs.id, url)
        # A model of the organization, pushed by its member: the team's file is a source.
        response = push(live, who, f"{team}/cog-weights", src, create=True)
        assert response.status_code == 201, response.text
        manifest = read_manifest(live.settings.data_dir / "versions" / response.json()["id"])
        stored = next(w for w in manifest if w["name"] == "stored")
        assert [f["sha256"] for f in stored["files"]] == [hashlib.sha256(data).hexdigest()]
        # The member's own model may not use it: it is not the pusher's nor the model's.
        problem = refused(live, who, "cog-weights-team", src)
        assert f"replicant://files/{theirs.id} is not a file of the account" in str(problem)


def test_an_object_of_managed_weights_goes_once_no_version_refers_to_it(
    live: LiveStack, who: Who, tmp_path: Path
) -> None:
    official = client(live, who)
    data = [os.urandom(8).hex().encode() for _ in range(3)]
    files = [official.files.create(io.BytesIO(d), filename="w.txt") for d in data[:2]]
    keys = [managed_weight_file(hashlib.sha256(d).hexdigest()) for d in data]
    store = open_store(live.settings)
    # The worker's sweep keeps what a push under way holds for the build timeout; here none.
    expiry = ExpiryActivities(live.engine, store, weights_grace=0)

    def sweep() -> int:
        swept = asyncio.run(ActivityEnvironment().run(expiry.remove_expired_files, ExpireFiles()))
        return swept.weights_removed

    ref = f"{who.username}/cog-weights-gc"
    versions = []
    with serving_file(tmp_path, "fetched.txt", data[2]) as (url, _):
        for n, stored in enumerate(files):
            src = weights_model(tmp_path / stored.id, stored.id, url)
            response = push(live, who, ref, src, create=n == 0, visibility="private")
            assert response.status_code == 201, response.text
            versions.append(response.json()["id"])
    sweep()
    assert all(store.stat(key) is not None for key in keys)  # each is referred to

    with who.client(live) as api:
        deleted = api.delete(f"/v1/models/{ref}/versions/{versions[0]}")
        assert deleted.status_code == 202, deleted.text
        assert sweep() >= 1
        # The first file was the deleted version's alone; the fetched one is shared.
        assert store.stat(keys[0]) is None
        assert store.stat(keys[1]) is not None and store.stat(keys[2]) is not None

        deleted = api.delete(f"/v1/models/{ref}/versions/{versions[1]}")
        assert deleted.status_code == 202, deleted.text
        assert sweep() >= 2
    assert [store.stat(key) for key in keys] == [None, None, None]
    with Session(live.engine) as session:
        refs = session.exec(
            select(ManagedWeightRef).where(col(ManagedWeightRef.object_key).in_(keys))
        ).all()
    assert refs == []


def test_managed_weights_a_push_cannot_have_are_refused_with_the_reason(
    live: LiveStack, who: Who, tmp_path: Path
) -> None:
    stranger = someone(live, "weightless")
    theirs = client(live, stranger).files.create(io.BytesIO(b"private"), filename="p.txt")
    with serving_file(tmp_path, "fetched.txt", b"x") as (url, asked):
        cases = {
            # Another account's file is not the pusher's to use.
            (theirs.id, url): f"replicant://files/{theirs.id} is not a file of the account",
            # A host the operator did not allow (REPLICANT_WEIGHTS_URL_HOSTS).
            ("none", url.replace("127.0.0.1", "localhost")): "REPLICANT_WEIGHTS_URL_HOSTS",
            # A URL that answers 404.
            ("none", url + ".missing"): "answered HTTP 404",
        }
        for (file_id, weights_url), reason in cases.items():
            if file_id == "none":
                file_id = client(live, who).files.create(io.BytesIO(b"ok"), filename="s.txt").id
            src = weights_model(tmp_path / file_id, file_id, weights_url)
            problem = refused(live, who, "cog-weights", src)
            assert reason in str(problem), problem
        assert asked == ["/fetched.txt.missing"]
