"""ASGI middleware that keeps curl users' habits working, and the span of a traced request."""

from __future__ import annotations

from starlette.types import ASGIApp, Receive, Scope, Send

FORM = b"application/x-www-form-urlencoded"


class JSONBodyByDefault:
    """Treat a form-encoded body as JSON: the API takes no forms, and ``curl -d '{...}'``
    (as Replicate's own docs show it) sends JSON with curl's default form content type."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            headers = scope["headers"]
            if any(k == b"content-type" and v.split(b";")[0].strip() == FORM for k, v in headers):
                scope = dict(scope)
                scope["headers"] = [
                    (k, b"application/json" if k == b"content-type" else v) for k, v in headers
                ]
        await self.app(scope, receive, send)


class TracedRequests:
    """A server span for each HTTP request (installed only with tracing on, replicant/tracing.py),
    continuing an incoming ``traceparent``; the Temporal client's interceptor makes the
    workflow a child of it. Its id is answered in ``traceresponse`` (W3C Trace Context)."""

    def __init__(self, app: ASGIApp) -> None:
        from opentelemetry import trace

        self.app = app
        self.tracer = trace.get_tracer("replicant.api")

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        from opentelemetry import trace
        from opentelemetry.propagate import extract

        headers = {k.decode("latin-1"): v.decode("latin-1") for k, v in scope["headers"]}
        route = f"{scope['method']} {scope['path']}"
        with self.tracer.start_as_current_span(
            route, context=extract(headers), kind=trace.SpanKind.SERVER
        ) as span:
            span.set_attribute("http.request.method", scope["method"])
            span.set_attribute("url.path", scope["path"])

            async def sending(message: dict) -> None:  # type: ignore[type-arg]
                if message["type"] == "http.response.start":
                    span.set_attribute("http.response.status_code", message["status"])
                await send(message)  # type: ignore[arg-type]

            await self.app(scope, receive, sending)  # type: ignore[arg-type]
