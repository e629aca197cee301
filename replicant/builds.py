"""The read model of version builds: the ``build`` row, its growing log, and its outcome.

The API writes the row when a push arrives and tails it; the build activity appends log
lines and writes the outcome. A build that fails says why in a problem+json body, made here
from the error so that the API and the worker agree on it.
"""

from __future__ import annotations

import contextlib
import shutil
import tempfile
import time
from datetime import datetime
from pathlib import Path
from typing import Any

from sqlalchemy import update
from sqlalchemy.engine import Engine
from sqlalchemy.exc import IntegrityError
from sqlmodel import Session, col
from temporalio.client import WorkflowExecutionStatus

from replicant.cogmodel import CogConfigError, PredictorError
from replicant.envs import EnvBuildError
from replicant.objectkeys import build_archive
from replicant.storage import ObjectStore
from replicant.tables import Build
from replicant.timeutil import utcnow

TERMINAL = ("succeeded", "failed")
RUNNING = ("starting", "processing")
# Longer than any build (pip alone may take an hour): older scratch dirs are leftovers.
STALE_AFTER = 24 * 3600.0


def problem(
    status: int,
    detail: str,
    *,
    title: str,
    invalid_fields: list[dict[str, str]] | None = None,
) -> dict[str, Any]:
    """A problem+json body (the shape of ``api.errors.problem_response``)."""
    body: dict[str, Any] = {"title": title, "detail": detail, "status": status}
    if invalid_fields is not None:
        body["invalid_fields"] = invalid_fields
    return body


def failure_problem(err: BaseException) -> dict[str, Any] | None:
    """The problem body of a model that cannot become a version; None for other errors."""
    if isinstance(err, CogConfigError):
        reason = str(err)
        return problem(
            422,
            reason if reason.startswith("cog.yaml") else f"cog.yaml: {reason}",
            title="Invalid cog.yaml",
            invalid_fields=[{"field": "cog.yaml", "message": str(err)}],
        )
    if isinstance(err, PredictorError):
        detail = f"The predictor could not be loaded: {err.message}"
        if err.traceback:
            detail += "\n\n" + err.traceback.rstrip()
        return problem(
            422,
            detail,
            title="Invalid predictor",
            invalid_fields=[{"field": "predictor", "message": err.message}],
        )
    if isinstance(err, EnvBuildError):
        first = str(err).splitlines()[0] if str(err) else "the environment could not be built"
        return problem(
            422,
            f"The model's Python requirements could not be installed: {err}",
            title="Environment build failed",
            invalid_fields=[{"field": "build.python_packages", "message": first}],
        )
    if isinstance(err, IntegrityError):
        return problem(
            409,
            "Another push created this model or version at the same time; push again",
            title="Conflict",
        )
    return None


def unexpected_problem(message: str) -> dict[str, Any]:
    """The problem body of a build that ended for a reason other than the model itself."""
    return problem(500, message, title="Internal server error")


def work_dir(data_dir: Path) -> Path:
    """A private scratch directory for one push, on the same disk as the versions.

    Scratch and staging directories left by a process that died mid-build are swept here,
    once they are older than any build can take.
    """
    uploads = data_dir.resolve() / "uploads"
    uploads.mkdir(parents=True, exist_ok=True)
    stale = time.time() - STALE_AFTER
    leftovers = [
        *uploads.glob("push-*"),
        *uploads.glob("build-*"),
        *(data_dir.resolve() / "versions").glob(".staging-*"),
    ]
    for path in leftovers:
        with contextlib.suppress(OSError):
            if path.stat().st_mtime < stale:
                shutil.rmtree(path, ignore_errors=True)
    return Path(tempfile.mkdtemp(dir=uploads, prefix="push-"))


def staging_prefix(build_id: str) -> str:
    """The prefix of a build's staging copies beside the versions (see ``create_version``)."""
    return f".staging-{build_id}-"


def build_dir(data_dir: Path, build_id: str) -> Path:
    """A build's scratch directory, empty: what an earlier attempt of the same build left
    (its worker died mid-way), here and among the versions' staging copies, is removed."""
    data = data_dir.resolve()
    for path in (data / "versions").glob(f"{staging_prefix(build_id)}*"):
        shutil.rmtree(path, ignore_errors=True)
    work = data / "uploads" / f"build-{build_id}"
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    return work


def get_build(engine: Engine, build_id: str) -> Build | None:
    """The build row, detached from its session."""
    with Session(engine, expire_on_commit=False) as session:
        return session.get(Build, build_id)


def mark_processing(engine: Engine, build_id: str, started_at: datetime) -> None:
    """A worker took the build at ``started_at``: it no longer waits for a build slot
    (``starting``). A build that ended, or that a worker took already, keeps what it has."""
    with Session(engine) as session:
        session.execute(
            update(Build)
            .where(col(Build.id) == build_id, col(Build.status) == "starting")
            .values(status="processing", started_at=started_at)
        )
        session.commit()


def append_logs(engine: Engine, build_id: str, text: str) -> None:
    """Add ``text`` (whole lines) to a running build's log."""
    if not text:
        return
    with Session(engine) as session:
        session.execute(
            update(Build)
            .where(col(Build.id) == build_id, col(Build.status).not_in(TERMINAL))
            .values(logs=col(Build.logs) + text)
        )
        session.commit()


def finish_build(
    engine: Engine,
    build_id: str,
    *,
    version_id: str | None = None,
    created: bool = False,
    error: dict[str, Any] | None = None,
    logs: str = "",
) -> bool:
    """Write a build's outcome (with its last log lines) once; False if it had ended."""
    with Session(engine) as session:
        result = session.execute(
            update(Build)
            .where(col(Build.id) == build_id, col(Build.status).not_in(TERMINAL))
            .values(
                logs=col(Build.logs) + logs,
                status="failed" if error is not None else "succeeded",
                version_id=version_id,
                created=created,
                error=error,
                completed_at=utcnow(),
            )
        )
        session.commit()
        return bool(getattr(result, "rowcount", 0))


def end_orphaned(
    engine: Engine, store: ObjectStore, build_id: str, workflow: WorkflowExecutionStatus | None
) -> bool:
    """Fail a build whose workflow will never end it (``workflow``: its status, None when it
    never started) with the reason, and remove its archive; False when it had ended."""
    how = "never started" if workflow is None else f"ended ({workflow.name.lower()})"
    error = unexpected_problem(f"The build's workflow {how} before the build finished")
    failed = finish_build(engine, build_id, error=error)
    if failed:
        with contextlib.suppress(Exception):  # deleting a missing object is no error
            store.delete(build_archive(build_id))
    return failed
