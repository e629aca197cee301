"""WebhookDeliveryWorkflow: a run's ``completed`` webhook, delivered after the run's own
workflow has closed.

A prediction's or training's workflow closes as soon as the run ends; when its webhook wants
``completed``, it starts this workflow (``webhook-<run id>``) on the orchestration queue
through a local activity, in the workflow task that closes it (workflows that started before
patch ``webhook-started-locally`` start it as an abandoned child, which costs the parent one
more workflow task). It is open only while the receiver has not answered with a 2xx:
one activity per attempt, retried for up to the request's retry period.

Only temporalio, the standard library and replicant.contracts are imported here, as in every
workflow module.
"""

from __future__ import annotations

from typing import Any, Literal
from urllib.parse import urlsplit

from temporalio import workflow
from temporalio.workflow import ParentClosePolicy

from workflows.steps import LOCAL, deliver_completed

with workflow.unsafe.imports_passed_through():
    from replicant.contracts import (
        WEBHOOK_DELIVERY_WORKFLOW,
        ActivityName,
        CompletedWebhook,
        TrainingWebhook,
        WebhookDelivery,
        WebhookStart,
        webhook_workflow_id,
    )

# The workflow.patched() id under which a local activity starts the delivery's workflow
# (through the worker's client) rather than a child workflow start: the caller's workflow
# then closes in the same workflow task.
WEBHOOK_STARTED_LOCALLY = "webhook-started-locally"


@workflow.defn(name=WEBHOOK_DELIVERY_WORKFLOW)
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
    training's request: its webhook and limits); it outlives the caller's workflow. A
    replayed or retried start finds it started already: it is started once."""
    host = host_of(req.webhook)
    job = CompletedWebhook(
        kind=kind,
        id=req.id,
        host=host,
        timeout=req.webhook_timeout,
        retry_period=req.webhook_retry_period,
        max_interval=req.webhook_retry_max_interval,
    )
    task_queue = req.side_queue or workflow.info().task_queue
    summary = f"completed webhook of {kind} {req.id} to {host}"
    # A prediction of shape 1 or more (replicant/contracts.py) needs no patch marker.
    if getattr(req, "shape", 0) >= 1 or workflow.patched(WEBHOOK_STARTED_LOCALLY):
        await workflow.execute_local_activity(
            ActivityName.START_WEBHOOK_DELIVERY,
            WebhookStart(job=job, task_queue=task_queue, summary=summary),
            start_to_close_timeout=LOCAL,
            summary=f"start the completed webhook to {host}",
        )
        return
    await workflow.start_child_workflow(
        WebhookDeliveryWorkflow.run,
        job,
        id=webhook_workflow_id(req.id),
        task_queue=task_queue,
        parent_close_policy=ParentClosePolicy.ABANDON,
        static_summary=summary,
    )
