"""Reading a Cog model directory: its ``cog.yaml``, and the OpenAPI schema of its predictor.

A version's ``openapi_schema`` is derived from the predictor itself, the way Cog does it:
cog 0.23's own inspector (``cog._inspector``) describes each input and the output, in a
subprocess that runs with the model's own Python (``_cog_probe.py``), and this module wraps
that description in the OpenAPI 3.0.2 document Cog and Replicate publish for a version.
"""

from __future__ import annotations

import ast
import functools
import hashlib
import json
import os
import re
import subprocess
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, Field

from replicant.sandbox import (
    SandboxConfig,
    SandboxUnavailable,
    filtered_env,
    machine_sandbox,
    require,
    sandboxed_run,
    scratch_dir,
)

PROBE = Path(__file__).resolve().with_name("_cog_probe.py")
COGLET_SCHEMA_PATH = Path(".cog") / "openapi_schema.json"
INSPECT_TIMEOUT = 300.0
_REF = re.compile(r"^(?P<path>[^:]+\.py)(?::(?P<name>[A-Za-z_][A-Za-z0-9_]*))?$")
_SCHEMAS = "#/components/schemas/"


class CogConfigError(Exception):
    """cog.yaml is missing or invalid, or names an entry point that does not exist."""


class PredictorError(Exception):
    """The predictor (or trainer) could not be imported or described.

    ``message`` is one line for people; ``traceback`` is the model process's traceback text.
    """

    def __init__(self, message: str, traceback: str = "") -> None:
        super().__init__(message)
        self.message = message
        self.traceback = traceback

    def __str__(self) -> str:
        return f"{self.message}\n{self.traceback}" if self.traceback else self.message


class WeightSource(BaseModel):
    """One source of a managed weight: a directory in the model (``weights``,
    ``./weights``, ``file://./weights``), a file in Replicant's store
    (``replicant://files/<file id>``) or an http(s) URL of one file; ``include``/``exclude``
    are gitignore-style patterns, as Cog applies them."""

    uri: str
    include: list[str] = Field(default_factory=list)
    exclude: list[str] = Field(default_factory=list)


class ManagedWeight(BaseModel):
    """An entry of cog.yaml's ``weights:``: its files, placed read-only at ``target``."""

    name: str
    target: str
    sources: list[WeightSource]


class CogConfig(BaseModel):
    """The parts of ``cog.yaml`` that Replicant uses to run a model."""

    # "" for a trainer alone (cog.yaml with train: and no predict:/run:).
    predict_ref: str
    train_ref: str | None = None
    python_version: str | None = None
    python_packages: list[str] = Field(default_factory=list)
    python_requirements: str | None = None
    gpu: bool = False
    system_packages: list[str] = Field(default_factory=list)
    # build.run: commands Cog runs in the image; Replicant only names them in a warning.
    build_commands: list[str] = Field(default_factory=list)
    # Runs one process serves at once: COG_MAX_CONCURRENCY in `environment:`, else
    # concurrency.max, else @cog.concurrent(max=N) on the entry point, else 1 (Cog's order).
    max_concurrency: int = 1
    # Where max_concurrency came from (for Cog's refusal of a sync entry point); "" for none.
    concurrency_source: str = ""
    # The top-level `environment:` of cog.yaml: set in every process of the model.
    environment: dict[str, str] = Field(default_factory=dict)
    # Local package files named in python_requirements (`./dist/pkg.whl`): each one's path
    # relative to the model directory, and the SHA-256 of its content.
    local_packages: dict[str, str] = Field(default_factory=dict)
    # The model directory this was read from (local packages are installed from it).
    model_dir: str = ""
    # cog.yaml's `weights:` (managed weights), resolved at push (replicant/managedweights.py).
    weights: list[ManagedWeight] = Field(default_factory=list)


def _check_ref(model_dir: Path, key: str, value: object) -> str:
    if not isinstance(value, str) or not value.strip():
        raise CogConfigError(f"cog.yaml: {key} must be a string like 'predict.py:Predictor'")
    ref = value.strip()
    match = _REF.match(ref)
    if match is None:
        raise CogConfigError(
            f"cog.yaml: {key}: {ref!r} is not of the form 'file.py:Name' "
            "(e.g. predict.py:Predictor)"
        )
    path = Path(match["path"])
    root = model_dir.resolve()
    target = (root / path).resolve()
    # A ref must not point outside the model, which is all that gets copied and run.
    if path.is_absolute() or not target.is_relative_to(root):
        raise CogConfigError(f"cog.yaml: {key}: {match['path']} is outside the model directory")
    if not target.is_file():
        raise CogConfigError(f"cog.yaml: {key}: {match['path']} does not exist in {model_dir}")
    return ref


