"""Making versions out of Cog model directories, and seeding the built-in models."""

from __future__ import annotations

import hashlib
import logging
import shutil
import sys
import tempfile
import threading
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

import cog
from sqlalchemy.engine import Engine
from sqlmodel import Session, select

from replicant.accounts import ensure_account
from replicant.archives import model_files
from replicant.buildchecks import check_build
from replicant.cogmodel import (
    CogConfig,
    Inspected,
    PredictorError,
    inspect_model,
    load_cog_config,
    write_schema_for_coglet,
)
from replicant.collections import seed_builtin_collection
from replicant.envs import EnvBuildError, ensure_env, env_ready, plan_env
from replicant.managedweights import Resolver, write_manifest
from replicant.settings import Settings
from replicant.tables import Model, Version

EXAMPLES_DIR = Path(__file__).resolve().parent.parent / "examples"
# (owner, name, example directory, description)
BUILTIN_MODELS = [
    ("replicate", "hello-world", "hello-world", "A tiny model that says hello"),
    ("replicant", "sleep", "sleep", "Sleeps for a while, logging each second"),
    ("replicant", "thumbnail", "thumbnail", "Makes a PNG thumbnail of an image"),
    ("replicant", "ngram", "ngram", "A small trainable n-gram text generator that streams"),
    ("replicant", "embeddings", "embeddings", "Sentence embeddings (all-MiniLM-L6-v2, int8 ONNX)"),
    ("replicant", "speech", "speech", "Text to speech with Piper (US English voice)"),
    ("replicant", "ocr", "ocr", "Text and its lines from an image (RapidOCR, PP-OCRv4)"),
]
log = logging.getLogger(__name__)
_files = model_files  # the files that make up a version, also what `replicant push` packs


def content_hash(src: Path, model_ref: str) -> str:
    """A version id: the SHA-256 of the model's name and every file of its directory."""
    digest = hashlib.sha256(model_ref.encode())
    for path in _files(src):
        digest.update(str(path.relative_to(src)).encode() + b"\0")
        digest.update(path.read_bytes() + b"\0")
    return digest.hexdigest()


def version_python(version: Version) -> Path:
    """The interpreter that runs a version: its own env, or this process's."""
    return Path(version.python) if version.python else Path(sys.executable)


def create_version(
    settings: Settings,
    engine: Engine,
    model: Model,
    src: Path,
    progress: Callable[[str], None] | None = None,
    *,
    defer_env: bool = False,
    staging_prefix: str = ".staging-",
    weights: Resolver | None = None,
) -> Version:
    """Copy ``src`` into the data dir, build its env, derive its schema, and record it.

    With ``defer_env`` a model whose predictor imports with Replicant's own Python (its heavy
    imports inside ``setup()``) is recorded at once and its env is built later
    (``ensure_version_env``); other models build theirs first, as a push does.
    Every check runs on a private staging copy (named ``staging_prefix`` + random, beside the
    versions); only a version that passed all of them is
    moved into place and recorded, so a bad push leaves nothing visible (no row, no
    directory). A ``model`` without an id is created together with its first version.
    cog.yaml's managed weights are resolved by ``weights`` (the pusher's files, the object
    store; ``replicant/managedweights.py``), else with no pusher.
    Raises ``CogConfigError``, ``EnvBuildError`` or ``PredictorError`` on a bad model.
    """
    say = progress or (lambda _line: None)
    version_id = content_hash(src, f"{model.owner}/{model.name}")
    if model.id is not None:
        with Session(engine, expire_on_commit=False) as session:
            existing = session.get(Version, version_id)
        if existing is not None:
            say(f"version {version_id} exists already")
            return existing
    dest = settings.data_dir.resolve() / "versions" / version_id
    dest.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(dir=dest.parent, prefix=staging_prefix))
    moved = False
    try:
        say("copying the model files")
        _copy_files(src, staging)
        say("reading cog.yaml")
        config = load_cog_config(staging)
        readme = _readme(staging)
        for warning in check_build(config, model.hardware, settings):
            say(f"warning: {warning}")
        python, inspected = _environment_and_schema(settings, staging, config, say, defer_env)
        schema = inspected.openapi_schema
        write_schema_for_coglet(staging, schema)
        if config.weights:
            say("resolving the managed weights")
            resolver = replace(weights or Resolver(settings, engine=engine), version=version_id)
            write_manifest(staging, resolver.resolve(staging, config.weights))
        try:
            staging.rename(dest)
            moved = True
        except OSError:
            # The same content is in place already (an earlier or concurrent push).
            write_schema_for_coglet(dest, schema)
        version = Version(
            id=version_id,
            model_id=model.id or 0,
            cog_version=cog.__version__,
            openapi_schema=schema,
            model_dir=str(dest),
            python="" if python == Path(sys.executable) else str(python),
            predict_ref=config.predict_ref,
            train_ref=config.train_ref,
            healthcheck=inspected.healthcheck,
        )
        say("recording the version")
        _record(engine, model, version, readme)
    except BaseException:
        if moved:
            shutil.rmtree(dest, ignore_errors=True)
        raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return version


