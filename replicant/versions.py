"""Making versions out of Cog model directories, and seeding the built-in models."""

from __future__ import annotations

import hashlib
import shutil
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path

import cog
from sqlalchemy.engine import Engine
from sqlmodel import Session, select

from replicant.accounts import ensure_account
from replicant.archives import model_files
from replicant.cogmodel import inspect_model, load_cog_config, write_schema_for_coglet
from replicant.envs import ensure_env
from replicant.settings import Settings
from replicant.tables import Model, Version

EXAMPLES_DIR = Path(__file__).resolve().parent.parent / "examples"
# (owner, name, example directory, description)
BUILTIN_MODELS = [
    ("replicate", "hello-world", "hello-world", "A tiny model that says hello"),
    ("replicant", "sleep", "sleep", "Sleeps for a while, logging each second"),
    ("replicant", "thumbnail", "thumbnail", "Makes a PNG thumbnail of an image"),
    ("replicant", "ngram", "ngram", "A small trainable n-gram text generator that streams"),
]
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
    staging_prefix: str = ".staging-",
) -> Version:
    """Copy ``src`` into the data dir, build its env, derive its schema, and record it.

    Every check runs on a private staging copy (named ``staging_prefix`` + random, beside the
    versions); only a version that passed all of them is moved into place and recorded, so a
    bad push leaves nothing visible (no row, no directory). A ``model`` without an id is
    created together with its first version.
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
        for path in _files(src):
            target = staging / path.relative_to(src)
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(path, target)
        say("reading cog.yaml")
        config = load_cog_config(staging)
        say("preparing the Python environment")
        python = ensure_env(config, settings.data_dir.resolve() / "envs", say)
        say("deriving the schema from the predictor")
        schema = inspect_model(staging, python, config)
        write_schema_for_coglet(staging, schema)
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
        )
        say("recording the version")
        with Session(engine, expire_on_commit=False) as session:
            if model.id is None:
                session.add(model)
                session.flush()  # the model exists from the same commit as its first version
                version.model_id = model.id or 0
            if session.get(Version, version_id) is None:
                session.add(version)
            stored = session.get(Model, model.id)
            if stored is not None:
                stored.latest_version_id = version_id
                session.add(stored)
            session.commit()
    except BaseException:
        if moved:
            shutil.rmtree(dest, ignore_errors=True)
        raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return version


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
        versions.append(create_version(settings, engine, model, EXAMPLES_DIR / directory))
    return versions