def _requirement_lines(text: str) -> list[str]:
    lines = []
    for raw in text.splitlines():
        line = raw.split(" #", 1)[0].strip()
        if line and not line.startswith("#"):
            lines.append(line)
    return lines


# The files pip installs as packages, when a requirement line names one by its path.
LOCAL_PACKAGE_SUFFIXES = (".whl", ".zip", ".tar.gz", ".tgz", ".tar.bz2", ".tar.xz")


def local_package(line: str) -> str | None:
    """The path a requirement line names a local wheel or source archive by (the whole line,
    spaces and all, as Cog reads it), or None for any other requirement."""
    if line.startswith("-") or "://" in line or line.startswith("git+"):
        return None
    if line.startswith(("./", "../", "/")) or line.lower().endswith(LOCAL_PACKAGE_SUFFIXES):
        return line
    return None


def _local_packages(model_dir: Path, lines: list[str]) -> dict[str, str]:
    """Each local package of ``lines``, checked to be a file inside the model, and its digest."""
    root = model_dir.resolve()
    found = {}
    for line in lines:
        if "file:" in line.lower():  # a path on the worker, not in the model
            raise CogConfigError(f"local file URL requirements are not supported: {line}")
        path = local_package(line)
        if path is None:
            continue
        if not path.lower().endswith(LOCAL_PACKAGE_SUFFIXES):
            raise CogConfigError(
                f"local package requirement {path!r} is not a supported wheel or source archive"
            )
        target = (root / path).resolve()
        if Path(path).is_absolute() or not target.is_relative_to(root):
            raise CogConfigError(f"python_requirements: {path} is outside the model directory")
        if not target.is_file():
            raise CogConfigError(f"python_requirements: {path} does not exist in the model")
        found[path] = hashlib.sha256(target.read_bytes()).hexdigest()
    return found


# Names cog.yaml's `environment:` may not set: Cog's own list (paths, Replicate's, NVIDIA's,
# pget's, Kubernetes'), and Replicant's, which the runner pool sets for itself.
ENVIRONMENT_DENYLIST = (
    "PATH",
    "LD_LIBRARY_PATH",
    "PYTHONPATH",
    "VIRTUAL_ENV",
    "PYTHONUNBUFFERED",
    "R8_*",
    "REPLICATE_*",
    "LIBRARY_PATH",
    "CUDA_*",
    "NVIDIA_*",
    "NV_*",
    "PGET_*",
    "HF_ENDPOINT",
    "HF_HUB_ENABLE_HF_TRANSFER",
    "KUBERNETES_*",
    "REPLICANT_*",
)


def _reserved(name: str) -> bool:
    return any(
        name.startswith(pattern[:-1]) if pattern.endswith("*") else name == pattern
        for pattern in ENVIRONMENT_DENYLIST
    )


def _environment(value: object) -> dict[str, str]:
    """cog.yaml's `environment:` (a list of KEY=VALUE), checked as Cog checks it."""
    if value is None:
        return {}
    if not isinstance(value, list) or not all(isinstance(item, str) for item in value):
        raise CogConfigError("cog.yaml: environment must be a list of KEY=VALUE strings")
    env: dict[str, str] = {}
    for item in value:
        name, sep, setting = item.partition("=")
        if not sep or not name:
            raise CogConfigError(f"environment variable {item!r} is not in the KEY=VALUE format")
        if _reserved(name):
            raise CogConfigError(
                f"environment variable {name!r} is not allowed: reserved for internal use"
            )
        if name in env:
            raise CogConfigError(f"environment variable {name!r} is already defined")
        env[name] = setting
    return env


def _positive_int(text: str | None) -> int | None:
    """A positive integer setting as coglet reads one (anything else is ignored)."""
    try:
        value = int((text or "").strip())
    except ValueError:
        return None
    return value if value > 0 else None


def model_environment(model_dir: Path) -> dict[str, str]:
    """The `environment:` of a version's cog.yaml, for its model processes; {} when unreadable.

    A version's directory never changes, so each one is read once per process. Names
    reserved for the platform are left out however the file got here.
    """
    return dict(_model_environment(str(model_dir)))


