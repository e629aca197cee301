"""Process-level observability shared by API and worker processes.

``temporal_runtime`` routes the Temporal SDK core's own logs into Python logging (so they come
out as JSON lines too) and, on a worker, exports the SDK's metrics in Prometheus format.
``serve_worker_metrics`` serves a worker's own series (prometheus-client's default registry).
"""

from __future__ import annotations

import logging

from prometheus_client import Counter, Gauge, start_http_server
from temporalio.runtime import (
    LogForwardingConfig,
    LoggingConfig,
    PrometheusConfig,
    Runtime,
    TelemetryConfig,
    TelemetryFilter,
)

from replicant.settings import Settings

log = logging.getLogger("replicant.metrics")

WEBHOOK_FAILURES = Counter(
    "replicant_webhook_failures",
    "Webhook deliveries that failed (non-2xx, refused or unreachable), by event",
    ["event"],
)
WORKER_SLOTS = Gauge(
    "replicant_worker_slots", "Concurrent prediction slots this worker serves", ["hardware"]
)


def temporal_runtime(settings: Settings, *, metrics_port: int = 0) -> Runtime:
    """Make the Temporal runtime of this process the default: core logs forwarded to Python
    logging; SDK metrics on ``metrics_port`` when it is not 0."""
    telemetry = TelemetryConfig(
        logging=LoggingConfig(
            filter=TelemetryFilter(core_level="WARN", other_level="ERROR"),
            forwarding=LogForwardingConfig(logger=logging.getLogger("temporalio.core")),
        ),
        metrics=PrometheusConfig(bind_address=f"{settings.api_host}:{metrics_port}")
        if metrics_port
        else None,
    )
    runtime = Runtime(telemetry=telemetry)
    Runtime.set_default(runtime, error_if_already_set=True)
    return runtime


class _WebhookFailureCounter(logging.Filter):
    """Counts ``event=webhook_failed`` records of ``replicant.webhooks`` (the delivery code's
    one report of a failure, with the event as its second argument)."""

    def filter(self, record: logging.LogRecord) -> bool:
        if isinstance(record.msg, str) and record.msg.startswith("event=webhook_failed"):
            args = record.args if isinstance(record.args, tuple) else ()
            WEBHOOK_FAILURES.labels(str(args[1]) if len(args) > 1 else "unknown").inc()
        return True


def serve_worker_metrics(settings: Settings, hardware: list[str] | None) -> None:
    """Start this worker's metrics endpoint (when configured) and fill the static series."""
    logging.getLogger("replicant.webhooks").addFilter(_WebhookFailureCounter())
    skus = settings.hardware if hardware is None else {s: settings.hardware[s] for s in hardware}
    for sku, slots in skus.items():
        WORKER_SLOTS.labels(sku).set(slots)
    if settings.worker_metrics_port:
        start_http_server(settings.worker_metrics_port, addr=settings.api_host)
        log.info("event=metrics_listening port=%d", settings.worker_metrics_port)
