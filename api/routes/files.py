"""Files: upload (streaming multipart), list, get, delete, signed downloads.

An upload never sits in memory whole: the multipart body is parsed as it arrives and the
``content`` part goes straight into an object-store upload (a temporary file that hashes as
it is written). Files are private to the account that uploaded them: another account gets 404.

Two token-free routes serve bytes: ``/v1/files/{id}/download`` (Replicate's signed download
URL of an uploaded file) and ``/files-signed/{key}`` (the local store's signed URLs of
prediction outputs).
"""

from __future__ import annotations

import asyncio
import json
import mimetypes
import time
from collections.abc import Iterator, Sequence
from datetime import timedelta
from typing import Annotated, Any
from urllib.parse import quote, urlsplit

from fastapi import APIRouter, Depends, Query, Request
from fastapi.responses import FileResponse, RedirectResponse, Response, StreamingResponse
from python_multipart.exceptions import MultipartParseError
from python_multipart.multipart import MultipartParser, parse_options_header
from sqlmodel import Session, col, select

from api.deps import CurrentAccount, DatabaseDep, SessionDep, StateDep
from api.errors import ProblemError, invalid, not_found
from api.launch import base_url
from api.pagination import paginate
from api.serialize import json_response
from api.state import AppState
from replicant import responses, serialize, userbytes
from replicant.ids import new_id
from replicant.lookups import unexpired_file
from replicant.storage import (
    LocalStore,
    ObjectNotFound,
    ObjectStore,
    TooLarge,
    Upload,
    check_signed,
    sign,
    verify,
)
from replicant.tables import StoredFile
from replicant.timeutil import utcnow

router = APIRouter(tags=["files"])

MAX_FIELD = 64 * 1024  # metadata and the other small form fields
# Parts a form may have (content, filename, type, metadata and a few more): the small fields
# are held in memory, so their number is capped as well as their size.
MAX_PARTS = 16
DOWNLOAD_URL_EXPIRY = 3600
# Bytes read past the limit before answering 413, so the client sees the answer instead of a
# reset connection; beyond that the connection is dropped.
DRAIN_ALLOWANCE = 16 * 1024 * 1024


async def get_store(state: StateDep) -> ObjectStore:
    """The app's object store (``AppState.store``)."""
    return await state.store()


StoreDep = Annotated[ObjectStore, Depends(get_store)]


def file_object(
    row: StoredFile, base: str, secret: str, files_base: str | None = None
) -> responses.File:
    """The file object of Replicate's spec, with a download URL signed for an hour, at
    ``files_base`` (the files origin, when the installation has one) or ``base``."""
    expiry = int(time.time()) + DOWNLOAD_URL_EXPIRY
    signature = sign(secret, f"{row.owner} {row.id} {expiry}")
    download = (
        f"{files_base or base}/v1/files/{row.id}/download?owner={quote(row.owner)}"
        f"&expiry={expiry}&signature={signature}"
    )
    return serialize.file(row, base, download)


def _files_base(state: AppState) -> str | None:
    files_url = state.settings.files_url
    return files_url.rstrip("/") if files_url else None


def _elsewhere(request: Request, state: AppState) -> Response | None:
    """A redirect to the files origin for a request of user bytes that came to another one
    (so no user bytes are served from the dashboard's origin); None on the files origin."""
    files_base = _files_base(state)
    if files_base is None:
        return None
    files_origin = urlsplit(files_base)
    if request.headers.get("host", "").lower() == files_origin.netloc.lower():
        return None
    target = files_base + request.url.path + (f"?{request.url.query}" if request.url.query else "")
    return RedirectResponse(target, status_code=307)


class _Form:
    """State of one streamed multipart body: the content part and the small fields."""

    def __init__(self, upload: Upload) -> None:
        self.upload = upload
        self.fields: dict[str, bytearray] = {}
        self.filename: str | None = None
        self.part_type: str | None = None
        self.has_content = False
        self.too_large = False
        self.field_too_large: str | None = None
        self.parts = 0
        self._header_field = bytearray()
        self._header_value = bytearray()
        self._headers: dict[str, bytes] = {}
        self._name: str | None = None

    def parser(self, boundary: bytes) -> MultipartParser:
        def on_part_begin() -> None:
            self._headers, self._name = {}, None

        def on_header_field(data: bytes, start: int, end: int) -> None:
            self._header_field += data[start:end]

        def on_header_value(data: bytes, start: int, end: int) -> None:
            self._header_value += data[start:end]

        def on_header_end() -> None:
            self._headers[self._header_field.decode("latin-1").lower()] = bytes(self._header_value)
            self._header_field.clear()
            self._header_value.clear()

        def on_headers_finished() -> None:
            self.parts += 1
            if self.parts > MAX_PARTS:
                self._name = None  # dropped: the form is refused once read
                return
            _, params = parse_options_header(self._headers.get("content-disposition", b""))
            name = params.get(b"name", b"").decode("utf-8", "replace")
            self._name = name
            if name == "content":
                self.has_content = True
                raw = params.get(b"filename")
                self.filename = raw.decode("utf-8", "replace") if raw is not None else None
                ctype = self._headers.get("content-type")
                self.part_type = ctype.decode("latin-1").strip() if ctype else None
            else:
                self.fields.setdefault(name, bytearray())

        def on_part_data(data: bytes, start: int, end: int) -> None:
            if self._name == "content":
                if not self.too_large:
                    try:
                        self.upload.write(memoryview(data)[start:end])
                    except TooLarge:
                        self.too_large = True
            elif self._name is not None:
                value = self.fields[self._name]
                if len(value) + end - start > MAX_FIELD:
                    self.field_too_large = self._name
                else:
                    value += data[start:end]

        return MultipartParser(
            boundary,
            {
                "on_part_begin": on_part_begin,
                "on_header_field": on_header_field,
                "on_header_value": on_header_value,
                "on_header_end": on_header_end,
                "on_headers_finished": on_headers_finished,
                "on_part_data": on_part_data,
            },
        )