@functools.lru_cache(maxsize=1024)
def _model_environment(model_dir: str) -> tuple[tuple[str, str], ...]:
    try:
        data = yaml.safe_load((Path(model_dir) / "cog.yaml").read_text(encoding="utf-8"))
        env = _environment(data.get("environment") if isinstance(data, dict) else None)
    except (OSError, UnicodeDecodeError, yaml.YAMLError, CogConfigError):
        return ()
    return tuple((k, v) for k, v in env.items() if not _reserved(k))


def setup_timeout(model_dir: Path) -> float | None:
    """COG_SETUP_TIMEOUT of a version's `environment:`, in seconds; None when it sets none."""
    seconds = _positive_int(model_environment(model_dir).get("COG_SETUP_TIMEOUT"))
    return None if seconds is None else float(seconds)


def _entry_node(model_dir: Path, ref: str) -> ast.FunctionDef | ast.AsyncFunctionDef | None:
    """The run()/predict() (or function) ``ref`` names, read from the source without running
    it, as Cog's build reads it; None when the source does not show it plainly."""
    path, _, name = ref.partition(":")
    if not path:
        return None
    try:
        tree = ast.parse((model_dir / path).read_bytes())
    except (OSError, SyntaxError, ValueError):
        return None
    functions = (ast.FunctionDef, ast.AsyncFunctionDef)
    names = [name] if name else ["Runner", "Predictor"]
    for wanted in names:
        for node in tree.body:
            if isinstance(node, functions) and node.name == wanted:
                return node
            if isinstance(node, ast.ClassDef) and node.name == wanted:
                methods = [m for m in node.body if isinstance(m, functions)]
                found = [m for m in methods if m.name in ("run", "predict")]
                return found[0] if len(found) == 1 else None
    return None


def decorated_concurrency(model_dir: Path, ref: str) -> int | None:
    """N of ``@cog.concurrent(max=N)`` on the entry point (1 for a bare ``@concurrent``),
    None without one. Raises ``ValueError`` with Cog's reason for a max that is not a
    literal positive integer."""
    node = _entry_node(model_dir, ref)
    for decorator in node.decorator_list if node is not None else []:
        call = decorator if isinstance(decorator, ast.Call) else None
        target = call.func if call is not None else decorator
        named = isinstance(target, ast.Name) and target.id == "concurrent"
        dotted = isinstance(target, ast.Attribute) and target.attr == "concurrent"
        if not (named or dotted):
            continue
        given = [k.value for k in call.keywords if k.arg == "max"] if call is not None else []
        if not given:
            return 1
        value = given[0]
        if not (isinstance(value, ast.Constant) and type(value.value) is int):
            raise ValueError("@concurrent only supports literal integer max=... arguments")
        if value.value < 1:
            raise ValueError("@concurrent max must be at least 1")
        return value.value
    return None


@functools.lru_cache(maxsize=1024)
def file_inputs(model_dir: Path, ref: str) -> frozenset[str]:
    """The inputs of entry point ``ref`` annotated with Cog's deprecated ``File`` (``File``,
    ``list[File]``, ``File | None``): coglet makes a file object only of a data URI or an
    http(s) URL, where a ``Path`` input takes a local path too."""
    node = _entry_node(model_dir, ref)
    if node is None:
        return frozenset()
    args = [*node.args.posonlyargs, *node.args.args, *node.args.kwonlyargs]
    return frozenset(
        arg.arg
        for arg in args
        if arg.annotation is not None
        and any(
            (isinstance(part, ast.Name) and part.id == "File")
            or (isinstance(part, ast.Attribute) and part.attr == "File")
            or (isinstance(part, ast.Constant) and part.value in ("File", "cog.File"))
            for part in ast.walk(arg.annotation)
        )
    )


# Sources of cog.yaml's managed weights that are a model hub: this installation does not
# fetch from one.
HUB_SCHEMES = ("hf://", "huggingface://")
# A weight name as Cog takes it (it names OCI tags there).
WEIGHT_NAME = re.compile(r"^[a-z0-9]+(?:[._-][a-z0-9]+)*$")
# Where a weight may not be placed in the model's sandbox: the system, what the sandbox
# mounts itself, and the model's code as a whole (a directory inside /src is fine).
RESERVED_TARGETS = ("/usr", "/proc", "/dev", "/sys", "/etc", "/tmp", "/run")