def _copy_files(src: Path, dest: Path) -> None:
    """Copy the model's files (``_files``) from ``src`` into ``dest``."""
    for path in _files(src):
        target = dest / path.relative_to(src)
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(path, target)


def _record(engine: Engine, model: Model, version: Version, readme: str | None) -> None:
    """Record ``version`` as its model's latest (and the model, when it has no id yet), in
    one commit; a pushed README.md becomes the model's readme."""
    with Session(engine, expire_on_commit=False) as session:
        if model.id is None:
            session.add(model)
            session.flush()  # the model exists from the same commit as its first version
            version.model_id = model.id or 0
        if session.get(Version, version.id) is None:
            session.add(version)
        stored = session.get(Model, model.id)
        if stored is not None:
            stored.latest_version_id = version.id
            stored.latest_version_created_at = version.created_at
            if readme is not None:
                stored.readme = readme
            session.add(stored)
        session.commit()


def _environment_and_schema(
    settings: Settings,
    model_dir: Path,
    config: CogConfig,
    say: Callable[[str], None],
    defer_env: bool,
) -> tuple[Path, Inspected]:
    envs_dir = settings.resolved_envs_dir
    if defer_env:
        planned = plan_env(config, envs_dir, say)
        if not env_ready(planned):
            try:
                inspected = inspect_model(model_dir, Path(sys.executable), config)
            except PredictorError:
                pass  # the predictor needs its packages to import: build them first
            else:
                say(f"the environment will be built in {planned.parent.parent}")
                return planned, inspected
    say("preparing the Python environment")
    python = ensure_env(config, envs_dir, say)
    say("deriving the schema from the predictor")
    return python, inspect_model(model_dir, python, config)


def ensure_version_env(version: Version, progress: Callable[[str], None] | None = None) -> Path:
    """Build the version's environment if it is not ready (waiting for a build under way).

    Raises ``EnvBuildError`` when it cannot be built.
    """
    python = version_python(version)
    if env_ready(python):
        return python
    config = load_cog_config(Path(version.model_dir))
    built = ensure_env(config, python.parent.parent.parent, progress)
    if built != python:
        raise EnvBuildError(f"the environment at {built} is not the version's {python}")
    return python


def _prebuild(versions: list[Version]) -> None:
    # One build at a time: pip runs in parallel would only slow the stack and each other.
    for version in versions:
        try:
            ensure_version_env(version)
        except Exception:  # the first prediction builds it again and reports why it fails
            log.exception("event=env_prebuild_failed version=%s", version.id)


def _readme(model_dir: Path) -> str | None:
    """The text of a model directory's README.md, if it has one."""
    path = model_dir / "README.md"
    return path.read_text(encoding="utf-8", errors="replace") if path.is_file() else None


def ensure_model(
    engine: Engine,
    owner: str,
    name: str,
    *,
    description: str = "",
    visibility: str = "public",
    hardware: str = "cpu",
) -> Model:
    with Session(engine, expire_on_commit=False) as session:
        model = session.exec(select(Model).where(Model.owner == owner, Model.name == name)).first()
        if model is None:
            model = Model(
                owner=owner,
                name=name,
                description=description,
                visibility=visibility,
                hardware=hardware,
            )
            session.add(model)
            session.commit()
            session.refresh(model)
        return model


def seed_builtin_models(settings: Settings, engine: Engine) -> list[Version]:
    """The example models every stack starts with (idempotent)."""
    versions = []
    for owner, name, directory, description in BUILTIN_MODELS:
        ensure_account(engine, owner, type="organization")
        model = ensure_model(
            engine, owner, name, description=description, hardware=settings.default_hardware
        )
        version = create_version(settings, engine, model, EXAMPLES_DIR / directory, defer_env=True)
        versions.append(version)
    unbuilt = [v for v in versions if not env_ready(version_python(v))]
    if settings.prebuild_envs and unbuilt:
        # The stack is up in seconds; predictions stay `starting` until their env is built.
        threading.Thread(
            target=_prebuild, args=(unbuilt,), name="env-prebuild", daemon=True
        ).start()
    seed_builtin_collection(engine, [f"{owner}/{name}" for owner, name, _, _ in BUILTIN_MODELS])
    return versions
