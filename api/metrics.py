"""Prometheus metrics of an API process: ``GET /metrics``.

Request latency by route template and status; predictions by status (counted in the read
model: waiting and running ones at every scrape, ended ones at most once per
``metrics_count_interval``); how long runs waited to start, by hardware; the backlog of
every hardware queue (Temporal's approximate count, cached for a few seconds so scrapes do
not hammer the frontend).
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import Iterator

from fastapi import APIRouter, Request
from fastapi.responses import Response
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Histogram,
    generate_latest,
)
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector
from sqlalchemy import text
from sqlalchemy.engine import Engine
from sqlmodel import Session, col, select
from starlette.types import ASGIApp, Message, Receive, Scope, Send
from temporalio.api.enums.v1 import TaskQueueType
from temporalio.api.taskqueue.v1 import TaskQueue
from temporalio.api.workflowservice.v1 import DescribeTaskQueueRequest

from api.state import AppState
from replicant.tables import Prediction, Training
from replicant.timeutil import as_utc, utcnow

log = logging.getLogger("replicant.metrics")

# Seconds a queue backlog reading is reused.
BACKLOG_TTL = 5.0

metrics_router = APIRouter(tags=["metrics"])


# Waiting and running predictions are few rows of the (status, id) index; ended ones are
# nearly the whole table.
_BY_STATUS = "SELECT status, count(*) FROM prediction WHERE status {} ('starting', 'processing') "
COUNT_LIVE = text(_BY_STATUS.format("IN") + "GROUP BY status")
COUNT_ENDED = text(_BY_STATUS.format("NOT IN") + "GROUP BY status")


class ReadModelCollector(Collector):
    """Predictions by status in the read model. Waiting and running ones are counted at
    every scrape; ended ones (all but a few rows, so a scan of the whole table) at most once
    per ``count_interval`` seconds, scrapes in between reusing that count."""

    def __init__(self, engine: Engine, count_interval: float) -> None:
        self.engine = engine
        self.count_interval = count_interval
        self.ended: list[tuple[str, int]] = []
        self.counted_at: float | None = None
        self._counting = threading.Lock()  # scrapes collect in threads

    def collect(self) -> Iterator[GaugeMetricFamily]:
        family = GaugeMetricFamily(
            "replicant_predictions", "Predictions in the read model by status", labels=["status"]
        )
        for status, count in self._counts():
            family.add_metric([status], count)
        yield family

    def _counts(self) -> list[tuple[str, int]]:
        with self._counting, self.engine.connect() as conn:
            now = time.monotonic()
            if self.counted_at is None or now - self.counted_at >= self.count_interval:
                self.ended = [(status, count) for status, count in conn.execute(COUNT_ENDED)]
                self.counted_at = now
            live = [(status, count) for status, count in conn.execute(COUNT_LIVE)]
        return live + self.ended


QUEUED_TASKS = (TaskQueueType.TASK_QUEUE_TYPE_WORKFLOW, TaskQueueType.TASK_QUEUE_TYPE_ACTIVITY)


class QueueBacklogCollector(Collector):
    """The approximate backlog of each hardware queue, as last read from Temporal."""

    def __init__(self) -> None:
        self.backlog: dict[str, int] = {}
        self.read_at = 0.0

    def collect(self) -> Iterator[GaugeMetricFamily]:
        family = GaugeMetricFamily(
            "replicant_queue_backlog",
            "Predictions queued per hardware queue, waiting for a worker or a slot "
            "(Temporal's approximate count)",
            labels=["hardware"],
        )
        for sku, count in sorted(self.backlog.items()):
            family.add_metric([sku], count)
        yield family


# How long runs waited before they started, in seconds: a slot, a boot, an environment.
WAIT_BUCKETS = (0.1, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600, 1800, 3600)
# Runs that started since the last scrape that one scrape observes at most.
WAITS_PER_SCRAPE = 10_000


class QueueWaits:
    """``replicant_queue_wait_seconds``: each run's wait (``started_at`` - ``created_at``)
    by hardware, observed at the first scrape after it started (from the read model, so it
    counts the runs of every worker; each API process counts them from its own start)."""

    def __init__(self, engine: Engine, registry: CollectorRegistry) -> None:
        self.engine = engine
        self.histogram = Histogram(
            "replicant_queue_wait_seconds",
            "Seconds predictions and trainings waited before they started, by hardware",
            ["hardware"],
            buckets=WAIT_BUCKETS,
            registry=registry,
        )
        self.since = utcnow()
        self._reading = threading.Lock()

    def observe_started(self) -> None:
        """Observe the waits of the runs that started since the last call."""
        with self._reading, Session(self.engine) as session:
            latest = self.since
            for table in (Prediction, Training):
                rows = session.exec(
                    select(table.hardware, table.created_at, table.started_at)
                    .where(col(table.started_at) > self.since)
                    .order_by(col(table.started_at))
                    .limit(WAITS_PER_SCRAPE)
                ).all()
                for hardware, created, started in rows:
                    if started is None:
                        continue
                    wait = (as_utc(started) - as_utc(created)).total_seconds()
                    self.histogram.labels(hardware).observe(max(wait, 0.0))
                    latest = max(latest, as_utc(started))
            self.since = latest


class Metrics:
    """The registry of one API app and the series in it."""

    def __init__(self, engine: Engine, count_interval: float) -> None:
        self.registry = CollectorRegistry()
        self.latency = Histogram(
            "replicant_http_request_duration_seconds",
            "HTTP request latency by route template and status",
            ["method", "route", "status"],
            registry=self.registry,
        )
        self.rate_limit_store_errors = Counter(
            "replicant_rate_limit_store_errors_total",
            "Requests whose rate limit could not be checked (the counter store failed)",
            registry=self.registry,
        )
        self.queue_wait = QueueWaits(engine, self.registry)
        self.registry.register(ReadModelCollector(engine, count_interval))
        self.backlog = QueueBacklogCollector()
        self.registry.register(self.backlog)
        self._refresh = asyncio.Lock()

    async def refresh_backlog(self, state: AppState) -> None:
        """Read every hardware queue's backlog, unless the last reading is recent."""
        async with self._refresh:
            if time.monotonic() - self.backlog.read_at < BACKLOG_TTL:
                return
            try:
                client = await asyncio.wait_for(state.temporal(), timeout=5)
                backlog: dict[str, int] = {}
                for sku in state.settings.hardware:
                    backlog[sku] = 0
                    # A queued prediction waits as a workflow task while no worker of its
                    # hardware polls, and as an activity task (its run) once one does.
                    for kind in QUEUED_TASKS:
                        request = DescribeTaskQueueRequest(
                            namespace=client.namespace,
                            task_queue=TaskQueue(name=state.settings.task_queue(sku)),
                            task_queue_type=kind,
                            report_stats=True,
                        )
                        response = await client.workflow_service.describe_task_queue(
                            request, timeout=None
                        )
                        backlog[sku] += response.stats.approximate_backlog_count
            except Exception as err:  # Temporal down: keep serving the other series
                log.warning("event=queue_backlog_unavailable error=%s", type(err).__name__)
                return
            self.backlog.backlog = backlog
            self.backlog.read_at = time.monotonic()


class RequestMetrics:
    """ASGI middleware: observes each HTTP request's latency under its route template."""

    def __init__(self, app: ASGIApp, metrics: Metrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start = time.perf_counter()
        status = 500

        async def send_and_note(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_and_note)
        finally:
            route = scope.get("route")
            # Unmatched paths share one label, so scanners cannot blow up the series count.
            template = getattr(route, "path", None) or "unmatched"
            self.metrics.latency.labels(scope["method"], template, str(status)).observe(
                time.perf_counter() - start
            )


@metrics_router.get("/metrics", include_in_schema=False)
async def metrics(request: Request) -> Response:
    """Prometheus text format; unauthenticated, like /health (expose it to the scraper only)."""
    registered: Metrics = request.app.state.metrics
    await registered.refresh_backlog(request.app.state.replicant)
    await asyncio.to_thread(registered.queue_wait.observe_started)
    body = await asyncio.to_thread(generate_latest, registered.registry)
    return Response(body, media_type=CONTENT_TYPE_LATEST)