def _weight_patterns(where: str, value: object) -> list[str]:
    if value is None:
        return []
    if not isinstance(value, list) or not all(isinstance(p, str) for p in value):
        raise CogConfigError(f"cog.yaml: {where} must be a list of patterns")
    patterns = [p.strip() for p in value]
    for index, pattern in enumerate(patterns):
        if not pattern:
            raise CogConfigError(f"cog.yaml: {where}[{index}]: pattern must not be empty")
        if pattern.startswith("!"):
            raise CogConfigError(
                f"cog.yaml: {where}[{index}]: negation patterns (starting with '!') are not "
                "supported"
            )
        if "\\" in pattern:
            raise CogConfigError(
                f"cog.yaml: {where}[{index}]: patterns must use forward slashes, not backslashes"
            )
    return patterns


def _weight_sources(where: str, name: object, value: object) -> list[WeightSource]:
    """A weight's ``source``: a mapping ``{uri, include, exclude}``, a list of them, or a
    URI alone."""
    items = value if isinstance(value, list) else [value]
    if value is None or value == [] or value == "":
        raise CogConfigError(f"cog.yaml: {where}.source is required")
    sources = []
    for item in items:
        entry = {"uri": item} if isinstance(item, str) else item
        if not isinstance(entry, dict) or not isinstance(entry.get("uri"), str):
            raise CogConfigError(f"cog.yaml: {where}.source needs a uri")
        uri = entry["uri"].strip()
        if uri.lower().startswith(HUB_SCHEMES):
            raise CogConfigError(
                f"cog.yaml: weights {name!s} come from a model hub ({uri}), which this "
                "installation does not fetch from: put the files in the model directory"
            )
        include = _weight_patterns(f"{where}.source.include", entry.get("include"))
        exclude = _weight_patterns(f"{where}.source.exclude", entry.get("exclude"))
        sources.append(WeightSource(uri=uri, include=include, exclude=exclude))
    return sources


def _weight_target(where: str, value: object, taken: list[str]) -> str:
    if not isinstance(value, str) or not value:
        raise CogConfigError(f"cog.yaml: {where}.target is required")
    if not value.startswith("/"):
        raise CogConfigError(f"cog.yaml: {where}.target must be an absolute path")
    target = os.path.normpath(value).replace("//", "/")
    if target in ("/", "/src"):
        raise CogConfigError(f"cog.yaml: {where}.target must not be {target!r}")
    for reserved in RESERVED_TARGETS:
        if target == reserved or target.startswith(reserved + "/"):
            raise CogConfigError(
                f"cog.yaml: {where}.target {target} is inside {reserved}, which the model's "
                "sandbox keeps for itself"
            )
    for other in taken:
        if target == other:
            raise CogConfigError(f"cog.yaml: {where}.target: duplicate weight target")
        if target.startswith(other + "/") or other.startswith(target + "/"):
            raise CogConfigError(
                f"cog.yaml: {where}.target overlaps with {other!r}; weight targets must be disjoint"
            )
    return target


def _weights(value: object) -> list[ManagedWeight]:
    """cog.yaml's ``weights:`` (managed weights), checked as Cog checks it; a hub source is
    refused, naming the entry."""
    if value is None:
        return []
    if not isinstance(value, list) or not all(isinstance(w, dict) for w in value):
        raise CogConfigError("cog.yaml: weights: must be a list of {name, source, target}")
    weights: list[ManagedWeight] = []
    for index, entry in enumerate(value):
        where = f"weights[{index}]"
        name = entry.get("name")
        sources = _weight_sources(where, name or index, entry.get("source"))
        if not isinstance(name, str) or not name:
            raise CogConfigError(f"cog.yaml: {where}.name is required")
        if not WEIGHT_NAME.match(name):
            raise CogConfigError(
                f"cog.yaml: {where}.name {name!r} must contain only lowercase alphanumeric "
                'characters, hyphens, dots, or underscores (e.g. "my-model-weights")'
            )
        if any(w.name == name for w in weights):
            raise CogConfigError(f"cog.yaml: {where}.name {name!r}: duplicate weight name")
        target = _weight_target(where, entry.get("target"), [w.target for w in weights])
        weights.append(ManagedWeight(name=name, target=target, sources=sources))
    return weights


