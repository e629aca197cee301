"""BuildVersionWorkflow: the durable build of one pushed version.

build the version on the build queue (the activity fetches the pushed archive from the object
store, builds the Python environment, derives the schema, records the version, and appends
its log to the ``build`` row the API tails) -> if the activity could not finish (its worker
died more than ``BUILD_ATTEMPTS`` times, or it timed out), mark the build failed.

The API only starts this workflow and reads the row, so a push outlives the API process
that received it.
"""

from __future__ import annotations

from datetime import timedelta

from temporalio import workflow
from temporalio.common import RetryPolicy, TypedSearchAttributes
from temporalio.exceptions import ActivityError, ApplicationError

from workflows import steps
from workflows.runs import CLOSES_AT_END
from workflows.steps import STATUS_ATTR

with workflow.unsafe.imports_passed_through():
    from replicant.contracts import ActivityName, BuildOutcome, BuildRequest, FailBuild

BUILD_ATTEMPTS = 3
FAIL = timedelta(minutes=1)


@workflow.defn(name="BuildVersionWorkflow")
class BuildVersionWorkflow:
    """One push, from its uploaded archive to a version (or a build failure)."""

    def __init__(self) -> None:
        self._status = "starting"

    @workflow.run
    async def run(self, req: BuildRequest) -> BuildOutcome:
        closes = workflow.patched(CLOSES_AT_END)
        outcome = await self._build(req)
        self._status = outcome.status
        workflow.upsert_search_attributes([STATUS_ATTR.value_set(outcome.status)])
        if closes and outcome.status == "failed":
            raise ApplicationError(
                outcome.error or "The build failed", type="BuildFailed", non_retryable=True
            )
        return outcome

    @workflow.signal
    def started(self) -> None:
        """A worker took the build (its row says ``processing``)."""
        if self._status == "starting":
            self._status = "processing"
            workflow.upsert_search_attributes([STATUS_ATTR.value_set("processing")])

    @workflow.query
    def status(self) -> str:
        return self._status

    async def _build(self, req: BuildRequest) -> BuildOutcome:
        try:
            outcome: BuildOutcome = await workflow.execute_activity(
                ActivityName.BUILD_VERSION,
                req,
                result_type=BuildOutcome,
                start_to_close_timeout=timedelta(seconds=req.timeout),
                heartbeat_timeout=timedelta(seconds=req.heartbeat_timeout),
                retry_policy=RetryPolicy(maximum_attempts=BUILD_ATTEMPTS),
                summary=f"build {req.model} version {req.version[:12]}",
            )
        except ActivityError as err:
            message = (
                f"The build did not finish after {BUILD_ATTEMPTS} attempts: {err.cause or err}"
            )
            await workflow.execute_activity(
                ActivityName.FAIL_BUILD,
                FailBuild(build_id=req.id, archive_key=req.archive_key, message=message),
                start_to_close_timeout=FAIL,
            )
            outcome = BuildOutcome(status="failed", error=message)
        return outcome


def search_attributes(req: BuildRequest) -> TypedSearchAttributes:
    """The attributes that make a build findable in the Temporal UI (by model, version, owner)."""
    return steps.search_attributes(req.model, req.version, req.owner, "starting")
