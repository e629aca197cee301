"""Pushing a model over HTTP: receive the archive, start its build, report progress.

The upload is a .tar.gz/.tar/.zip of a Cog model directory, either as the raw request body
or as the file of a ``multipart/form-data`` request. The API checks the archive and
``cog.yaml``, puts the archive in the object store and starts ``BuildVersionWorkflow`` on the
build queue; a worker builds the version and appends its log to the ``build`` row, which the
API tails. With ``Accept: application/x-ndjson`` the build streams one JSON object per line
(``log`` lines, then one ``version`` or ``error``), so a pusher sees the environment build as
it happens; ``GET /v1/builds/{id}`` follows the same build from any API process.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import shutil
import time
from collections.abc import AsyncIterator
from datetime import timedelta
from pathlib import Path
from typing import Any

from sqlmodel import Session, col, select
from starlette.datastructures import UploadFile
from starlette.requests import Request
from starlette.types import Message
from temporalio.client import WorkflowExecutionStatus

from api.errors import ProblemError
from api.state import AppState, forget_lookups
from replicant import builds, serialize
from replicant.archives import ArchiveError, ArchiveTooLarge, unpack_model
from replicant.contracts import BuildRequest, build_workflow_id
from replicant.settings import Settings
from replicant.storage import ObjectStore
from replicant.summaries import build_summary
from replicant.tables import Account, Build, Membership, Version
from replicant.temporal import workflow_status
from replicant.timeutil import utcnow
from workflows.build import BuildVersionWorkflow, search_attributes

log = logging.getLogger("replicant.api")

NDJSON = "application/x-ndjson"
MULTIPART_OVERHEAD = 64 * 1024
# How often a follower reads the build row for new log lines.
POLL_INTERVAL = 0.2
BUILD_HEADER = "Replicant-Build"
# A follower asks Temporal this often whether a running build's workflow still lives.
WORKFLOW_CHECK_INTERVAL = 5.0
# A build row younger than this may be waiting for its workflow to start.
START_GRACE = timedelta(minutes=1)
# A build's first log line: it waits for a worker's build slot (max_concurrent_builds each).
WAITING_FOR_A_WORKER = "waiting for a build worker"


def check_pusher(session: Session, account: Account, settings: Settings) -> None:
    """Refuse (403) an account that the operator's push settings do not name: with
    ``push_accounts`` and ``push_organizations`` both empty everyone may push, otherwise
    the listed accounts and the members of the listed organizations."""
    accounts, organizations = settings.push_accounts, settings.push_organizations
    if not accounts and not organizations or account.username in accounts:
        return
    if organizations:
        member = session.exec(
            select(Membership.user_id)
            .join(Account, col(Account.id) == Membership.organization_id)
            .where(Membership.user_id == account.id, col(Account.username).in_(organizations))
        ).first()
        if member is not None or account.username in organizations:
            return
    raise ProblemError(
        403,
        f"Account {account.username} may not push models on this installation; ask its "
        "operator (REPLICANT_PUSH_ACCOUNTS, REPLICANT_PUSH_ORGANIZATIONS)",
        title="Push not allowed",
    )


def too_large(limit: int) -> ProblemError:
    return ProblemError(413, f"The model archive is larger than {limit} bytes")


def bad_archive(message: str) -> ProblemError:
    return ProblemError(
        422,
        f"archive: {message}",
        title="Invalid model archive",
        invalid_fields=[{"field": "archive", "message": message}],
    )


def as_problem(body: dict[str, Any], headers: dict[str, str] | None = None) -> ProblemError:
    """A stored problem body (see ``replicant.builds``) as the error routes raise."""
    return ProblemError(
        int(body.get("status", 500)),
        str(body.get("detail", "")),
        title=body.get("title"),
        invalid_fields=body.get("invalid_fields"),
        headers=headers,
    )


def build_problem(err: BaseException) -> ProblemError | None:
    """The problem+json for a model that cannot become a version; None for other errors."""
    body = builds.failure_problem(err)
    return None if body is None else as_problem(body)


async def receive_archive(request: Request, dest: Path, limit: int) -> None:
    """Write the uploaded archive to ``dest``; 413 past ``limit``, 422 when there is none."""
    content_type = request.headers.get("content-type", "")
    multipart = content_type.startswith("multipart/form-data")
    allowed = limit + (MULTIPART_OVERHEAD if multipart else 0)
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > allowed:
        raise too_large(limit)
    received = 0

    async def limited() -> Message:
        # Counts what actually arrives: a chunked body has no Content-Length to trust.
        nonlocal received
        message = await request.receive()
        if message["type"] == "http.request":
            received += len(message.get("body", b""))
            if received > allowed:
                raise too_large(limit)
        return message

    counted = Request(request.scope, receive=limited)
    if multipart:
        await _receive_multipart(counted, dest, limit)
        return
    with dest.open("wb") as sink:
        async for chunk in counted.stream():
            await asyncio.to_thread(sink.write, chunk)
    if received == 0:
        raise bad_archive("the request has no body; send a .tar.gz or .zip of the model")


async def _receive_multipart(request: Request, dest: Path, limit: int) -> None:
    async with request.form(max_files=1, max_fields=20) as form:
        uploads = [v for v in form.values() if isinstance(v, UploadFile)]
        if not uploads:
            raise bad_archive("the form has no file; send the model archive as a file field")
        upload = uploads[0]

        def copy() -> int:
            upload.file.seek(0)
            with dest.open("wb") as sink:
                shutil.copyfileobj(upload.file, sink)
                return sink.tell()

        if await asyncio.to_thread(copy) > limit:
            raise too_large(limit)


def unpack(archive: Path, work: Path, limit: int) -> Path:
    """Unpack into ``work/model``; the model's root directory (ProblemError if unsafe)."""
    target = work / "model"
    target.mkdir()
    try:
        return unpack_model(archive, target, limit)
    except ArchiveTooLarge as e:
        raise ProblemError(413, f"The model archive is too large: {e}") from e
    except ArchiveError as e:
        raise bad_archive(str(e)) from e