def load_cog_config(model_dir: Path) -> CogConfig:
    """Read and check ``model_dir/cog.yaml``.

    The entry point comes from ``run:`` (newer Cog) or ``predict:`` (older); ``train:`` is
    optional. Packages from ``build.python_requirements`` are appended to
    ``build.python_packages``. Raises ``CogConfigError`` with a message that names the problem.
    """
    data = _read_cog_yaml(model_dir)
    run, predict = data.get("run"), data.get("predict")
    if run is not None and predict is not None and run != predict:
        raise CogConfigError("cog.yaml: give either run: or predict:, not both")
    entry_key = "run" if run is not None else "predict"
    train_ref = _check_ref(model_dir, "train", data["train"]) if data.get("train") else None
    if data.get(entry_key) is None and train_ref is None:
        raise CogConfigError("cog.yaml: missing predict: (or run:), e.g. predict.py:Predictor")
    # A trainer alone (train: and no predict:) is a model Cog builds: it trains, never runs.
    predict_ref = _check_ref(model_dir, entry_key, data[entry_key]) if data.get(entry_key) else ""

    build = data.get("build") or {}
    if not isinstance(build, dict):
        raise CogConfigError("cog.yaml: build: must be a mapping")
    version = build.get("python_version")
    if version is not None and not isinstance(version, str | int | float):
        raise CogConfigError("cog.yaml: build.python_version must be a string like '3.11'")
    packages = _python_packages(model_dir, build)
    system = build.get("system_packages") or []
    if not isinstance(system, list) or not all(isinstance(p, str) for p in system):
        raise CogConfigError("cog.yaml: build.system_packages must be a list of strings")
    commands = build.get("run") or []
    if not isinstance(commands, list):
        raise CogConfigError("cog.yaml: build.run must be a list of commands")
    # Cog takes a command as a string or as {command: ..., mounts: [...]}.
    commands = [c.get("command") if isinstance(c, dict) else c for c in commands]
    if not all(isinstance(c, str) for c in commands):
        raise CogConfigError("cog.yaml: build.run must be a list of commands")
    environment = _environment(data.get("environment"))
    weights = _weights(data.get("weights"))
    max_concurrency, source = _max_concurrency(model_dir, data, environment, predict_ref)

    return CogConfig(
        predict_ref=predict_ref,
        train_ref=train_ref,
        python_version=None if version is None else str(version),
        python_packages=packages,
        python_requirements=build.get("python_requirements"),
        gpu=bool(build.get("gpu", False)),
        system_packages=[p.strip() for p in system if p.strip()],
        build_commands=[c.strip() for c in commands if c.strip()],
        max_concurrency=max_concurrency,
        concurrency_source=source,
        environment=environment,
        local_packages=_local_packages(model_dir, packages),
        model_dir=str(model_dir),
        weights=weights,
    )


def _read_cog_yaml(model_dir: Path) -> dict[str, Any]:
    """The mapping in ``model_dir/cog.yaml``; ``CogConfigError`` when there is none."""
    path = model_dir / "cog.yaml"
    if not path.is_file():
        raise CogConfigError(f"no cog.yaml in {model_dir}")
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as e:
        raise CogConfigError(f"cog.yaml is not valid YAML: {e}") from e
    except UnicodeDecodeError as e:
        raise CogConfigError(f"cog.yaml is not UTF-8 text: {e}") from e
    if not isinstance(data, dict):
        raise CogConfigError("cog.yaml must be a mapping with build: and predict: (or run:)")
    return data


def _python_packages(model_dir: Path, build: dict[str, Any]) -> list[str]:
    """``build.python_packages``, then the lines of ``build.python_requirements``."""
    packages = build.get("python_packages") or []
    if not isinstance(packages, list) or not all(isinstance(p, str) for p in packages):
        raise CogConfigError("cog.yaml: build.python_packages must be a list of strings")
    packages = [p.strip() for p in packages if p.strip()]
    requirements = build.get("python_requirements")
    if requirements is not None:
        if not isinstance(requirements, str):
            raise CogConfigError("cog.yaml: build.python_requirements must be a file name")
        req_path = model_dir / requirements
        if not req_path.is_file():
            raise CogConfigError(f"cog.yaml: python_requirements file {requirements} not found")
        packages += _requirement_lines(req_path.read_text(encoding="utf-8"))
    return packages


