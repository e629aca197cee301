"""Files of a prediction: staging its input files, handing them to the model, storing outputs.

- ``stage_inputs`` (orchestration queue) stores every file input in the object store under
  ``predictions/{id}/inputs/``: an http(s) URL (fetched SSRF-safe, size and time capped), a
  data URI, or the URL of one of the owner's uploaded files. It returns object keys only.
- ``materialized_input`` (inside the run activity, on the hardware worker) copies those
  objects into a private directory and gives the model local paths.
- ``OutputSink`` receives the files coglet uploads (its ``--upload-url``), stores them under
  ``predictions/{id}/outputs/`` and answers with a signed URL that expires.
Retention deletes ``predictions/{id}/`` as a whole.
"""

from __future__ import annotations

import asyncio
import base64
import copy
import logging
import mimetypes
import re
import secrets
import shutil
import tempfile
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any, Protocol
from urllib.parse import unquote, urlsplit

from sqlalchemy.engine import Engine
from sqlmodel import Session
from temporalio import activity
from temporalio.exceptions import ApplicationError

from replicant.contracts import ActivityName, ErrorType, PredictionRequest, StagedFile, StagedInputs
from replicant.inputfiles import (
    InputFileError,
    file_fields,
    parse_data_uri,
    safe_filename,
    set_at,
)
from replicant.objectkeys import prediction_inputs, prediction_prefix
from replicant.runner import UploadSink
from replicant.safefetch import FetchError, fetch
from replicant.settings import Settings
from replicant.storage import ObjectStore, TooLarge, Upload, put_data_uri, signed_url
from replicant.tables import StoredFile, Version
from replicant.timeutil import utcnow

log = logging.getLogger("replicant.files")

FILE_URL = re.compile(r"^/v1/files/([a-z0-9]+)(?:/download)?/?$")