def store_archive(store: ObjectStore, archive: Path, key: str) -> None:
    """Put the pushed archive where the build activity fetches it."""
    upload = store.new_upload()
    try:
        with archive.open("rb") as source:
            while chunk := source.read(1024 * 1024):
                upload.write(chunk)
        store.commit(upload, key, "application/octet-stream")
    except BaseException:
        upload.discard()
        raise


async def start_build(state: AppState, req: BuildRequest) -> None:
    """Record the build and start its workflow; 503 (the build marked failed) when Temporal
    cannot be reached."""
    row = Build(id=req.id, owner=req.owner, model=req.model, logs=f"{WAITING_FOR_A_WORKER}\n")
    await state.db.run(_insert, row)
    try:
        client = await state.temporal()
        await client.start_workflow(
            BuildVersionWorkflow.run,
            req,
            id=build_workflow_id(req.id),
            task_queue=state.settings.build_queue,
            search_attributes=search_attributes(req),
            static_summary=build_summary(req.model, req.version, req.owner),
        )
    except Exception as err:
        log.error("event=build_not_started build=%s type=%s", req.id, type(err).__name__)
        problem = ProblemError(503, "The build could not be started; push again later")
        body = builds.problem(503, problem.detail, title=problem.title)
        await asyncio.to_thread(builds.finish_build, state.engine, req.id, error=body)
        with contextlib.suppress(Exception):  # an archive left behind is only wasted space
            store = await state.store()
            await asyncio.to_thread(store.delete, req.archive_key)
        raise problem from err


def _insert(session: Session, row: Build) -> None:
    session.add(row)
    session.commit()


def outcome(session: Session, row: Build) -> tuple[int, dict[str, Any]]:
    """A finished build's HTTP status and body: the version (201 new, 200 existing) or the
    problem."""
    if row.status != "succeeded" or row.version_id is None:
        error = row.error or builds.unexpected_problem("The build failed")
        return int(error.get("status", 500)), error
    version = session.get(Version, row.version_id)
    if version is None:  # deleted since: the build's result is gone
        return 404, builds.problem(404, f"Version {row.version_id} not found", title="Not found")
    return (201 if row.created else 200), serialize.body(serialize.version(version))


async def end_orphaned(state: AppState, row: Build) -> None:
    """Fail a running build whose workflow has ended without ending it (terminated, timed
    out) or never started (its API died first), so that followers stop waiting."""
    try:
        status = await workflow_status(await state.temporal(), build_workflow_id(row.id))
    except Exception:
        return  # Temporal unreachable for now: keep following, ask again later
    if status == WorkflowExecutionStatus.RUNNING:
        return
    if status is None and utcnow() - row.created_at < START_GRACE:
        return  # its start may still land
    # The workflow's activities write the outcome before it completes: a build that ended
    # so is left as it is (the write is guarded by status).
    store = await state.store()
    if await asyncio.to_thread(builds.end_orphaned, state.engine, store, row.id, status):
        how = "never_started" if status is None else status.name.lower()
        log.warning("event=build_orphaned build=%s workflow=%s", row.id, how)


async def tail(state: AppState, build_id: str) -> AsyncIterator[tuple[list[str], Build | None]]:
    """New whole log lines of a build as they are written; the row once it has ended."""
    offset = 0
    checked = time.monotonic()
    while True:
        row = await asyncio.to_thread(builds.get_build, state.engine, build_id)
        if row is None:
            raise ProblemError(404, f"Build {build_id} not found")
        done = row.status in builds.TERMINAL
        end = len(row.logs) if done else row.logs.rfind("\n", offset) + 1
        lines = row.logs[offset:end].splitlines() if end > offset else []
        offset = max(offset, end)
        if done and row.status == "succeeded":
            # Its version is its model's latest from now on: a create by the model's name
            # through this process runs it at once (api/state.py's lookup cache).
            forget_lookups()
        yield lines, row if done else None
        if done:
            return
        if time.monotonic() - checked > WORKFLOW_CHECK_INTERVAL:
            checked = time.monotonic()
            await end_orphaned(state, row)
        await asyncio.sleep(POLL_INTERVAL)


async def wait_build(state: AppState, build_id: str) -> tuple[int, dict[str, Any]]:
    """Wait for a build to end; its ``outcome``."""
    async for _, row in tail(state, build_id):
        if row is not None:
            return await state.db.read(outcome, row)
    raise ProblemError(500, "The build ended without an outcome")


def _line(event: dict[str, Any]) -> bytes:
    return json.dumps(event).encode() + b"\n"


async def ndjson_events(state: AppState, build_id: str) -> AsyncIterator[bytes]:
    """``{"event": "log", "message": ...}`` per build log line, then the outcome."""
    async for lines, row in tail(state, build_id):
        for message in lines:
            yield _line({"event": "log", "message": message})
        if row is None:
            continue
        status, body = await state.db.read(outcome, row)
        if status < 400:
            yield _line({"event": "version", "status": status, "version": body})
        else:
            yield _line({"event": "error", **body})