def _max_concurrency(
    model_dir: Path, data: dict[str, Any], environment: dict[str, str], predict_ref: str
) -> tuple[int, str]:
    """How many runs one process of the model takes, and where that was said:
    ``COG_MAX_CONCURRENCY`` over ``concurrency.max`` over ``@cog.concurrent(max)``."""
    concurrency = data.get("concurrency") or {}
    max_concurrency = concurrency.get("max", 1) if isinstance(concurrency, dict) else 1
    if not isinstance(max_concurrency, int) or max_concurrency < 1:
        raise CogConfigError("cog.yaml: concurrency.max must be a positive integer")
    source = "concurrency.max" if isinstance(concurrency, dict) and "max" in concurrency else ""
    from_env = _positive_int(environment.get("COG_MAX_CONCURRENCY"))
    if from_env is not None:
        return from_env, "COG_MAX_CONCURRENCY"
    if not source:
        try:
            decorated = decorated_concurrency(model_dir, predict_ref)
        except ValueError:
            decorated = None  # refused with the predictor (inspect_model)
        if decorated is not None:
            return decorated, "@cog.concurrent(max)"
    return max_concurrency, source


def run_probe(
    model_dir: Path, python: Path, config: CogConfig, sandbox: SandboxConfig | None = None
) -> dict[str, Any]:
    """Run ``_cog_probe.py`` with the model's Python and return its raw description.

    Importing the module runs the model's module-level code, so the probe runs in the model
    sandbox (``replicant/sandbox.py``, ``sandbox`` or the settings'): the model's directory
    read-only at /src, no network, and an environment of its own (none of this process's)."""
    config_ = sandbox or machine_sandbox()
    try:
        inside = Path("/src") if require(config_) else model_dir.resolve()
    except SandboxUnavailable as e:
        raise PredictorError(str(e)) from e
    args = [str(python), str(PROBE), str(inside), config.predict_ref]
    if config.train_ref:
        args.append(config.train_ref)
    # Don't leave __pycache__ in a model directory that is hashed into a version id.
    env = filtered_env({"PYTHONDONTWRITEBYTECODE": "1"})
    try:
        with scratch_dir(config_, "probe") as scratch:
            proc = sandboxed_run(
                config_,
                args,
                cwd=inside,
                env=env,
                read_only={"/src": model_dir.resolve(), str(PROBE): PROBE},
                writable={"/tmp": scratch},
                python=python,
                host_cwd=model_dir,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                stdin=subprocess.DEVNULL,
            )
            try:
                stdout, stderr = proc.communicate(timeout=INSPECT_TIMEOUT)
            except subprocess.TimeoutExpired as e:
                proc.kill()
                proc.wait()
                raise PredictorError(
                    f"importing the predictor took over {INSPECT_TIMEOUT:.0f}s"
                ) from e
    except OSError as e:
        raise PredictorError(f"cannot run {python}: {e}") from e
    except SandboxUnavailable as e:
        raise PredictorError(str(e)) from e
    try:
        result = json.loads(stdout.strip().splitlines()[-1])
    except (ValueError, IndexError):
        raise PredictorError(
            f"the model's Python exited with status {proc.returncode} without a description",
            stderr[-20000:],
        ) from None
    if not isinstance(result, dict):
        raise PredictorError("the schema probe printed something other than an object")
    if "error" in result:
        raise PredictorError(str(result["error"]), str(result.get("traceback", "")))
    return result


def _request_schema(title: str, input_ref: str) -> dict[str, Any]:
    return {
        "title": title,
        "type": "object",
        "properties": {
            "id": {"title": "Id", "type": "string"},
            "input": {"$ref": input_ref},
            "webhook": {"title": "Webhook", "type": "string", "format": "uri"},
            "webhook_events_filter": {
                "type": "array",
                "items": {"$ref": _SCHEMAS + "WebhookEvent"},
                "default": ["start", "output", "logs", "completed"],
            },
            "output_file_prefix": {"title": "Output File Prefix", "type": "string"},
            "created_at": {"title": "Created At", "type": "string", "format": "date-time"},
        },
    }


def _response_schema(title: str, input_ref: str, output_ref: str) -> dict[str, Any]:
    time = {"type": "string", "format": "date-time"}
    return {
        "title": title,
        "type": "object",
        "properties": {
            "input": {"$ref": input_ref},
            "output": {"$ref": output_ref},
            "id": {"title": "Id", "type": "string"},
            "version": {"title": "Version", "type": "string"},
            "created_at": {"title": "Created At", **time},
            "started_at": {"title": "Started At", **time},
            "completed_at": {"title": "Completed At", **time},
            "logs": {"title": "Logs", "type": "string", "default": ""},
            "error": {"title": "Error", "type": "string"},
            "status": {"$ref": _SCHEMAS + "Status"},
            "metrics": {"title": "Metrics", "type": "object"},
        },
    }


