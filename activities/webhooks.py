"""Webhook activities: the durable ``completed`` delivery and best-effort live events.

``send_webhook`` is one attempt of one event; ``WebhookDeliveryWorkflow`` schedules it and
retries it with backoff, so every attempt and the receiver's answer are in the workflow's
history; ``start_webhook_delivery`` starts that workflow as a run's workflow closes.
``LiveWebhooks`` sends ``start``, ``output`` and ``logs`` from inside the run activity, in
order, at most one per event type each 500 ms, the latest state always last.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable, Sequence
from datetime import datetime
from typing import Any, Protocol

import httpx
from sqlalchemy.engine import Engine
from sqlmodel import Session
from temporalio import activity
from temporalio.common import WorkflowIDReusePolicy
from temporalio.exceptions import ApplicationError, WorkflowAlreadyStartedError

from replicant.contracts import (
    WEBHOOK_DELIVERY_WORKFLOW,
    ActivityName,
    ErrorType,
    PredictionRequest,
    WebhookDelivery,
    WebhookResult,
    WebhookStart,
    webhook_workflow_id,
)
from replicant.readmodel import with_model_metrics
from replicant.serialize import prediction_json
from replicant.settings import Settings
from replicant.tables import Prediction
from replicant.webhooks import (
    DeliveryFailed,
    account_webhook_secret,
    deliver,
    http_client,
    webhook_id,
)

log = logging.getLogger("replicant.webhooks")
# Seconds a finished run waits for its pending live webhook events.
LIVE_WEBHOOK_GRACE = 6.0

ALL_EVENTS = ("start", "output", "logs", "completed")
LIVE_EVENTS = ("start", "output", "logs")
# Replicate's documented throttle of `output` and `logs` events.
THROTTLE = 0.5
LIVE_ATTEMPTS = 2
LIVE_TIMEOUT = 5.0


def wanted_events(filter: Sequence[str] | None) -> set[str]:
    """The events a prediction's webhook receives (all when no filter was given)."""
    return set(ALL_EVENTS if filter is None else filter)


@activity.defn(name=ActivityName.START_WEBHOOK_DELIVERY)
async def start_webhook_delivery(start: WebhookStart) -> None:
    """Start the workflow that delivers a run's `completed` webhook (a local activity of the
    run's workflow, in the task that closes it). Once only: a workflow of that id, running or
    closed, is this delivery started by an earlier attempt (e.g. of a worker that died before
    the run's workflow closed)."""
    workflow_id = webhook_workflow_id(start.job.id)
    try:
        await activity.client().start_workflow(
            WEBHOOK_DELIVERY_WORKFLOW,
            start.job,
            id=workflow_id,
            task_queue=start.task_queue,
            id_reuse_policy=WorkflowIDReusePolicy.REJECT_DUPLICATE,
            static_summary=start.summary,
        )
    except WorkflowAlreadyStartedError:
        log.info("event=webhook_workflow_started_already workflow=%s", workflow_id)


