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
from temporalio.exceptions import ActivityError, ApplicationError

with workflow.unsafe.imports_passed_through():
    from replicant.contracts import Status, WebhookResult

MODEL_ATTR = SearchAttributeKey.for_keyword("ReplicantModel")
VERSION_ATTR = SearchAttributeKey.for_keyword("ReplicantVersion")
STATUS_ATTR = SearchAttributeKey.for_keyword("ReplicantStatus")
OWNER_ATTR = SearchAttributeKey.for_keyword("ReplicantOwner")

RUN_ATTEMPTS = 3
# Time allowed to boot a model process on top of the run's own timeout.
BOOT_ALLOWANCE = timedelta(minutes=10)
LOCAL = timedelta(seconds=30)
# Backoff of the `completed` webhook: 1 s, doubling, at most 2 minutes apart.
WEBHOOK_FIRST_RETRY = timedelta(seconds=1)
WEBHOOK_MAX_BACKOFF = timedelta(minutes=2)


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
    activity_name: str, delivery: Any, *, attempt_timeout: float, retry_period: float, subject: str
) -> None:
    """Deliver a `completed` webhook until a 2xx or the retry period is over; one activity
    per attempt, so each attempt and the receiver's answer are in the history."""
    deadline = workflow.now() + timedelta(seconds=retry_period)
    delay = WEBHOOK_FIRST_RETRY
    while True:
        try:
            await workflow.execute_activity(
                activity_name,
                delivery,
                result_type=WebhookResult,
                start_to_close_timeout=timedelta(seconds=attempt_timeout) + LOCAL,
                retry_policy=RetryPolicy(maximum_attempts=1),
            )
            return
        except ActivityError as err:
            if isinstance(err.cause, ApplicationError) and err.cause.non_retryable:
                return
        if workflow.now() + delay > deadline:
            workflow.logger.warning("webhook retry period over for %s", subject)
            return
        await workflow.sleep(delay)
        delay = min(delay * 2, WEBHOOK_MAX_BACKOFF)
