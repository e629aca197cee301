"""WebhookDeliveryWorkflow: a run's ``completed`` webhook, delivered after the run's own
workflow has closed.

A prediction's or training's workflow closes as soon as the run ends; when its webhook wants
``completed``, it starts this workflow (``webhook-<run id>``, abandoned by its parent) on
the orchestration queue. It is open only while the receiver has not answered with a 2xx:
one activity per attempt, retried for up to the request's retry period.

Only temporalio, the standard library and replicant.contracts are imported here, as in every
workflow module.
"""

from __future__ import annotations

from typing import Any, Literal
from urllib.parse import urlsplit

from temporalio import workflow
from temporalio.workflow import ParentClosePolicy

from workflows.steps import deliver_completed

with workflow.unsafe.imports_passed_through():
    from replicant.contracts import (
        ActivityName,
        CompletedWebhook,
        TrainingWebhook,
        WebhookDelivery,
        webhook_workflow_id,
    )


@workflow.defn(name="WebhookDeliveryWorkflow")
class WebhookDeliveryWorkflow:
    """One run's `completed` webhook, until delivered or given up."""

    @workflow.run
    async def run(self, job: CompletedWebhook) -> None:
        delivery: Any
        if job.kind == "prediction":
            activity_name = ActivityName.SEND_WEBHOOK
            delivery = WebhookDelivery(prediction_id=job.id, event="completed", timeout=job.timeout)
        else:
            activity_name = ActivityName.SEND_TRAINING_WEBHOOK
            delivery = TrainingWebhook(training_id=job.id, event="completed", timeout=job.timeout)
        await deliver_completed(
            activity_name,
            delivery,
            attempt_timeout=job.timeout,
            retry_period=job.retry_period,
            max_interval=job.max_interval,
            subject=job.id,
            summary=f"deliver completed webhook to {job.host}",
        )


def host_of(url: str) -> str:
    """The host a webhook URL names (no path, query or credentials: they may be secret)."""
    return urlsplit(url).hostname or "?"


async def start_delivery(kind: Literal["prediction", "training"], req: Any) -> None:
    """Start the workflow that delivers ``req``'s `completed` webhook (a prediction's or a
    training's request: its webhook and limits); it outlives the caller's workflow."""
    host = host_of(req.webhook)
    job = CompletedWebhook(
        kind=kind,
        id=req.id,
        host=host,
        timeout=req.webhook_timeout,
        retry_period=req.webhook_retry_period,
        max_interval=req.webhook_retry_max_interval,
    )
    await workflow.start_child_workflow(
        WebhookDeliveryWorkflow.run,
        job,
        id=webhook_workflow_id(req.id),
        task_queue=req.side_queue or workflow.info().task_queue,
        parent_close_policy=ParentClosePolicy.ABANDON,
        static_summary=f"completed webhook of {kind} {req.id} to {host}",
    )
