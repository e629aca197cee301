"""Building a pushed version on a worker: fetch the archive, build the env, probe, record.

The API has put the pushed archive in the object store; this activity unpacks it into a
scratch directory, runs ``create_version`` (copy into the versions dir, Python environment,
schema from the predictor, the row) and appends every progress line to the ``build`` row,
which the API tails. A model that cannot become a version ends the build ``failed`` with a
problem body; anything else raises, and the activity is retried.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import shutil
import threading
from collections.abc import Callable
from typing import Any

from sqlalchemy.engine import Engine
from sqlmodel import Session, select
from temporalio import activity

from activities.running import tell_workflow_started
from replicant import builds
from replicant.archives import unpack_model
from replicant.contracts import ActivityName, BuildOutcome, BuildRequest, FailBuild
from replicant.managedweights import Resolver
from replicant.settings import Settings
from replicant.storage import ObjectStore
from replicant.tables import Model
from replicant.timeutil import utcnow
from replicant.versions import create_version

log = logging.getLogger("replicant.builds")

# How often new log lines reach the row the API tails.
LOG_FLUSH_INTERVAL = 0.2


class BuildAbandoned(Exception):
    """The build's activity was cancelled: the build thread stops at its next step."""


class BuildLog:
    """Progress lines from the build thread, written to the row in batches."""

    def __init__(self, engine: Engine, build_id: str) -> None:
        self.engine = engine
        self.build_id = build_id
        self.abandoned = threading.Event()
        self._lines: list[str] = []
        self._lock = threading.Lock()
        # The batch being appended: it lands before the build's outcome is written.
        self._writing: asyncio.Future[None] | None = None

    def say(self, line: str) -> None:
        """Queue one line (called from the build thread); raise once the build is abandoned,
        so a cancelled build records no version."""
        if self.abandoned.is_set():
            raise BuildAbandoned(self.build_id)
        with self._lock:
            self._lines.append(line)

    def take(self) -> str:
        """Every queued line, as text to append."""
        with self._lock:
            lines, self._lines = self._lines, []
        return "".join(f"{line}\n" for line in lines)

    async def flush_forever(self) -> None:
        """Append queued lines every ``LOG_FLUSH_INTERVAL``, and heartbeat, until cancelled."""
        while True:
            await asyncio.sleep(LOG_FLUSH_INTERVAL)
            # Delivers cancellation and lets Temporal notice a dead worker (the SDK throttles).
            activity.heartbeat()
            text = self.take()
            if text:
                self._writing = asyncio.ensure_future(
                    asyncio.to_thread(builds.append_logs, self.engine, self.build_id, text)
                )
                # Stopping the flushes does not stop a batch on its way (see ``settled``).
                await asyncio.shield(self._writing)

    async def settled(self) -> None:
        """Wait for the batch on its way, if any (its lines come before the last ones)."""
        if self._writing is not None:
            await asyncio.gather(self._writing, return_exceptions=True)


class BuildActivities:
    """Version builds, bound to the settings, the database and the object store."""

    def __init__(self, settings: Settings, engine: Engine, store: ObjectStore) -> None:
        self.settings = settings
        self.engine = engine
        self.store = store

    @activity.defn(name=ActivityName.BUILD_VERSION)
    async def build_version(self, req: BuildRequest) -> BuildOutcome:
        """Build the pushed version and record the outcome in the ``build`` row."""
        row = await asyncio.to_thread(builds.get_build, self.engine, req.id)
        if row is not None and row.status in builds.TERMINAL:
            # an earlier attempt ended it
            return _outcome(row.status, row.version_id, row.created, row.error)
        # Until now it waited in the build queue for a slot; its status says a worker has it.
        await asyncio.to_thread(builds.mark_processing, self.engine, req.id, utcnow())
        await tell_workflow_started()
        logs = BuildLog(self.engine, req.id)
        attempt = activity.info().attempt
        if attempt > 1:
            logs.say(f"the build's worker stopped; building again (attempt {attempt})")
        flushing = asyncio.create_task(logs.flush_forever())
        try:
            version_id, created, error = await asyncio.to_thread(self._build, req, logs.say)
        except asyncio.CancelledError:
            logs.abandoned.set()  # the thread cannot be interrupted: it stops at its next line
            raise
        finally:
            flushing.cancel()
            await asyncio.gather(flushing, return_exceptions=True)
            await logs.settled()
        # The last lines and the outcome in one write: a reader never sees one without the other.
        await asyncio.to_thread(
            builds.finish_build,
            self.engine,
            req.id,
            version_id=version_id,
            created=created,
            error=error,
            logs=logs.take(),
        )
        await asyncio.to_thread(self._remove_archive, req.archive_key)
        if error is None:
            log.info(
                "event=version_built build=%s model=%s version=%s", req.id, req.model, version_id
            )
            return _outcome("succeeded", version_id, created)
        log.info(
            "event=build_failed build=%s model=%s status=%s", req.id, req.model, error["status"]
        )
        return _outcome("failed", None, False, error)

    @activity.defn(name=ActivityName.FAIL_BUILD)
    async def fail_build(self, job: FailBuild) -> None:
        """End a build that the build activity could not finish, with a 500 problem."""
        error = builds.unexpected_problem(job.message)
        await asyncio.to_thread(builds.finish_build, self.engine, job.build_id, error=error)
        await asyncio.to_thread(self._remove_archive, job.archive_key)

    def _remove_archive(self, key: str) -> None:
        with contextlib.suppress(Exception):  # deleting a missing object is no error
            self.store.delete(key)

    def _build(
        self, req: BuildRequest, say: Callable[[str], None]
    ) -> tuple[str | None, bool, dict[str, Any] | None]:
        """(version id, created, None) or (None, False, problem body)."""
        row = builds.get_build(self.engine, req.id)
        started = row.created_at if row is not None else None
        work = builds.build_dir(self.settings.data_dir, req.id)
        try:
            model = self._model(req)
            if model is None:
                body = builds.problem(404, f"Model {req.model} not found", title="Not found")
                return None, False, body
            archive = work / "archive"
            say("fetching the pushed files")
            self.store.download(req.archive_key, archive)
            target = work / "model"
            target.mkdir()
            root = unpack_model(archive, target, self.settings.max_push_bytes)
            try:
                version = create_version(
                    self.settings,
                    self.engine,
                    model,
                    root,
                    say,
                    staging_prefix=builds.staging_prefix(req.id),
                    weights=Resolver(
                        self.settings, self.store, self.engine, req.owner, model.owner
                    ),
                )
            except Exception as err:
                problem = builds.failure_problem(err)
                if problem is None:
                    raise
                return None, False, problem
        finally:
            shutil.rmtree(work, ignore_errors=True)
        created = started is None or version.created_at >= started
        return version.id, created, None

    def _model(self, req: BuildRequest) -> Model | None:
        """The model pushed to; a new one (not yet stored) when the push creates it."""
        owner, _, name = req.model.partition("/")
        with Session(self.engine, expire_on_commit=False) as session:
            found = session.exec(
                select(Model).where(Model.owner == owner, Model.name == name)
            ).first()
        if found is not None or req.new_model is None:
            return found
        return Model(owner=owner, name=name, **req.new_model.model_dump())


def _outcome(
    status: str, version: str | None, created: bool, error: dict[str, Any] | None = None
) -> BuildOutcome:
    return BuildOutcome(
        status="succeeded" if status == "succeeded" else "failed",
        version=version,
        created=created,
        error=str(error.get("detail") or error.get("title")) if error else None,
    )
