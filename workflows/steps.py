"""Deterministic pieces shared by PredictionWorkflow and TrainingWorkflow.

Only temporalio, the standard library and replicant.contracts are imported here, as in
every workflow module.
"""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from temporalio import workflow
from temporalio.common import (
    RetryPolicy,
    SearchAttributeKey,
    SearchAttributePair,
    TypedSearchAttributes,
)
from temporalio.exceptions import ActivityError, ApplicationError, TimeoutError

with workflow.unsafe.imports_passed_through():
    from replicant.contracts import StagedInputs, Status, WebhookResult

MODEL_ATTR = SearchAttributeKey.for_keyword("ReplicantModel")
VERSION_ATTR = SearchAttributeKey.for_keyword("ReplicantVersion")
STATUS_ATTR = SearchAttributeKey.for_keyword("ReplicantStatus")
OWNER_ATTR = SearchAttributeKey.for_keyword("ReplicantOwner")

RUN_ATTEMPTS = 3
# Time allowed to boot a model process on top of the run's own timeout.
BOOT_ALLOWANCE = timedelta(minutes=10)
LOCAL = timedelta(seconds=30)
# Staging fetches each input URL within its own time cap; this bounds the whole step.
STAGE_TIMEOUT = timedelta(minutes=15)
FILE_SCHEMES = ("http://", "https://", "data:")
# Backoff of the `completed` webhook: 1 s, doubling, at most the request's
# `webhook_retry_max_interval` apart (2 minutes by default).
WEBHOOK_FIRST_RETRY = timedelta(seconds=1)


def search_attributes(
    model: str, version: str, owner: str, status: Status = "starting"
) -> TypedSearchAttributes:
    """The attributes that make a prediction or training findable in the Temporal UI."""
    return TypedSearchAttributes(
        [
            SearchAttributePair(MODEL_ATTR, model),
            SearchAttributePair(VERSION_ATTR, version),
            SearchAttributePair(STATUS_ATTR, status),
            SearchAttributePair(OWNER_ATTR, owner),
        ]
    )


async def deliver_completed(
    activity_name: str,
    delivery: Any,
    *,
    attempt_timeout: float,
    retry_period: float,
    max_interval: float,
    subject: str,
    task_queue: str | None = None,
    summary: str | None = None,
) -> None:
    """Deliver a `completed` webhook until a 2xx or the retry period is over, waiting at
    most ``max_interval`` seconds between attempts; one activity per attempt, so each
    attempt and the receiver's answer are in the history."""
    deadline = workflow.now() + timedelta(seconds=retry_period)
    max_backoff = timedelta(seconds=max_interval)
    delay = min(WEBHOOK_FIRST_RETRY, max_backoff)
    while True:
        try:
            await workflow.execute_activity(
                activity_name,
                delivery,
                result_type=WebhookResult,
                task_queue=task_queue,
                start_to_close_timeout=timedelta(seconds=attempt_timeout) + LOCAL,
                retry_policy=RetryPolicy(maximum_attempts=1),
                summary=summary,
            )
            return
        except ActivityError as err:
            if isinstance(err.cause, ApplicationError) and err.cause.non_retryable:
                return
        if workflow.now() + delay > deadline:
            workflow.logger.warning("webhook retry period over for %s", subject)
            return
        await workflow.sleep(delay)
        delay = min(delay * 2, max_backoff)


def may_hold_files(value: object) -> bool:
    """Whether an input holds URLs or data URIs that staging must fetch or store."""
    if isinstance(value, str):
        return value[:8].lower().startswith(FILE_SCHEMES)
    if isinstance(value, dict):
        return any(may_hold_files(v) for v in value.values())
    if isinstance(value, list):
        return any(may_hold_files(v) for v in value)
    return False


async def stage(activity_name: str, req: Any, task_queue: str | None = None) -> StagedInputs | str:
    """The request's staged input files, or the reason one could not be staged."""
    try:
        staged: StagedInputs = await workflow.execute_activity(
            activity_name,
            req,
            result_type=StagedInputs,
            task_queue=task_queue,
            start_to_close_timeout=STAGE_TIMEOUT,
            retry_policy=RetryPolicy(maximum_attempts=3),
            summary="stage the input files",
        )
    except ActivityError as err:
        cause = err.cause
        return cause.message if isinstance(cause, ApplicationError) else str(err)
    return staged


def start_run(
    activity_name: str, req: Any, result_type: type[Any], non_retryable: list[str]
) -> workflow.ActivityHandle[Any]:
    """The run on the request's hardware queue: heartbeats notice a lost worker in seconds
    and deliver cancellation; `canceled` is recorded by the workflow at once (TRY_CANCEL),
    and the activity's late writes cannot overwrite a terminal state.

    A request with ``local_run`` (a run expected to be short, whose workflow runs on that
    queue) runs in the workflow's own task instead, as a local activity: no activity task
    to schedule, dispatch and complete through Temporal, one workflow task instead of two.
    Its worker's workflow task heartbeats while it runs: a lost worker's task times out
    and the next worker runs it again, and a cancel reaches it at the next heartbeat."""
    # The same run either way: its time, its attempts, and a cancel recorded at once.
    run: dict[str, Any] = {
        "result_type": result_type,
        "start_to_close_timeout": timedelta(seconds=req.timeout) + BOOT_ALLOWANCE,
        "retry_policy": RetryPolicy(
            maximum_attempts=RUN_ATTEMPTS, non_retryable_error_types=non_retryable
        ),
        "cancellation_type": workflow.ActivityCancellationType.TRY_CANCEL,
    }
    summary = f"run {req.model} on {req.hardware}"
    if getattr(req, "local_run", False):
        return workflow.start_local_activity(
            activity_name, req, summary=f"{summary} (in the workflow's task)", **run
        )
    return workflow.start_activity(
        activity_name,
        req,
        task_queue=req.task_queue or f"replicant-hw-{req.hardware}",
        heartbeat_timeout=timedelta(seconds=req.heartbeat_timeout),
        summary=summary,
        **run,
    )


def failure_message(kind: str, err: ActivityError, non_retryable: list[str]) -> str:
    """A clear, user-facing reason for a run (``kind``: "Prediction", "Training") that ended
    in an activity failure."""
    cause = err.cause
    if isinstance(cause, TimeoutError):
        return (
            f"{kind} failed: the worker running it stopped responding "
            f"and {RUN_ATTEMPTS} attempts did not complete"
        )
    if isinstance(cause, ApplicationError):
        if cause.type in non_retryable:
            return cause.message
        return f"{kind} failed after {RUN_ATTEMPTS} attempts: {cause.message}"
    return f"{kind} failed: {cause or err}"
