"""The relay of a sandboxed model's spans to the operator's OTLP collector.

A model process with a network namespace of its own (``model_egress`` ``none`` or
``public``) reaches no address, so Cog's exporter cannot send its spans to the collector
itself. Its ``OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`` names this relay instead: a route of the
pool's receiver (``/<secret>/otlp/v1/traces``), which the sandbox already reaches through
its forwarded receiver link. The relay POSTs each export, as it came (protobuf or JSON,
gzip or not), to the collector's traces URL (``REPLICANT_OTLP_ENDPOINT``) and nowhere else,
and answers with the collector's status: the model gains no other address, method or path.
"""

from __future__ import annotations

import logging

import httpx
from starlette.requests import Request
from starlette.responses import Response

from replicant import tracing

# The receiver's route of the relay, after its secret.
ROUTE = "otlp/v1/traces"
# The largest export taken (OTLP's batches are far smaller); a larger one answers 413.
MAX_EXPORT_BYTES = 16 * 1024 * 1024
# Headers of an export passed on to the collector.
FORWARDED_HEADERS = ("content-type", "content-encoding")

log = logging.getLogger("replicant.runners")


class SpanRelay:
    """Forwards model processes' span exports to ``target`` (the collector's traces URL)."""

    def __init__(self, target: str) -> None:
        self.target = target
        self._client = httpx.AsyncClient(timeout=httpx.Timeout(10.0), follow_redirects=False)

    @classmethod
    def when_tracing(cls) -> SpanRelay | None:
        """A relay to this process's collector, or None when it does not trace."""
        target = tracing.collector_url()
        return cls(target) if target is not None else None

    async def forward(self, request: Request) -> Response:
        """POST the export in ``request`` to the collector; answer what it answered."""
        body = bytearray()
        async for chunk in request.stream():
            body += chunk
            if len(body) > MAX_EXPORT_BYTES:
                return Response(status_code=413)
        headers = {k: v for k in FORWARDED_HEADERS if (v := request.headers.get(k))}
        try:
            answer = await self._client.post(self.target, content=bytes(body), headers=headers)
        except httpx.HTTPError as err:
            log.warning("event=model_spans_not_relayed error=%s", type(err).__name__)
            return Response(status_code=502)
        content_type = answer.headers.get("content-type")
        return Response(answer.content, answer.status_code, media_type=content_type)

    async def close(self) -> None:
        await self._client.aclose()