def _boundary(request: Request) -> bytes:
    ctype, params = parse_options_header(request.headers.get("content-type", ""))
    boundary = params.get(b"boundary")
    if ctype != b"multipart/form-data" or not boundary:
        raise ProblemError(
            415, "Upload the file as multipart/form-data with the file in the 'content' field"
        )
    return boundary


def _too_large(limit: int) -> ProblemError:
    return ProblemError(413, f"Files must be less than {limit // (1024 * 1024)}MB in size")


async def _receive(request: Request, form: _Form, limit: int) -> None:
    """Feed the body to the parser off the event loop (hashing and writing are CPU and I/O)."""
    parser = form.parser(_boundary(request))
    received = 0
    async for chunk in request.stream():
        received += len(chunk)
        if form.too_large:
            if received > limit + DRAIN_ALLOWANCE:
                break
            continue  # drain, so the client reads the 413 rather than a reset
        try:
            await asyncio.to_thread(parser.write, chunk)
        except MultipartParseError as err:
            raise ProblemError(400, f"The multipart body is malformed: {err}") from err
    if form.too_large:
        raise _too_large(limit)
    if form.parts > MAX_PARTS:
        raise ProblemError(413, f"The form has more than {MAX_PARTS} fields")
    try:
        parser.finalize()
    except Exception as err:
        raise ProblemError(400, "The multipart body is malformed") from err


def _metadata(form: _Form) -> dict[str, Any]:
    raw = form.fields.get("metadata")
    if raw is None or not raw.strip():
        return {}
    try:
        value = json.loads(bytes(raw))
    except ValueError as err:
        raise invalid([{"field": "metadata", "message": "must be valid JSON"}]) from err
    if not isinstance(value, dict):
        raise invalid([{"field": "metadata", "message": "must be a JSON object"}])
    return value


def _text_field(form: _Form, name: str) -> str | None:
    raw = form.fields.get(name)
    if raw is None:
        return None
    try:
        return bytes(raw).decode("utf-8").strip() or None
    except UnicodeDecodeError as err:
        raise invalid([{"field": name, "message": "must be valid UTF-8"}]) from err


@router.post("/v1/files", status_code=201, response_model=responses.File)
async def create_file(
    request: Request, state: StateDep, db: DatabaseDep, account: CurrentAccount, store: StoreDep
) -> Response:
    settings = state.settings
    limit = settings.max_file_size
    declared = request.headers.get("content-length")
    if declared and declared.isdigit() and int(declared) > limit + DRAIN_ALLOWANCE:
        raise _too_large(limit)
    upload = store.new_upload(max_size=limit)
    try:
        form = _Form(upload)
        await _receive(request, form, limit)
        if form.field_too_large:
            raise invalid(
                [{"field": form.field_too_large, "message": f"must be at most {MAX_FIELD} bytes"}]
            )
        if not form.has_content:
            raise invalid([{"field": "content", "message": "required field is missing"}])
        metadata = _metadata(form)
        name = _text_field(form, "filename") or form.filename or "file"
        if len(name.encode()) > 255:
            raise invalid([{"field": "filename", "message": "must be at most 255 bytes"}])
        content_type = (
            _text_field(form, "type")
            or form.part_type
            or mimetypes.guess_type(name)[0]
            or "application/octet-stream"
        )
        file_id = new_id()
        now = utcnow()
        row = StoredFile(
            id=file_id,
            owner=account.username,
            name=name,
            content_type=content_type,
            size=upload.size,
            sha256=upload.sha256,
            etag=upload.md5,
            user_metadata=metadata,
            object_key=f"files/{account.username}/{file_id}",
            created_at=now,
            expires_at=now + timedelta(seconds=settings.file_expiry),
        )
        await asyncio.to_thread(store.commit, upload, row.object_key, content_type)
    finally:
        upload.discard()
    await db.run(_insert, row)
    body = file_object(
        row, base_url(request, state), settings.ensure_secret_key(), _files_base(state)
    )
    return json_response(body, 201, {"Location": body.urls.get})