class Stager:
    """Stages the file inputs of one prediction into the object store."""

    def __init__(self, settings: Settings, engine: Engine, store: ObjectStore) -> None:
        self.settings = settings
        self.engine = engine
        self.store = store
        public = urlsplit(settings.resolved_public_url)
        self.origin = (public.scheme.lower(), public.netloc.lower())

    async def stage(self, req: PredictionRequest) -> StagedInputs:
        # Data URIs were stored at create time (``req.staged_files``): kept, not staged again.
        staged = await self.stage_files(
            owner=req.owner,
            version=req.version,
            input=req.input,
            prefix=prediction_inputs(req.id),
            skip=[f.path for f in req.staged_files],
        )
        return StagedInputs(files=[*req.staged_files, *staged.files])

    async def stage_files(
        self,
        *,
        owner: str,
        version: str,
        input: dict[str, Any],
        prefix: str,
        component: str = "Input",
        skip: Sequence[list[str | int]] = (),
    ) -> StagedInputs:
        """Store the file inputs of ``input`` (per the version's ``component`` schema) under
        ``prefix``, as ``owner`` may read them (their own uploaded files only); the inputs at
        the paths in ``skip`` are in the store already."""
        schema = await asyncio.to_thread(self._schema, version)
        fields = file_fields(schema, component)
        staged: list[StagedFile] = []
        for name, is_list in fields.items():
            value = input.get(name)
            if value is None:
                continue
            items = (
                list(enumerate(value)) if is_list and isinstance(value, list) else [(None, value)]
            )
            for index, item in items:
                path: list[str | int] = [name] if index is None else [name, index]
                if path in skip:
                    continue
                label = ".".join(str(p) for p in path)
                if not isinstance(item, str):
                    raise InputFileError(f"{label}: must be a URL")
                key_dir = f"{prefix}{len(staged)}"
                try:
                    filename = await self._stage_one(owner, item, key_dir)
                except InputFileError as err:
                    raise InputFileError(f"{label}: {err}") from err
                staged.append(StagedFile(path=path, key=f"{key_dir}/{filename}", filename=filename))
        return StagedInputs(files=staged)

    def _schema(self, version_id: str) -> dict[str, Any]:
        with Session(self.engine) as session:
            version = session.get(Version, version_id)
        return version.openapi_schema if version is not None else {}

    async def _stage_one(self, owner: str, value: str, key_dir: str) -> str:
        scheme = value.split(":", 1)[0].lower() if ":" in value else ""
        if scheme == "data":
            return await self._stage_data_uri(value, key_dir)
        if scheme not in ("http", "https"):
            raise InputFileError("must be an http(s) URL, a data URI or an uploaded file's URL")
        parts = urlsplit(value)
        match = FILE_URL.match(parts.path)
        if match and (parts.scheme.lower(), parts.netloc.lower()) == self.origin:
            return await self._stage_uploaded(owner, match.group(1), key_dir)
        return await self._stage_url(value, key_dir)

    async def _stage_data_uri(self, value: str, key_dir: str) -> str:
        limit = self.settings.max_file_size
        return await asyncio.to_thread(put_data_uri, self.store, value, key_dir, limit)

    async def _stage_uploaded(self, owner: str, file_id: str, key_dir: str) -> str:
        def find() -> StoredFile | None:
            with Session(self.engine) as session:
                return session.get(StoredFile, file_id)

        row = await asyncio.to_thread(find)
        # Another account's file is indistinguishable from a missing one.
        if row is None or row.owner != owner or row.expires_at <= utcnow():
            raise InputFileError("names an uploaded file that does not exist")
        filename = safe_filename(row.name, row.content_type)
        await asyncio.to_thread(self.store.copy, row.object_key, f"{key_dir}/{filename}")
        return filename

    async def _stage_url(self, url: str, key_dir: str) -> str:
        settings = self.settings
        upload = self.store.new_upload(max_size=settings.max_file_size)
        try:
            async with asyncio.timeout(settings.input_fetch_timeout):
                async with fetch(
                    url,
                    allow_private=settings.allow_private_urls,
                    max_bytes=settings.max_file_size,
                    header_timeout=settings.input_fetch_timeout,
                ) as fetched:
                    async for chunk in fetched.iter_bytes():
                        upload.write(chunk)
                    content_type = (fetched.content_type or "").split(";")[0].strip()
                    name = unquote(urlsplit(fetched.url).path.rsplit("/", 1)[-1])
            content_type = content_type or mimetypes.guess_type(name)[0] or ""
            filename = safe_filename(name, content_type)
            await asyncio.to_thread(
                self.store.commit,
                upload,
                f"{key_dir}/{filename}",
                content_type or "application/octet-stream",
            )
        except FetchError as err:
            raise InputFileError(f"the URL {err}") from err
        except TooLarge as err:
            raise InputFileError(f"the URL is larger than {settings.max_file_size} bytes") from err
        except TimeoutError as err:
            raise InputFileError(
                f"the URL did not download within {settings.input_fetch_timeout:g} seconds"
            ) from err
        finally:
            upload.discard()
        return filename


class FileActivities:
    """The file activities, bound to settings, a database and an object store."""

    def __init__(self, settings: Settings, engine: Engine, store: ObjectStore) -> None:
        self.stager = Stager(settings, engine, store)

    @activity.defn(name=ActivityName.STAGE_INPUTS)
    async def stage_inputs(self, req: PredictionRequest) -> StagedInputs:
        """Store the prediction's input files in the object store; fail clearly if one cannot."""
        try:
            staged = await self.stager.stage(req)
        except InputFileError as err:
            log.info("event=input_file_refused prediction=%s reason=%r", req.id, str(err))
            raise ApplicationError(
                str(err), type=ErrorType.INPUT_FILE_ERROR, non_retryable=True
            ) from err
        log.info("event=inputs_staged prediction=%s files=%d", req.id, len(staged.files))
        return staged


class WithStagedFiles(Protocol):
    """A request whose input files were staged (a prediction's or a training's)."""

    @property
    def id(self) -> str: ...
    @property
    def input(self) -> dict[str, Any]: ...
    @property
    def staged_files(self) -> list[StagedFile]: ...


