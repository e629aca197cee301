"""The pool's embedded HTTP server, which only its coglet processes call (on 127.0.0.1, or
through its Unix socket from a sandbox).

coglet POSTs webhooks of streaming predictions, PUTs output files (``--upload-url``), and a
model's ``setup()`` GETs its weights (fine-tunes) or waits for them (standbys). Every path
starts with the token of one model process (``issue``), unguessable and known only to that
process: the handlers get the process the request speaks for, and answer only for what runs
on it (a model cannot report for another process's runs). An unknown token answers 404.
"""

from __future__ import annotations

import asyncio
import contextlib
import secrets
import shutil
import socket
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

if TYPE_CHECKING:
    from workers.runners.process import CogletProcess


class Handlers(Protocol):
    """What the receiver's routes do for the process whose token the path starts with."""

    async def on_webhook(
        self, process: CogletProcess, prediction_id: str, request: Request
    ) -> Response:
        """coglet reports a streaming prediction's state."""
        ...

    async def on_upload(self, process: CogletProcess, filename: str, request: Request) -> Response:
        """coglet PUTs an output file; answer its URL in ``Location``."""
        ...

    async def on_weights(self, process: CogletProcess, digest: str, name: str) -> Response:
        """A fine-tune's setup() fetches its weights."""
        ...

    async def on_standby(self, process: CogletProcess, token: str) -> Response:
        """A standby's setup() asks for weights: answer once a fine-tune adopts it."""
        ...

    async def on_spans(self, request: Request) -> Response:
        """A sandboxed model exports its spans (relayed to the collector, spans.py)."""
        ...


class _QuietServer(uvicorn.Server):
    """uvicorn without its signal handlers: SIGTERM belongs to the worker, not to us."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


class Receiver:
    """The server; ``issue`` gives a process its links once ``start`` returned."""

    def __init__(self, handlers: Handlers) -> None:
        self.handlers = handlers
        self.port = 0
        # The same server on a Unix socket, for sandboxed model processes (their forwarder).
        self.socket = Path()
        # The live model processes by the token of their links.
        self._links: dict[str, CogletProcess] = {}
        self._server: _QuietServer | None = None
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        """Listen on a free port of 127.0.0.1 and serve in the background."""
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.bind(("127.0.0.1", 0))
        sock.listen(128)
        self.socket = Path(tempfile.mkdtemp(prefix="replicant-receiver-")) / "receiver.sock"
        self.socket.parent.chmod(0o711)
        unix = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        unix.bind(str(self.socket))
        self.socket.chmod(0o666)  # a model's uid connects; the directory is bound, not reachable
        unix.listen(128)
        app = Starlette(
            routes=[
                Route("/{link}/{prediction_id}", self._webhook, methods=["POST"]),
                Route("/{link}/upload/{filename:path}", self._upload, methods=["PUT"]),
                Route("/{link}/weights/{digest}/{name}", self._weights, methods=["GET"]),
                Route("/{link}/standby/{token}", self._standby, methods=["GET"]),
                Route("/{link}/otlp/v1/traces", self._spans, methods=["POST"]),
            ]
        )
        config = uvicorn.Config(
            app,
            log_config=None,
            log_level="warning",
            access_log=False,
            lifespan="off",
            timeout_graceful_shutdown=1,
        )
        self._server = _QuietServer(config)
        self._task = asyncio.create_task(self._server.serve(sockets=[sock, unix]))
        while not self._server.started:
            if self._task.done():
                self._task.result()
                raise RuntimeError("the webhook receiver stopped while starting")
            await asyncio.sleep(0.005)
        self.port = sock.getsockname()[1]

    def issue(self, process: CogletProcess) -> str:
        """The base URL of one process's links (with a token of its own), until ``revoke``."""
        token = secrets.token_urlsafe(24)
        self._links[token] = process
        return f"http://127.0.0.1:{self.port}/{token}/"

    def revoke(self, base: str) -> None:
        """Forget the links of a process (reaped: nothing speaks for it any more)."""
        self._links.pop(base.rstrip("/").rpartition("/")[2], None)

    async def stop(self) -> None:
        """Stop serving (idempotent)."""
        if self._server is not None and self._task is not None:
            self._server.should_exit = True
            with contextlib.suppress(Exception):
                await self._task
        if self.socket.name:
            shutil.rmtree(self.socket.parent, ignore_errors=True)

    def _process(self, request: Request) -> CogletProcess | None:
        """The live process whose token the path starts with (None: unknown or gone)."""
        link = request.path_params["link"]
        for token, process in self._links.items():
            if secrets.compare_digest(token, link):
                return process if not process.exited else None
        return None

    async def _webhook(self, request: Request) -> Response:
        process = self._process(request)
        if process is None:
            return Response(status_code=404)
        prediction_id = request.path_params["prediction_id"]
        return await self.handlers.on_webhook(process, prediction_id, request)

    async def _upload(self, request: Request) -> Response:
        process = self._process(request)
        if process is None:
            return Response(status_code=404)
        return await self.handlers.on_upload(process, request.path_params["filename"], request)

    async def _weights(self, request: Request) -> Response:
        process = self._process(request)
        if process is None:
            return Response(status_code=404)
        params = request.path_params
        return await self.handlers.on_weights(process, params["digest"], params["name"])

    async def _standby(self, request: Request) -> Response:
        process = self._process(request)
        if process is None:
            return Response(status_code=404)
        return await self.handlers.on_standby(process, request.path_params["token"])

    async def _spans(self, request: Request) -> Response:
        if self._process(request) is None:
            return Response(status_code=404)
        return await self.handlers.on_spans(request)
