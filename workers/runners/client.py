"""HTTP to the coglet processes: predictions through aiohttp, the rest through httpx."""

from __future__ import annotations

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
    """Connections to coglet on 127.0.0.1 (open between ``open`` and ``close``)."""

    def __init__(self) -> None:
        self._client: httpx.AsyncClient | None = None
        # The predictions themselves go through aiohttp: on the path of every prediction,
        # it costs a third of httpx's CPU per call (health checks and cancels use httpx).
        self._session: aiohttp.ClientSession | None = None

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

    async def health(self, url: str) -> tuple[str | None, dict[str, Any]]:
        """coglet's /health-check status (None when it does not answer) and its body."""
        assert self._client is not None
        try:
            response = await self._client.get(f"{url}/health-check", timeout=2.0)
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
        assert self._session is not None
        # Traced, the activity's traceparent: coglet continues the trace in the model.
        headers = tracing.carrier()
        async with self._session.put(
            url, json=body, headers=headers, timeout=PUT_TIMEOUT
        ) as response:
            chunks = response.content.iter_chunked(ANSWER_CHUNK)
            return response.status, await read_answer(chunks, answer)

    async def cancel(self, url: str) -> int | None:
        """POST coglet's cancel of a prediction: the HTTP status (None: unreachable)."""
        assert self._client is not None
        try:
            response = await self._client.post(url, timeout=2.0)
        except httpx.TransportError:
            return None
        return response.status_code
