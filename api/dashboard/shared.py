"""The public page of a shared prediction (``/p/{id}``) in the dashboard's look: the sharing
route decides what is public and passes its public view here to be drawn."""

from __future__ import annotations

from typing import Any

from fastapi import Request
from fastapi.responses import HTMLResponse

from api.dashboard.web import render

# A public page runs no script at all: only the stylesheet, and the output's media.
PUBLIC_CSP = (
    "default-src 'none'; style-src 'self'; img-src * data: blob:; media-src * data: blob:; "
    "frame-ancestors 'none'; base-uri 'none'; form-action 'self'"
)


def shared_page(request: Request, view: dict[str, Any]) -> HTMLResponse:
    """``view`` (the sharing route's public fields only) as an HTML page."""
    response = render(request, "shared.html", p=view)
    response.headers["Content-Security-Policy"] = PUBLIC_CSP
    return response
