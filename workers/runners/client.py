"""HTTP to the coglet processes: predictions through aiohttp, the rest through httpx."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import aiohttp
import httpx

from replicant import tracing
from workers.runners.answer import AnswerReader, read_answer
from workers.runners.coglet import health

# The answer of a prediction is read in pieces of this size (see workers/runners/answer.py).
ANSWER_CHUNK = 256 * 1024

# A prediction's PUT: the connection within 10 s, the answer whenever the model is done.
PUT_TIMEOUT = aiohttp.ClientTimeout(total=None, sock_connect=10.0)


class CogletClient:
    """Connections to coglet on 127.0.0.1 (open between ``open`` and ``close``), or to a
    sandboxed coglet through its Unix socket (``route``)."""

    def __init__(self) -> None:
        self._client: httpx.AsyncClient | None = None
        # The predictions themselves go through aiohttp: on the path of every prediction,
        # it costs a third of httpx's CPU per call (health checks and cancels use httpx).
        self._session: aiohttp.ClientSession | None = None
        # A sandboxed process's URL -> its socket and its connection pools over it.
        self._routes: dict[str, tuple[Path, httpx.AsyncClient, aiohttp.ClientSession]] = {}

    def route(self, url: str, socket: Path) -> None:
        """Reach the coglet of ``url`` (``http://127.0.0.1:<port>``) through ``socket``."""
        client = httpx.AsyncClient(
            trust_env=False,
            timeout=httpx.Timeout(10.0),
            # Plain HTTP over the socket: no TLS context to build (~20 ms per process).
            transport=httpx.AsyncHTTPTransport(uds=str(socket), verify=False),
        )
        session = aiohttp.ClientSession(connector=aiohttp.UnixConnector(str(socket), limit=0))
        self._routes[url] = (socket, client, session)

    async def unroute(self, url: str, socket: Path) -> None:
        """Forget the route of ``url`` through ``socket`` (its process is gone); a newer
        process's route of the same URL stays."""
        route = self._routes.get(url)
        if route is not None and route[0] == socket:
            del self._routes[url]
            await route[1].aclose()
            await route[2].close()

    def _pools(self, url: str) -> tuple[httpx.AsyncClient, aiohttp.ClientSession]:
        base = url[: url.find("/", len("http://"))] if url.count("/") > 2 else url
        route = self._routes.get(base)
        if route is not None:
            return route[1], route[2]
        assert self._client is not None and self._session is not None
        return self._client, self._session

    def open(self) -> None:
        """Create the connection pools (inside the running event loop)."""
        # trust_env=False: a proxy from the environment must never sit before 127.0.0.1.
        self._client = httpx.AsyncClient(trust_env=False, timeout=httpx.Timeout(10.0))
        self._session = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0))

    async def close(self) -> None:
        """Close the connection pools."""
        if self._client is not None:
            await self._client.aclose()
        if self._session is not None:
            await self._session.close()
        for url, route in list(self._routes.items()):
            await self.unroute(url, route[0])

    async def health(self, url: str) -> tuple[str | None, dict[str, Any]]:
        """coglet's /health-check status (None when it does not answer) and its body."""
        client, _ = self._pools(url)
        try:
            response = await client.get(f"{url}/health-check", timeout=2.0)
            body = response.json()
        except (httpx.HTTPError, ValueError):
            return None, {}
        status = health(body)
        return (status, body) if status is not None else (None, {})

    async def put(
        self, url: str, body: dict[str, Any], answer: AnswerReader
    ) -> tuple[int, AnswerReader]:
        """PUT a prediction to coglet: its HTTP status, and its answer read into ``answer``
        as it arrives (raises aiohttp.ClientError or TimeoutError when the process is gone)."""
        _, session = self._pools(url)
        # Traced, the activity's traceparent: coglet continues the trace in the model.
        headers = tracing.carrier()
        async with session.put(url, json=body, headers=headers, timeout=PUT_TIMEOUT) as response:
            chunks = response.content.iter_chunked(ANSWER_CHUNK)
            return response.status, await read_answer(chunks, answer)

    async def cancel(self, url: str) -> int | None:
        """POST coglet's cancel of a prediction: the HTTP status (None: unreachable)."""
        client, _ = self._pools(url)
        try:
            response = await client.post(url, timeout=2.0)
        except httpx.TransportError:
            return None
        return response.status_code
