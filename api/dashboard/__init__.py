"""The web dashboard, served by the API process at ``/``: server-rendered pages over the
API's own routes (see ``client.py``), one stylesheet and a little JavaScript."""

from __future__ import annotations

from fastapi import APIRouter, FastAPI
from fastapi.responses import Response

from api.dashboard import account_pages, downloads, pages, run_pages
from api.dashboard.web import HERE, install_handlers
from api.errors import not_found

STATIC = {
    "style.css": "text/css; charset=utf-8",
    "live.js": "text/javascript; charset=utf-8",
    "favicon.svg": "image/svg+xml",
}

static = APIRouter(include_in_schema=False)


@static.get("/static/dashboard/{name}")
async def static_file(name: str) -> Response:
    """The stylesheet and the script, from the package (never from a CDN)."""
    if name not in STATIC:
        raise not_found(f"File {name}")
    body = (HERE / "static" / name).read_bytes()
    return Response(body, media_type=STATIC[name], headers={"Cache-Control": "max-age=300"})


@static.get("/favicon.ico")
async def favicon() -> Response:
    """Browsers ask for /favicon.ico before they read a page's icon link."""
    return await static_file("favicon.svg")


def install(app: FastAPI) -> None:
    """Mount the dashboard on ``app`` (after the API's routes, which keep precedence)."""
    install_handlers(app)
    app.include_router(static)
    app.include_router(pages.router)
    app.include_router(downloads.router)
    app.include_router(run_pages.router)
    app.include_router(account_pages.router)