def _insert(session: Session, row: StoredFile) -> None:
    session.add(row)
    session.commit()


@router.get("/v1/files", response_model_exclude_unset=True)
def list_files(
    request: Request,
    state: StateDep,
    session: SessionDep,
    account: CurrentAccount,
    cursor: str | None = Query(default=None),
) -> responses.FilePage:
    base = base_url(request, state)
    secret = state.settings.ensure_secret_key()
    files_base = _files_base(state)
    stmt = (
        select(StoredFile)
        .where(StoredFile.owner == account.username)
        .where(col(StoredFile.expires_at) > utcnow())
    )

    def render(_: Session, rows: Sequence[StoredFile]) -> list[responses.File]:
        return [file_object(row, base, secret, files_base) for row in rows]

    page = paginate(
        session,
        stmt,
        col(StoredFile.created_at),
        col(StoredFile.id),
        cursor=cursor,
        page_url=f"{base}/v1/files",
        render=render,
    )
    return responses.FilePage.model_validate(page)


@router.get("/v1/files/{file_id}", response_model_exclude_unset=True)
def get_file(
    file_id: str, request: Request, state: StateDep, session: SessionDep, account: CurrentAccount
) -> responses.File:
    row = unexpired_file(session, account.username, file_id)
    if row is None:
        raise not_found("File")
    secret = state.settings.ensure_secret_key()
    return file_object(row, base_url(request, state), secret, _files_base(state))


@router.delete("/v1/files/{file_id}", status_code=204)
async def delete_file(
    file_id: str, db: DatabaseDep, account: CurrentAccount, store: StoreDep
) -> Response:
    row = await db.read(unexpired_file, account.username, file_id)
    if row is None:
        raise not_found("File")
    await db.run(_delete, row.id)
    await asyncio.to_thread(store.delete, row.object_key)
    return Response(status_code=204)


def _delete(session: Session, file_id: str) -> None:
    stored = session.get(StoredFile, file_id)
    if stored is not None:
        session.delete(stored)
        session.commit()


@router.get(
    "/v1/files/{file_id}/download",
    response_class=Response,
    responses={200: {"content": {"application/octet-stream": {}}}},
)
async def download_file(
    file_id: str,
    request: Request,
    state: StateDep,
    db: DatabaseDep,
    store: StoreDep,
    owner: str = Query(default=""),
    expiry: str = Query(default=""),
    signature: str = Query(default=""),
) -> Response:
    """A file's bytes for whoever holds an unexpired signed URL (no token)."""
    if (redirect := _elsewhere(request, state)) is not None:
        return redirect
    secret = state.settings.ensure_secret_key()
    valid = expiry.isdigit() and int(expiry) >= time.time()
    if not valid or not verify(secret, f"{owner} {file_id} {expiry}", signature):
        raise not_found("File")
    row = await db.read(unexpired_file, owner, file_id)
    if row is None:
        raise not_found("File")
    return await _serve(store, row.object_key, row.content_type, row.name)


@router.get("/files-signed/{expires}/{sig}/{key:path}", include_in_schema=False)
async def signed_object(
    expires: str, sig: str, key: str, request: Request, state: StateDep, store: StoreDep
) -> Response:
    """An object of the store behind a signed, expiring URL (no token, not guessable)."""
    if (redirect := _elsewhere(request, state)) is not None:
        return redirect
    if not check_signed(state.settings.ensure_secret_key(), key, expires, sig):
        raise not_found("File")
    return await _serve(store, key, None, key.rsplit("/", 1)[-1])


async def _serve(store: ObjectStore, key: str, content_type: str | None, name: str) -> Response:
    """The object's bytes as user bytes: media inline, everything else an attachment, always
    with ``nosniff`` and a sandboxing CSP (``replicant/userbytes.py``)."""
    try:
        info = await asyncio.to_thread(store.stat, key)
    except ValueError:
        info = None
    if info is None:
        raise not_found("File")
    stored_type = content_type or info.content_type
    media_type = userbytes.served_type(stored_type)
    headers = userbytes.headers(stored_type, name)
    if isinstance(store, LocalStore):
        return FileResponse(store.path(key), media_type=media_type, headers=headers)
    try:
        chunks = await asyncio.to_thread(store.iter_bytes, key)
    except ObjectNotFound as err:
        raise not_found("File") from err
    return StreamingResponse(
        _sync_iter(chunks),
        media_type=media_type,
        headers={"Content-Length": str(info.size), **headers},
    )


def _sync_iter(chunks: Iterator[bytes]) -> Iterator[bytes]:
    # Starlette iterates a sync iterator in its thread pool: the event loop never blocks on S3.
    yield from chunks