@asynccontextmanager
async def materialized_input(
    store: ObjectStore | None, req: WithStagedFiles, as_data: frozenset[str] = frozenset()
) -> AsyncIterator[dict[str, Any]]:
    """The input with each staged file replaced by a local path (a large text input by its
    text; a file of an input named in ``as_data``, a ``cog.File`` one, by its data URI);
    the files go afterwards."""
    if not req.staged_files:
        yield req.input
        return
    if store is None:
        raise RuntimeError("this worker has no object store for input files")
    workdir = Path(tempfile.mkdtemp(prefix=f"replicant-{req.id}-"))
    try:
        value = copy.deepcopy(req.input)
        for index, staged in enumerate(req.staged_files):
            dest = workdir / str(index) / staged.filename
            dest.parent.mkdir()
            await asyncio.to_thread(store.download, staged.key, dest)
            if staged.text:
                text = await asyncio.to_thread(dest.read_text, encoding="utf-8")
                set_at(value, staged.path, text)
            elif staged.path[0] in as_data:
                set_at(value, staged.path, await asyncio.to_thread(data_uri_of, dest))
            else:
                set_at(value, staged.path, str(dest))
        yield value
    finally:
        await asyncio.to_thread(shutil.rmtree, workdir, True)


def data_uri_of(path: Path) -> str:
    """A file as a data URI (base64, its type guessed from its name)."""
    content_type = mimetypes.guess_type(path.name)[0] or "application/octet-stream"
    return f"data:{content_type};base64,{base64.b64encode(path.read_bytes()).decode()}"


class OutputSink:
    """Stores a file a model outputs and answers its signed URL (coglet's upload target)."""

    def __init__(self, settings: Settings, store: ObjectStore) -> None:
        self.settings = settings
        self.store = store

    async def __call__(
        self,
        prediction_id: str,
        filename: str,
        content_type: str | None,
        body: AsyncIterator[bytes],
    ) -> str:
        name = safe_filename(filename, content_type)
        content_type = content_type or mimetypes.guess_type(name)[0] or "application/octet-stream"
        # A random part per file: an iterator may output several files of the same name.
        key = f"{prediction_prefix(prediction_id)}outputs/{secrets.token_urlsafe(12)}/{name}"
        upload: Upload = self.store.new_upload()
        try:
            async for chunk in body:
                upload.write(chunk)
            await asyncio.to_thread(self.store.commit, upload, key, content_type)
        finally:
            upload.discard()
        # coglet keeps only the path of this URL: the API's route, signed in the path, on the
        # files origin when there is one (served there, no redirect on the way).
        return signed_url(
            self.settings.resolved_files_url,
            self.settings.ensure_secret_key(),
            key,
            self.settings.output_url_expiry,
        )


def uploads_outputs(openapi_schema: dict[str, Any]) -> bool:
    """Whether coglet should upload the version's output files itself (``--upload-url``).

    Only for a single output: coglet uploads the files of a list or an iterator concurrently
    and lists them in the order the uploads finish, not the model's. Those come back as data
    URIs instead, in order, and ``stored_output`` stores them.
    """
    output = openapi_schema.get("components", {}).get("schemas", {}).get("Output", {})
    return bool(output) and output.get("type") != "array"


def holds_data_uri(output: Any) -> bool:
    """Whether an output holds a data URI anywhere (a plain walk: an embedding's hundreds of
    floats cost no coroutine each)."""
    if isinstance(output, str):
        return output[:5].lower() == "data:"
    if isinstance(output, list):
        return any(holds_data_uri(item) for item in output)
    if isinstance(output, dict):
        return any(holds_data_uri(item) for item in output.values())
    return False


async def stored_output(sink: UploadSink | None, prediction_id: str, output: Any) -> Any:
    """The output with every data URI file stored and replaced by its signed URL."""
    if sink is None or not holds_data_uri(output):
        return output
    if isinstance(output, list):
        return [await stored_output(sink, prediction_id, item) for item in output]
    if isinstance(output, dict):
        return {k: await stored_output(sink, prediction_id, v) for k, v in output.items()}
    if isinstance(output, str) and output[:5].lower() == "data:":
        try:
            content_type, data = parse_data_uri(output)
        except InputFileError:
            return output

        async def body() -> AsyncIterator[bytes]:
            yield data

        return await sink(prediction_id, "output", content_type, body())
    return output