_JSON = "application/json"
_ANY_RESPONSE = {"description": "Successful Response", "content": {_JSON: {"schema": {}}}}
_INVALID_RESPONSE = {
    "description": "Validation Error",
    "content": {_JSON: {"schema": {"$ref": _SCHEMAS + "HTTPValidationError"}}},
}


def _run_paths(kind: str, request: str, response: str, summary: str) -> dict[str, Any]:
    """POST /{kind}s, PUT /{kind}s/{id} (idempotent, async), POST .../cancel, as coglet serves."""
    param = f"{kind}_id"
    plural = f"/{kind}s"
    answered = {
        "200": {
            "description": "Successful Response",
            "content": {_JSON: {"schema": {"$ref": _SCHEMAS + response}}},
        },
        "422": _INVALID_RESPONSE,
    }
    body = {"content": {_JSON: {"schema": {"$ref": _SCHEMAS + request}}}}
    id_param = {
        "required": True,
        "schema": {"title": param.replace("_", " ").title(), "type": "string"},
        "name": param,
        "in": "path",
    }
    return {
        plural: {
            "post": {
                "summary": summary,
                "description": f"Run a single {kind} on the model",
                "operationId": f"{summary.lower()}_{kind}s_post",
                "requestBody": body,
                "responses": answered,
            }
        },
        f"{plural}/{{{param}}}": {
            "put": {
                "summary": f"{summary} Idempotent",
                "operationId": f"{summary.lower()}_idempotent_{kind}s__{param}__put",
                "parameters": [id_param],
                "requestBody": body,
                "responses": answered,
            }
        },
        f"{plural}/{{{param}}}/cancel": {
            "post": {
                "summary": "Cancel",
                "operationId": f"cancel_{kind}s__{param}__cancel_post",
                "parameters": [id_param],
                "responses": {"200": _ANY_RESPONSE, "422": _INVALID_RESPONSE},
            }
        },
    }


def _add_enums(
    schemas: dict[str, Any], input_schema: dict[str, Any], enums: dict[str, Any], suffix: str
) -> None:
    """Add the enum components of ``choices`` inputs, renaming any that would clobber one."""
    for name, enum in enums.items():
        component = name
        if component in schemas and schemas[component] != enum:
            component = f"{name}{suffix}"
            enum = {**enum, "title": component}
        schemas[component] = enum
        if component != name:
            input_schema["properties"][name]["allOf"] = [{"$ref": _SCHEMAS + component}]


def output_streams(openapi_schema: dict[str, Any]) -> bool | None:
    """Whether a version's output is an iterator, whose partial output streams; None when
    the schema does not say. A plain list does not stream, although coglet's own log
    reports ``is_stream`` for one too."""
    output = openapi_schema.get("components", {}).get("schemas", {}).get("Output")
    if not isinstance(output, dict):
        return None
    return output.get("x-cog-array-type") == "iterator"


def build_openapi_schema(probe: dict[str, Any], cog_version: str) -> dict[str, Any]:
    """Wrap the probe's Input/Output (and TrainingInput/TrainingOutput) in an OpenAPI document."""
    predict, train = probe.get("predict"), probe.get("train")
    schemas: dict[str, Any] = {}
    paths: dict[str, Any] = {
        "/": {
            "get": {
                "summary": "Root",
                "operationId": "root__get",
                "responses": {"200": _ANY_RESPONSE},
            }
        },
        "/health-check": {
            "get": {
                "summary": "Healthcheck",
                "operationId": "healthcheck_health_check_get",
                "responses": {"200": _ANY_RESPONSE},
            }
        },
    }
    if predict is not None:
        schemas["Input"] = predict["input"]
        schemas["Output"] = predict["output"]
        _add_enums(schemas, predict["input"], predict["enums"], "")
        schemas["PredictionRequest"] = _request_schema("PredictionRequest", _SCHEMAS + "Input")
        schemas["PredictionResponse"] = _response_schema(
            "PredictionResponse", _SCHEMAS + "Input", _SCHEMAS + "Output"
        )
        paths.update(_run_paths("prediction", "PredictionRequest", "PredictionResponse", "Predict"))
    if train is not None:
        schemas["TrainingInput"] = train["input"]
        # Replicate names a trainer's output component after itself, not "Output".
        schemas["TrainingOutput"] = {**train["output"], "title": "TrainingOutput"}
        _add_enums(schemas, train["input"], train["enums"], "Training")
        schemas["TrainingRequest"] = _request_schema("TrainingRequest", _SCHEMAS + "TrainingInput")
        schemas["TrainingResponse"] = _response_schema(
            "TrainingResponse", _SCHEMAS + "TrainingInput", _SCHEMAS + "TrainingOutput"
        )
        paths.update(_run_paths("training", "TrainingRequest", "TrainingResponse", "Train"))
    schemas.update(_shared_schemas())
    return {
        "openapi": "3.0.2",
        "info": {"title": "Cog", "version": cog_version},
        "paths": paths,
        "components": {"schemas": schemas},
    }


