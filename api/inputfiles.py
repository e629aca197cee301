"""Data URI input files, stored at create time so that their bytes never cross Temporal.

A ``data:`` URI in a file input (schema ``format: uri``) can be as large as a file upload,
far beyond Temporal's ~2 MB payload limit. Before the workflow starts, each one is decoded
into the object store under the prediction's inputs prefix; the workflow input carries the
object key in its place, with a ``StagedFile`` saying where it goes, and the run activity
hands the model a local path as for any staged file. Long text inputs go the same way
(``text=True``: the model gets the text back, not a path), so a 3 MB prompt never meets
that limit either. The read model keeps the input as the user sent it (Replicate shows a
data URI back as it was given).
"""

from __future__ import annotations

import asyncio
import copy
import json
from typing import Any

from api.errors import ProblemError, invalid
from api.state import AppState
from replicant.contracts import StagedFile
from replicant.inputfiles import (
    InputFileError,
    data_uri_items,
    get_at,
    parse_data_uri,
    safe_filename,
    set_at,
)
from replicant.storage import ObjectStore

# The API's keys sit apart from those ``stage_inputs`` numbers ("inputs/0", "inputs/1", ...).
DATA_DIR = "data-"
TEXT_DIR = "text-"
# Text inputs longer than this (characters) are stored, not carried in the workflow input.
LONG_TEXT = 64 * 1024
# What may remain inline in a workflow input (JSON bytes); Temporal refuses ~2 MB payloads.
INLINE_LIMIT = 1024 * 1024


async def store_data_uris(
    state: AppState,
    schema: dict[str, Any],
    payload: dict[str, Any],
    inputs_prefix: str,
    component: str = "Input",
) -> tuple[dict[str, Any], list[StagedFile]]:
    """The workflow's input (data URIs replaced by object keys) and the files stored under
    ``inputs_prefix`` (a prediction's or a training's inputs folder).

    422 naming the field when a data URI is malformed or larger than ``max_file_size``.
    """
    paths = data_uri_items(schema, payload, component)
    texts = long_text_items(payload, skip=paths)
    if not paths and not texts:
        _check_inline(payload)
        return payload, []
    store = await state.store()
    workflow_input = copy.deepcopy(payload)
    staged: list[StagedFile] = []
    try:
        for number, path in enumerate(paths):
            label = ".".join(str(p) for p in path)
            value = get_at(payload, path)
            key_dir = f"{inputs_prefix}{DATA_DIR}{number}"
            try:
                filename = await asyncio.to_thread(
                    _store_one, store, value, key_dir, state.settings.max_file_size
                )
            except InputFileError as err:
                raise invalid([{"field": label, "message": str(err)}]) from None
            key = f"{key_dir}/{filename}"
            set_at(workflow_input, path, key)
            staged.append(StagedFile(path=path, key=key, filename=filename))
        for number, path in enumerate(texts):
            key = f"{inputs_prefix}{TEXT_DIR}{number}/text.txt"
            await asyncio.to_thread(_store_text, store, get_at(payload, path), key)
            set_at(workflow_input, path, key)
            staged.append(StagedFile(path=path, key=key, filename="text.txt", text=True))
        _check_inline(workflow_input)
    except BaseException:
        for folder in (DATA_DIR, TEXT_DIR):
            await asyncio.to_thread(store.delete_prefix, f"{inputs_prefix}{folder}")
        raise
    return workflow_input, staged


def long_text_items(payload: dict[str, Any], skip: list[list[str | int]]) -> list[list[str | int]]:
    """Where ``payload``'s long strings are (top-level values and their list items)."""
    found: list[list[str | int]] = []
    for name, value in payload.items():
        items = list(enumerate(value)) if isinstance(value, list) else [(None, value)]
        for index, item in items:
            path: list[str | int] = [name] if index is None else [name, index]
            if isinstance(item, str) and len(item) > LONG_TEXT and path not in skip:
                found.append(path)
    return found


def _check_inline(workflow_input: dict[str, Any]) -> None:
    """413 when what stays in the workflow input is too large for Temporal to carry."""
    size = len(json.dumps(workflow_input, default=str))
    if size > INLINE_LIMIT:
        raise ProblemError(
            413,
            f"The input is {size} bytes as JSON once files and long texts are set aside; "
            f"the rest may be at most {INLINE_LIMIT} bytes (send large data as files)",
        )


def _store_text(store: ObjectStore, text: str, key: str) -> None:
    upload = store.new_upload()
    try:
        upload.write(text.encode("utf-8"))
        store.commit(upload, key, "text/plain; charset=utf-8")
    finally:
        upload.discard()


def _store_one(store: ObjectStore, value: str, key_dir: str, limit: int) -> str:
    content_type, data = parse_data_uri(value)
    if len(data) > limit:
        raise InputFileError(f"is a data URI larger than {limit} bytes")
    filename = safe_filename("file", content_type)
    upload = store.new_upload()
    try:
        upload.write(data)
        store.commit(upload, f"{key_dir}/{filename}", content_type)
    finally:
        upload.discard()
    return filename


async def discard_data_uris(state: AppState, inputs_prefix: str) -> None:
    """Remove what ``store_data_uris`` stored for a prediction or training that was not
    created (its Idempotency-Key was taken meanwhile)."""
    store = await state.store()
    for folder in (DATA_DIR, TEXT_DIR):
        await asyncio.to_thread(store.delete_prefix, f"{inputs_prefix}{folder}")
