"""The wholes a prediction page cuts short (its input, its output, its code) as downloads, and
previews of its image inputs."""

from __future__ import annotations

import base64
import json
import re
from typing import Annotated, Any
from urllib.parse import unquote, urlparse

from fastapi import APIRouter, Path
from fastapi.responses import Response

from api.dashboard.client import ApiProblem
from api.dashboard.render import IMAGE, snippets
from api.dashboard.web import Page, PageDep
from api.deps import get_state
from api.errors import not_found

router = APIRouter(include_in_schema=False)

# Images a browser may be shown from this origin: raster formats only (never SVG, which is a
# document that can run script).
PREVIEWED = {"image/png", "image/jpeg", "image/gif", "image/webp", "image/avif", "image/bmp"}
CODE_FILES = {"curl": "sh", "python": "py", "javascript": "mjs"}
DATA_URI = re.compile(r"^data:([^;,]*)((?:;[^;,]*)*),", re.S)


def attachment(body: bytes | str, media_type: str, filename: str) -> Response:
    """User bytes as a download, never as a page of this origin."""
    return Response(
        body,
        media_type=media_type,
        headers={
            "Content-Disposition": f'attachment; filename="{filename}"',
            "X-Content-Type-Options": "nosniff",
            "Content-Security-Policy": "sandbox; default-src 'none'",
            "Cache-Control": "no-store",
        },
    )


def whole_output(output: Any, streaming: bool) -> tuple[str, str, str]:
    """The output as one file: (text, media type, extension)."""
    if isinstance(output, str):
        return output, "text/plain; charset=utf-8", "txt"
    if streaming and isinstance(output, list) and all(isinstance(v, str) for v in output):
        return "".join(output), "text/plain; charset=utf-8", "txt"
    return json.dumps(output, indent=2, ensure_ascii=False), "application/json", "json"


@router.get("/predictions/{object_id}/input.json")
@router.get("/trainings/{object_id}/input.json")
async def input_download(object_id: str, page: PageDep) -> Response:
    """The whole input of one of the account's predictions or trainings (the API's read)."""
    kind = page.request.scope["route"].path.split("/")[1]  # predictions or trainings
    found = await page.api.get(f"/v1/{kind}/{object_id}")
    body = json.dumps(found["input"], indent=2, ensure_ascii=False)
    return attachment(body, "application/json", f"{object_id}-input.json")


@router.get("/predictions/{prediction_id}/output")
async def output_download(prediction_id: str, page: PageDep) -> Response:
    prediction = await page.api.get(f"/v1/predictions/{prediction_id}")
    if prediction.get("output") is None:
        raise not_found("Output")
    body, media_type, extension = whole_output(prediction["output"], "stream" in prediction["urls"])
    return attachment(body, media_type, f"{prediction_id}-output.{extension}")


@router.get("/predictions/{prediction_id}/code/{language}")
async def code_download(
    prediction_id: str,
    language: Annotated[str, Path(pattern="^(curl|python|javascript)$")],
    page: PageDep,
) -> Response:
    """The code that makes the same prediction, with the whole input (the page cuts it)."""
    prediction = await page.api.get(f"/v1/predictions/{prediction_id}")
    base = str(page.request.base_url).rstrip("/")
    ref = f"{prediction['model']}:{prediction['version']}"
    code = snippets(base, ref, prediction["input"])[language]
    filename = f"prediction-{prediction_id}.{CODE_FILES[language]}"
    return attachment(code, "text/plain; charset=utf-8", filename)


def decode_data_uri(uri: str) -> tuple[str, bytes] | None:
    """(media type, bytes) of a data URI; None when it is not one."""
    match = DATA_URI.match(uri)
    if match is None:
        return None
    payload = uri[match.end() :]
    params = match.group(2).lower().split(";")
    try:
        data = base64.b64decode(payload) if "base64" in params else unquote(payload).encode()
    except ValueError:
        return None
    return (match.group(1).lower() or "text/plain"), data


def _input_value(prediction: dict[str, Any], name: str, item: int | None) -> Any:
    value = prediction["input"].get(name)
    if item is not None:
        value = value[item] if isinstance(value, list) and 0 <= item < len(value) else None
    return value


@router.get("/predictions/{prediction_id}/inputs/{name}")
async def input_image(
    prediction_id: str, name: str, page: PageDep, item: int | None = None
) -> Response:
    """An image input sent as a data URI, decoded, for its preview on the page."""
    prediction = await page.api.get(f"/v1/predictions/{prediction_id}")
    value = _input_value(prediction, name, item)
    decoded = decode_data_uri(value) if isinstance(value, str) else None
    if decoded is None or decoded[0] not in PREVIEWED:
        raise not_found("Image input")
    media_type, data = decoded
    return Response(
        data,
        media_type=media_type,
        headers={
            "X-Content-Type-Options": "nosniff",
            "Content-Security-Policy": "sandbox; default-src 'none'",
            "Cache-Control": "private, max-age=300",
        },
    )


async def input_previews(page: Page, prediction: dict[str, Any]) -> list[dict[str, str]]:
    """The image inputs of a prediction, each with the name, and a URL the page may show."""
    previews = []
    for name, value in prediction["input"].items():
        items = list(enumerate(value)) if isinstance(value, list) else [(None, value)]
        for index, item in items:
            if not isinstance(item, str):
                continue
            src = await _image_src(page, prediction["id"], name, index, item)
            if src:
                label = name if index is None else f"{name}[{index}]"
                previews.append({"name": label, "src": src})
    return previews


async def _image_src(
    page: Page, prediction_id: str, name: str, index: int | None, value: str
) -> str:
    if value.startswith("data:"):
        decoded = DATA_URI.match(value)
        if decoded is None or decoded.group(1).lower() not in PREVIEWED:
            return ""
        query = "" if index is None else f"?item={index}"
        return f"/predictions/{prediction_id}/inputs/{name}{query}"
    if not value.startswith(("http://", "https://")):
        return ""
    public = get_state(page.request).settings.resolved_public_url
    path = urlparse(value).path
    own_file = re.fullmatch(r"/v1/files/([A-Za-z0-9_-]+)", path)
    if value.startswith(public + "/") and own_file:
        # A file of the Files API (the Run form's upload): its signed URL, if it is an image.
        try:
            stored = await page.api.get(f"/v1/files/{own_file.group(1)}")
        except ApiProblem:
            return ""
        if stored.get("content_type") not in PREVIEWED:
            return ""
        return str(stored["urls"]["download"])
    extension = path[path.rfind(".") :].lower() if "." in path.rsplit("/", 1)[-1] else ""
    return value if extension in IMAGE - {".svg"} else ""
