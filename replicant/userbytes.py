"""How user bytes (uploaded files, model outputs) are served: never as a page of this site.

Anyone can upload a file or push a model that outputs one, and its URL opens in the browser
of whoever follows it. So only raster images, audio and video are served ``inline``, with
their type normalized (a browser draws or plays them and runs nothing); everything else,
HTML, SVG and XML whatever type the uploader named, is an ``attachment``. Every answer also
carries ``nosniff`` (the browser keeps the type it is given) and a CSP that sandboxes the
document and allows it nothing, in case a browser renders it all the same.
"""

from __future__ import annotations

import mimetypes
from urllib.parse import quote

# Raster images a browser draws without running anything (SVG is a document: it is not here).
RASTER_IMAGES = frozenset(
    {
        "image/png",
        "image/jpeg",
        "image/gif",
        "image/webp",
        "image/avif",
        "image/bmp",
        "image/x-icon",
        "image/vnd.microsoft.icon",
    }
)
SANDBOX_CSP = "default-src 'none'; sandbox"
# What every answer carrying user bytes has, inline or not.
HEADERS = {
    "X-Content-Type-Options": "nosniff",
    "Content-Security-Policy": SANDBOX_CSP,
}


def essence(content_type: str | None) -> str:
    """``type/subtype`` of a content type, lower case, parameters dropped ("" when none)."""
    return (content_type or "").split(";", 1)[0].split(",", 1)[0].strip().lower()


def is_inline(content_type: str | None) -> bool:
    """Whether bytes of this type may be shown in the browser: raster images, audio, video."""
    kind = essence(content_type)
    if kind in RASTER_IMAGES:
        return True
    top, _, sub = kind.partition("/")
    # "+xml" types (SVG, XHTML, SMIL) are documents whatever their top-level type.
    return top in ("audio", "video") and bool(sub) and not sub.endswith("xml")


def served_type(content_type: str | None) -> str:
    """The Content-Type to send: the normalized type of inline media, the stored one (or
    ``application/octet-stream``) for an attachment."""
    if is_inline(content_type):
        return essence(content_type)
    return essence(content_type) or "application/octet-stream"


def disposition(content_type: str | None, filename: str) -> str:
    """``inline`` for media, ``attachment`` for everything else, with the file's name."""
    how = "inline" if is_inline(content_type) else "attachment"
    return f"{how}; filename*=UTF-8''{quote(filename)}"


def headers(content_type: str | None, filename: str) -> dict[str, str]:
    """The headers of an answer that carries user bytes (``Content-Type`` aside)."""
    return {"Content-Disposition": disposition(content_type, filename), **HEADERS}


def guessed_type(filename: str) -> str | None:
    """The type a file's name implies (for object URLs presigned without reading the object)."""
    return mimetypes.guess_type(filename)[0]
