"""Pushing a model over HTTP: receive the archive, build the version, report progress.

The upload is a .tar.gz/.tar/.zip of a Cog model directory, either as the raw request body
or as the file of a ``multipart/form-data`` request. With ``Accept: application/x-ndjson``
the build streams one JSON object per line (``log`` lines, then one ``version`` or
``error``), so a pusher sees the environment build as it happens.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import shutil
import tempfile
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

from sqlalchemy.exc import IntegrityError
from starlette.datastructures import UploadFile
from starlette.requests import Request
from starlette.types import Message

from api.errors import ProblemError, problem_response
from replicant.archives import ArchiveError, ArchiveTooLarge, unpack_model
from replicant.cogmodel import CogConfigError, PredictorError
from replicant.envs import EnvBuildError

log = logging.getLogger("replicant.api")

NDJSON = "application/x-ndjson"
MULTIPART_OVERHEAD = 64 * 1024
# Longer than any build (pip alone may take an hour): older scratch dirs are leftovers.
STALE_AFTER = 24 * 3600.0
# Builds outlive a disconnected pusher (they clean up after themselves): keep them referenced.
_builds: set[asyncio.Task[Any]] = set()


def too_large(limit: int) -> ProblemError:
    return ProblemError(413, f"The model archive is larger than {limit} bytes")


def bad_archive(message: str) -> ProblemError:
    return ProblemError(
        422,
        f"archive: {message}",
        title="Invalid model archive",
        invalid_fields=[{"field": "archive", "message": message}],
    )


def build_problem(err: BaseException) -> ProblemError | None:
    """The problem+json for a model that cannot become a version; None for other errors."""
    if isinstance(err, CogConfigError):
        return ProblemError(
            422,
            f"cog.yaml: {err}",
            title="Invalid cog.yaml",
            invalid_fields=[{"field": "cog.yaml", "message": str(err)}],
        )
    if isinstance(err, PredictorError):
        detail = f"The predictor could not be loaded: {err.message}"
        if err.traceback:
            detail += "\n\n" + err.traceback.rstrip()
        return ProblemError(
            422,
            detail,
            title="Invalid predictor",
            invalid_fields=[{"field": "predictor", "message": err.message}],
        )
    if isinstance(err, EnvBuildError):
        first = str(err).splitlines()[0] if str(err) else "the environment could not be built"
        return ProblemError(
            422,
            f"The model's Python requirements could not be installed: {err}",
            title="Environment build failed",
            invalid_fields=[{"field": "build.python_packages", "message": first}],
        )
    if isinstance(err, IntegrityError):
        return ProblemError(
            409, "Another push created this model or version at the same time; push again"
        )
    return None


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


def work_dir(data_dir: Path) -> Path:
    """A private scratch directory for one push, on the same disk as the versions.

    Scratch and staging directories left by a process that died mid-push are swept here,
    once they are older than any build can take.
    """
    uploads = data_dir.resolve() / "uploads"
    uploads.mkdir(parents=True, exist_ok=True)
    stale = time.time() - STALE_AFTER
    leftovers = [*uploads.glob("push-*"), *(data_dir.resolve() / "versions").glob(".staging-*")]
    for path in leftovers:
        with contextlib.suppress(OSError):
            if path.stat().st_mtime < stale:
                shutil.rmtree(path, ignore_errors=True)
    return Path(tempfile.mkdtemp(dir=uploads, prefix="push-"))


def start_build(
    build: Callable[[Callable[[str], None]], Any], work: Path
) -> tuple[asyncio.Task[Any], asyncio.Queue[str]]:
    """Run ``build(progress)`` in a thread; its progress lines arrive on the queue.

    The scratch directory is removed when the build ends, even if the pusher has gone.
    """
    loop = asyncio.get_running_loop()
    lines: asyncio.Queue[str] = asyncio.Queue()

    def progress(line: str) -> None:
        loop.call_soon_threadsafe(lines.put_nowait, line)

    def run() -> Any:
        try:
            return build(progress)
        finally:
            shutil.rmtree(work, ignore_errors=True)

    task = asyncio.create_task(asyncio.to_thread(run))
    _builds.add(task)
    task.add_done_callback(_builds.discard)
    return task, lines


def _line(event: dict[str, Any]) -> bytes:
    return json.dumps(event).encode() + b"\n"


async def ndjson_events(
    task: asyncio.Task[Any],
    lines: asyncio.Queue[str],
    finish: Callable[[Any], dict[str, Any]],
) -> AsyncIterator[bytes]:
    """``{"event": "log", "message": ...}`` per progress line, then the outcome."""
    while not task.done():
        getter = asyncio.ensure_future(lines.get())
        done, _ = await asyncio.wait({getter, task}, return_when=asyncio.FIRST_COMPLETED)
        if getter in done:
            yield _line({"event": "log", "message": getter.result()})
        else:
            getter.cancel()
    while not lines.empty():
        yield _line({"event": "log", "message": lines.get_nowait()})
    error = task.exception()
    if error is None:
        yield _line({"event": "version", **finish(task.result())})
        return
    problem = error if isinstance(error, ProblemError) else build_problem(error)
    if problem is None:
        log.error("event=push_failed type=%s", type(error).__name__)
        problem = ProblemError(500, "An unexpected error occurred while building the version")
    body = json.loads(bytes(problem_response(problem).body))
    yield _line({"event": "error", **body})