def _shared_schemas() -> dict[str, Any]:
    """The components every Cog OpenAPI document has, whatever the model: the status and
    webhook event enumerations and FastAPI's validation errors (a fresh copy each call)."""
    return {
        "Status": {
            "title": "Status",
            "description": "An enumeration.",
            "enum": ["starting", "processing", "succeeded", "canceled", "failed"],
            "type": "string",
        },
        "WebhookEvent": {
            "title": "WebhookEvent",
            "description": "An enumeration.",
            "enum": ["start", "output", "logs", "completed"],
            "type": "string",
        },
        "HTTPValidationError": {
            "title": "HTTPValidationError",
            "type": "object",
            "properties": {
                "detail": {
                    "title": "Detail",
                    "type": "array",
                    "items": {"$ref": _SCHEMAS + "ValidationError"},
                }
            },
        },
        "ValidationError": {
            "title": "ValidationError",
            "required": ["loc", "msg", "type"],
            "type": "object",
            "properties": {
                "loc": {
                    "title": "Location",
                    "type": "array",
                    "items": {"anyOf": [{"type": "string"}, {"type": "integer"}]},
                },
                "msg": {"title": "Message", "type": "string"},
                "type": {"title": "Error Type", "type": "string"},
            },
        },
    }


class Inspected(BaseModel):
    """What pushing learns from a model's predictor: its ``openapi_schema``, and whether its
    class has a ``healthcheck()`` (its own or inherited) that coglet runs."""

    openapi_schema: dict[str, Any]
    healthcheck: bool = False


def inspect_model(model_dir: Path, python: Path, config: CogConfig) -> Inspected:
    """Derive the version's ``openapi_schema`` from its predictor (and trainer, if any), and
    whether the predictor has a ``healthcheck()``.

    Runs ``_cog_probe.py`` with ``python`` (the model's own environment) in ``model_dir``.
    Raises ``PredictorError`` with the model's traceback when it fails to import or uses an
    input type Cog does not support.
    """
    try:
        decorated_concurrency(model_dir, config.predict_ref)
    except ValueError as e:
        raise PredictorError(str(e)) from None
    probe = run_probe(model_dir, python, config)
    predict = probe.get("predict") or {}
    if config.max_concurrency > 1 and predict.get("is_async") is False:
        # coglet would refuse to start it: refuse it now, as `cog build` does.
        raise PredictorError(
            f"{config.concurrency_source} > 1 requires an async run() or predict() method"
        )
    return Inspected(
        openapi_schema=build_openapi_schema(probe, str(probe.get("cog_version", ""))),
        healthcheck=probe.get("healthcheck") is True,
    )


def write_schema_for_coglet(model_dir: Path, openapi_schema: dict[str, Any]) -> None:
    """Write ``model_dir/.cog/openapi_schema.json``, where coglet looks for its schema.

    coglet 0.23.1 reads this file (relative to its cwd, the model directory) once, after
    setup; without it, it validates nothing and serves no ``/openapi.json``. With it, it
    validates ``POST /predictions`` input against ``components.schemas.Input`` (missing
    required fields, types, bounds, choices: 422 with a pydantic-style ``detail`` list) and,
    started with ``--x-mode train``, ``POST /trainings`` input against
    ``components.schemas.TrainingInput`` of the same file: one combined document serves both
    modes. It drops unknown input fields silently rather than refusing them, and it lets
    ``2.0`` through for an integer input (the model then gets a float), which is why the API
    validates first (``replicant.validation``). A train-mode coglet also answers
    ``POST /predictions`` by running ``train()`` with no validation at all: send trainings
    to ``/trainings`` only.
    """
    path = model_dir / COGLET_SCHEMA_PATH
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(openapi_schema, indent=2), encoding="utf-8")
    # A coglet starting at the same moment must never read half a file.
    os.replace(tmp, path)