class WebhookActivities:
    """``send_webhook``, and the factory of ``LiveWebhooks`` for the run activity."""

    def __init__(self, engine: Engine, settings: Settings) -> None:
        self.engine = engine
        self.settings = settings
        self._client: httpx.AsyncClient | None = None

    @property
    def client(self) -> httpx.AsyncClient:
        if self._client is None:
            self._client = http_client()
        return self._client

    def render(self, row: Prediction) -> dict[str, Any]:
        return prediction_json(
            row, self.settings.resolved_public_url, secret_key=self.settings.ensure_secret_key()
        )

    def _load(self, prediction_id: str) -> tuple[Prediction, str] | None:
        with Session(self.engine, expire_on_commit=False) as session:
            row = session.get(Prediction, prediction_id)
        if row is None or not row.webhook:
            return None
        return row, account_webhook_secret(
            self.engine, row.owner, secret_key=self.settings.ensure_secret_key()
        )

    @activity.defn(name=ActivityName.SEND_WEBHOOK)
    async def send_webhook(self, d: WebhookDelivery) -> WebhookResult:
        """POST the prediction as it is now; the failure message carries the answer."""
        found = await asyncio.to_thread(self._load, d.prediction_id)
        if found is None:
            raise ApplicationError(
                f"prediction {d.prediction_id} has no webhook",
                type=ErrorType.NO_WEBHOOK,
                non_retryable=True,
            )
        row, secret = found
        assert row.webhook is not None
        return await deliver_attempt(
            self.client,
            row.webhook,
            secret=secret,
            msg_id=webhook_id(d.prediction_id, d.event, d.sequence),
            body=self.render(row),
            time_limit=d.timeout,
            allow_private=self.settings.allow_private_urls,
            subject=f"prediction={d.prediction_id}",
            event=d.event,
        )

    async def live(self, req: PredictionRequest) -> LiveWebhooks | None:
        """Live events of a run, or None when its webhook wants none (the common case)."""
        if not req.webhook:
            return None
        events = wanted_events(req.webhook_events_filter) & set(LIVE_EVENTS)
        if not events:
            return None
        found = await asyncio.to_thread(self._load, req.id)
        if found is None:
            return None
        row, secret = found
        assert row.webhook is not None
        send = self.live_sender("prediction", req.id, row.webhook, secret, req.webhook_timeout)
        return LiveWebhooks(row, events, send, self.render)

    def live_sender(
        self, kind: str, object_id: str, url: str, secret: str, timeout: float
    ) -> Callable[[str, int, dict[str, Any]], Awaitable[None]]:
        """Best-effort delivery of one live event of a prediction or training (``kind``)."""

        async def send(event: str, sequence: int, body: dict[str, Any]) -> None:
            msg_id = webhook_id(object_id, event, sequence)
            for attempt in range(1, LIVE_ATTEMPTS + 1):
                try:
                    status = await deliver(
                        self.client,
                        url,
                        secret=secret,
                        msg_id=msg_id,
                        body=body,
                        time_limit=min(LIVE_TIMEOUT, timeout),
                        allow_private=self.settings.allow_private_urls,
                    )
                except DeliveryFailed as err:
                    log.info(
                        "event=webhook_failed %s=%s webhook_event=%s attempt=%d status=%s",
                        kind,
                        object_id,
                        event,
                        attempt,
                        err.status,
                    )
                    if err.permanent:
                        return
                    continue
                log.info(
                    "event=webhook_delivered %s=%s webhook_event=%s status=%d",
                    kind,
                    object_id,
                    event,
                    status,
                )
                return

        return send


class LiveRow(Protocol):
    """What live events read and update: a prediction's or a training's read-model row."""

    id: str
    status: str
    started_at: datetime | None
    logs: str
    output: Any
    metrics: dict[str, Any] | None


