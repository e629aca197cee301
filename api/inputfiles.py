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
from replicant.inputfacts import PreparedInput
from replicant.inputfiles import InputFileError, get_at, set_at
from replicant.storage import ObjectStore, put_data_uri

# The API's keys sit apart from those ``stage_inputs`` numbers ("inputs/0", "inputs/1", ...).
DATA_DIR = "data-"
TEXT_DIR = "text-"
# What may remain inline in a workflow input (JSON bytes); Temporal refuses ~2 MB payloads.
INLINE_LIMIT = 1024 * 1024


async def store_input_files(
    state: AppState, prepared: PreparedInput, inputs_prefix: str
) -> tuple[dict[str, Any], list[StagedFile]]:
    """The workflow's input (``prepared.sealed``, its data URIs and long texts replaced by
    object keys) and the files stored under ``inputs_prefix`` (a prediction's or a
    training's inputs folder).

    422 naming the field when a data URI is malformed or larger than ``max_file_size``.
    """
    payload, paths, texts = prepared.sealed, prepared.data_uris, prepared.long_texts
    if not paths and not texts:
        _check_inline(payload)
        return payload, []
    store = await state.store()
    workflow_input = copy.deepcopy(payload)
    staged: list[StagedFile] = []
    limit = state.settings.max_file_size
    try:
        for number, path in enumerate(paths):
            key_dir = f"{inputs_prefix}{DATA_DIR}{number}"
            try:
                filename = await asyncio.to_thread(
                    put_data_uri, store, get_at(payload, path), key_dir, limit
                )
            except InputFileError as err:
                label = ".".join(str(p) for p in path)
                raise invalid([{"field": label, "message": str(err)}]) from None
            key = f"{key_dir}/{filename}"
            set_at(workflow_input, path, key)
            staged.append(StagedFile(path=path, key=key, filename=filename))
        for number, path in enumerate(texts):
            key = f"{inputs_prefix}{TEXT_DIR}{number}/text.txt"
            text = get_at(payload, path).encode("utf-8")
            await asyncio.to_thread(store.put_bytes, text, key, "text/plain; charset=utf-8")
            set_at(workflow_input, path, key)
            staged.append(StagedFile(path=path, key=key, filename="text.txt", text=True))
        _check_inline(workflow_input)
    except BaseException:
        await asyncio.to_thread(_discard, store, inputs_prefix)
        raise
    return workflow_input, staged


def _check_inline(workflow_input: dict[str, Any]) -> None:
    """413 when what stays in the workflow input is too large for Temporal to carry."""
    size = len(json.dumps(workflow_input, default=str))
    if size > INLINE_LIMIT:
        raise ProblemError(
            413,
            f"The input is {size} bytes as JSON once files and long texts are set aside; "
            f"the rest may be at most {INLINE_LIMIT} bytes (send large data as files)",
        )


async def discard_input_files(state: AppState, inputs_prefix: str) -> None:
    """Remove what ``store_input_files`` stored for a prediction or training that was not
    created (its Idempotency-Key was taken meanwhile)."""
    await asyncio.to_thread(_discard, await state.store(), inputs_prefix)


def _discard(store: ObjectStore, inputs_prefix: str) -> None:
    for folder in (DATA_DIR, TEXT_DIR):
        store.delete_prefix(f"{inputs_prefix}{folder}")
