"""``replicant push``: pack a Cog model directory, upload it, and follow the build.

The upload shows a progress bar; the server then streams the build (NDJSON, one object a
line) and the build's lines are shown under a spinner until the version or the error comes.
"""

from __future__ import annotations

import json
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

import httpx
from rich.console import Console
from rich.progress import (
    BarColumn,
    DownloadColumn,
    Progress,
    TextColumn,
    TransferSpeedColumn,
)

from replicant.archives import LinkOutside, pack_model

CHUNK = 256 * 1024
NDJSON = "application/x-ndjson"


class PushError(Exception):
    """The push failed; the message is what the pusher needs to read."""


@dataclass
class PushOptions:
    create: bool = False
    private: bool = False
    hardware: str | None = None
    description: str | None = None


def api_base(url: str) -> str:
    """The server's root URL; a ``REPLICATE_BASE_URL`` ending in ``/v1`` works too."""
    base = url.rstrip("/")
    return base[: -len("/v1")] if base.endswith("/v1") else base


def _chunks(archive: IO[bytes], progress: Progress, task: Any) -> Iterator[bytes]:
    while chunk := archive.read(CHUNK):
        progress.update(task, advance=len(chunk))
        yield chunk


def _problem(response: httpx.Response) -> str:
    try:
        body = response.json()
    except ValueError:
        return f"HTTP {response.status_code}: {response.text[:2000]}"
    return _describe(body, response.status_code)


def _describe(body: dict[str, Any], status: int) -> str:
    title = body.get("title") or f"HTTP {status}"
    return f"{title}: {body.get('detail', '')}".rstrip(": ")


def push_model(
    src: Path, ref: str, *, url: str, token: str, options: PushOptions, console: Console
) -> dict[str, Any]:
    """Push ``src`` as a new version of ``ref`` (``owner/name``); returns the version."""
    owner, _, name = ref.partition("/")
    if not owner or not name or "/" in name:
        raise PushError(f"{ref!r} is not of the form owner/name")
    if not (src / "cog.yaml").is_file():
        raise PushError(f"{src} has no cog.yaml")
    params: dict[str, str] = {}
    if options.create:
        params["create"] = "true"
        params["visibility"] = "private" if options.private else "public"
        if options.hardware:
            params["hardware"] = options.hardware
        if options.description:
            params["description"] = options.description
    endpoint = f"{api_base(url)}/v1/models/{owner}/{name}/versions"
    with tempfile.TemporaryFile() as archive:
        try:
            count = pack_model(src, archive)
        except LinkOutside as err:
            raise PushError(str(err)) from None
        size = archive.tell()
        archive.seek(0)
        console.print(f"Packed {count} files from {src} ({size:,} bytes)")
        headers = {
            "Authorization": f"Bearer {token}",
            "Content-Type": "application/gzip",
            "Content-Length": str(size),
            "Accept": NDJSON,
        }
        columns = (
            TextColumn("Uploading"),
            BarColumn(),
            DownloadColumn(),
            TransferSpeedColumn(),
        )
        # An environment build may take long: wait for the server's lines without a limit.
        timeout = httpx.Timeout(30.0, read=None)
        with httpx.Client(timeout=timeout) as client:
            with Progress(*columns, console=console) as progress:
                task = progress.add_task("upload", total=size)
                request = client.build_request(
                    "POST",
                    endpoint,
                    params=params,
                    headers=headers,
                    content=_chunks(archive, progress, task),
                )
                response = client.send(request, stream=True)
            try:
                return _follow(response, console)
            finally:
                response.close()


def _follow(response: httpx.Response, console: Console) -> dict[str, Any]:
    if response.status_code >= 400:
        response.read()
        raise PushError(_problem(response))
    if not response.headers.get("content-type", "").startswith(NDJSON):
        response.read()
        body: dict[str, Any] = response.json()
        return body
    with console.status("Building the version...") as status:
        for line in response.iter_lines():
            if not line.strip():
                continue
            event = json.loads(line)
            kind = event.get("event")
            if kind == "log":
                message = str(event.get("message", ""))
                console.print(
                    f"  {message}", style="dim", markup=False, highlight=False, soft_wrap=True
                )
                status.update(f"Building the version: {message[:60]}")
            elif kind == "version":
                version: dict[str, Any] = event["version"]
                version["_created"] = event.get("status") == 201
                return version
            elif kind == "error":
                raise PushError(_describe(event, int(event.get("status", 500))))
    build = response.headers.get("replicant-build")
    follow = f"; the build goes on: follow it at /v1/builds/{build}" if build else ""
    raise PushError(f"The server closed the connection before the build finished{follow}")
