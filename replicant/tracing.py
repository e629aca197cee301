"""OpenTelemetry tracing of predictions, on only when ``REPLICANT_OTLP_ENDPOINT`` is set.

Off (the default) nothing here imports the SDK, installs an interceptor or a middleware:
``interceptors`` answers an empty list and ``carrier`` an empty dict. On, each process
(API, worker) sends its spans over OTLP/HTTP to ``<endpoint>/v1/traces``, temporalio's
``TracingInterceptor`` carries the context from the API's request into the workflow and its
activities, and the runner hands coglet the ``traceparent`` of its activity (docs/tracing.md).
"""

from __future__ import annotations

from typing import Any

from replicant.settings import Settings

# The role (api, worker) of this process once its tracer provider is set up, and its endpoint.
_started: dict[str, str] = {}


def enabled(settings: Settings) -> bool:
    return bool(settings.otlp_endpoint)


def traces_url(settings: Settings) -> str:
    """The collector's OTLP/HTTP traces URL."""
    return f"{str(settings.otlp_endpoint).rstrip('/')}/v1/traces"


def start(settings: Settings, role: str) -> None:
    """Install this process's tracer provider (once), exporting in batches to the collector."""
    if not enabled(settings) or _started:
        return
    from opentelemetry import trace
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor

    resource = Resource.create({"service.name": f"{settings.otlp_service_name}-{role}"})
    provider = TracerProvider(resource=resource)
    provider.add_span_processor(
        BatchSpanProcessor(
            OTLPSpanExporter(endpoint=traces_url(settings)), schedule_delay_millis=1000
        )
    )
    trace.set_tracer_provider(provider)
    _started[role] = traces_url(settings)


def stop() -> None:
    """Send the spans still batched (at a process's orderly exit)."""
    if not _started:
        return
    from opentelemetry import trace

    provider: Any = trace.get_tracer_provider()
    if hasattr(provider, "shutdown"):
        provider.shutdown()


def interceptors(settings: Settings) -> list[Any]:
    """The Temporal client (and so worker) interceptors: temporalio's tracing one when on."""
    if not enabled(settings):
        return []
    from temporalio.contrib.opentelemetry import TracingInterceptor

    return [TracingInterceptor()]


def carrier() -> dict[str, str]:
    """The W3C ``traceparent``/``tracestate`` of the current span (empty when not tracing):
    the headers of a prediction's PUT to coglet, which continues the trace in the model."""
    if not _started:
        return {}
    from opentelemetry.propagate import inject

    headers: dict[str, str] = {}
    inject(headers)
    return headers


def trace_id() -> str | None:
    """The current trace's id (32 hex digits), None when not tracing."""
    if not _started:
        return None
    from opentelemetry import trace

    context = trace.get_current_span().get_span_context()
    return f"{context.trace_id:032x}" if context.is_valid else None


def collector_url() -> str | None:
    """The collector's traces URL this process sends to (None when not tracing)."""
    return next(iter(_started.values()), None)


# The variable naming where a model process sends its spans (``model_env``).
MODEL_ENDPOINT = "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"


def model_env() -> dict[str, str]:
    """What a model process needs to continue the trace its PUT carries (empty when not
    tracing): Cog's tracing on (cog/_trace.py joins only with COG_TRACE_CONFIGURED), sending
    to the same collector (a sandbox with a network of its own sends to the pool's relay
    instead, ``workers/runners/spans.py``). Cog samples only what its parent sampled, as
    this process does."""
    url = collector_url()
    if url is None:
        return {}
    return {
        "COG_TRACE_CONFIGURED": "1",
        MODEL_ENDPOINT: url,
        "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL": "http/protobuf",
        "OTEL_SERVICE_NAME": "replicant-model",
    }