class LiveWebhooks:
    """Best-effort ``start``/``output``/``logs`` events of one run, sent in order.

    The body is rendered at send time from the latest state, so a throttled event still
    carries the newest output and logs, and the last state is always delivered.
    """

    def __init__(
        self,
        row: LiveRow,
        events: set[str],
        send: Callable[[str, int, dict[str, Any]], Any],
        render: Callable[[Any], dict[str, Any]],
    ) -> None:
        self.row = row
        self.events = events
        self._send = send
        self._render = render
        self._pending: set[str] = set()
        self._sent_at: dict[str, float] = {}
        self._sequence: dict[str, int] = {}
        self._wake = asyncio.Event()
        self._closing = False
        self._task: asyncio.Task[None] | None = None

    def started(self, started_at: Any) -> None:
        self.row.status = "processing"
        self.row.started_at = started_at
        self._notify("start")

    def progress(self, logs: str, output: Any, metrics: dict[str, Any] | None = None) -> None:
        """The run's latest ``logs`` and ``output``, and the ``metrics`` its model recorded so
        far (they ride along with the next event)."""
        if metrics:
            self.row.metrics = with_model_metrics(metrics, {})
        if output != self.row.output:
            self.row.output = output
            self._notify("output")
        if logs != self.row.logs:
            self.row.logs = logs
            self._notify("logs")

    def _notify(self, event: str) -> None:
        if event not in self.events or self._closing:
            return
        self._pending.add(event)
        self._wake.set()
        if self._task is None:
            self._task = asyncio.create_task(self._run())

    async def _run(self) -> None:
        while True:
            if not self._pending:
                if self._closing:
                    return
                self._wake.clear()
                await self._wake.wait()
                continue
            now = time.monotonic()
            due = [
                e
                for e in LIVE_EVENTS
                if e in self._pending
                and (e == "start" or now - self._sent_at.get(e, -THROTTLE) >= THROTTLE)
            ]
            if not due:
                wait = min(
                    THROTTLE - (now - self._sent_at[e]) for e in self._pending if e != "start"
                )
                self._wake.clear()
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(max(wait, 0.0)):
                        await self._wake.wait()
                continue
            # `start` goes alone and first; one delivery (the whole prediction) serves both
            # `output` and `logs` when both are due.
            batch = ["start"] if "start" in due else due
            event = batch[0]
            for e in batch:
                self._pending.discard(e)
                self._sent_at[e] = time.monotonic()
            sequence = self._sequence.get(event, 0)
            self._sequence[event] = sequence + 1
            await self._send(event, sequence, self._render(self.row))

    async def close(self, grace: float) -> None:
        """Deliver what is pending (within ``grace`` seconds), then stop."""
        self._closing = True
        self._wake.set()
        if self._task is None:
            return
        try:
            async with asyncio.timeout(grace):
                await asyncio.shield(self._task)
        except TimeoutError:
            log.info("event=webhook_live_abandoned prediction=%s", self.row.id)
        finally:
            self.abort()

    async def end(
        self,
        *,
        canceled: bool = False,
        logs: str | None = None,
        output: Any = None,
        metrics: dict[str, Any] | None = None,
    ) -> None:
        """The run is over: send its last ``logs`` and ``output`` (None: as they are), with
        the ``metrics`` its model recorded, and the pending events, or drop them when it was
        canceled (``completed`` comes after this)."""
        if canceled:
            self.abort()
            return
        row = self.row
        self.progress(
            row.logs if logs is None else logs, row.output if output is None else output, metrics
        )
        await self.close(LIVE_WEBHOOK_GRACE)

    def abort(self) -> None:
        self._closing = True
        if self._task is not None and not self._task.done():
            self._task.cancel()


async def deliver_attempt(
    client: httpx.AsyncClient,
    url: str,
    *,
    secret: str,
    msg_id: str,
    body: dict[str, Any],
    time_limit: float,
    allow_private: bool,
    subject: str,
    event: str,
) -> WebhookResult:
    """One delivery attempt as an activity sees it: a refusal or failure becomes an
    ApplicationError carrying the receiver's status, so each attempt shows in the history."""
    try:
        status = await deliver(
            client,
            url,
            secret=secret,
            msg_id=msg_id,
            body=body,
            time_limit=time_limit,
            allow_private=allow_private,
        )
    except DeliveryFailed as err:
        # A permanent failure is not retried: this is its only line.
        log.log(
            logging.WARNING if err.permanent else logging.INFO,
            "event=webhook_failed %s webhook_event=%s status=%s retried=%s",
            subject,
            event,
            err.status,
            "no" if err.permanent else "yes",
        )
        raise ApplicationError(
            str(err),
            {"status_code": err.status},
            type=ErrorType.WEBHOOK_REFUSED if err.permanent else "WebhookFailed",
            non_retryable=err.permanent,
        ) from None
    log.info("event=webhook_delivered %s webhook_event=%s status=%d", subject, event, status)
    return WebhookResult(status_code=status)
