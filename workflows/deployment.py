"""DeploymentWorkflow: the controller that owns a deployment's instances, for its whole life.

Every ``check_interval`` (or at once when woken by a new prediction or a new release) it reads
the deployment's demand from the read model (a local activity) and tells the host of its
instances how many to run (``ensure_instances``):

- at least ``min_instances``, at most ``max_instances``;
- one instance per ``concurrency`` predictions waiting or running, scaling up at once;
- down to what demand needs (zero when ``min_instances`` is 0) only after ``idle_timeout``
  seconds of lower demand;
- none on shared hardware (an operator's choice): its predictions run on the hardware's
  shared queue, and instances remain only for those queued on its own queue before;
- none at all once its owner may no longer run its model (made private or deleted by
  another account, or the owner lost access): they stop at the next check, and the
  predictions still waiting on its queue are canceled (as when it is deleted).

All of a deployment's instances live on one host (a worker process), reached through that
host's own control queue; a host that stops answering (restarted, gone) is replaced through
the hardware's shared host queue, and the new host rebuilds the instances from this
workflow's desired state. A new release (version or hardware) makes the host start new
instances and drain the old ones, which finish their running predictions first.
The history stays short: the loop continues as new when Temporal suggests it.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
from datetime import datetime, timedelta

from temporalio import workflow
from temporalio.common import RetryPolicy
from temporalio.exceptions import ActivityError, TimeoutType
from temporalio.exceptions import TimeoutError as ActivityTimeout

with workflow.unsafe.imports_passed_through():
    from replicant.contracts import (
        ActivityName,
        DeploymentConfig,
        DeploymentObservation,
        DeploymentState,
        HostReport,
        InstanceTarget,
        ObserveDeployment,
        deployment_workflow_id,
        prediction_workflow_id,
    )

LOCAL = timedelta(seconds=30)
# A deployment with no instances and no demand is woken by its next prediction; this long
# timer only re-checks that it still exists.
IDLE_CHECK = timedelta(minutes=10)
# The workflow.patched() id under which a wake is cleared before each observation rather than
# after it: a prediction that arrived while the controller observed (and saw no demand yet)
# was lost, and a quiet deployment then slept IDLE_CHECK before serving it.
KEEPS_WAKE = "keeps-wake"
# A pinned host that does not pick up a control task within this time is presumed gone.
HOST_ANSWER = timedelta(seconds=10)
# The hardware's shared host queue: waiting longer means no worker serves that hardware yet.
ANY_HOST_ANSWER = timedelta(minutes=1)
MAX_HISTORY = 5000
# The workflow.patched() id under which the controller cancels the predictions waiting on its
# queue once it stops serving (not runnable, or deleted).
ENDS_STRANDED = "ends-stranded"


def workflow_id(config: DeploymentConfig) -> str:
    """One controller per deployment; the row id keeps a re-created name apart."""
    return deployment_workflow_id(config)


def host_queue_for(hardware: str) -> str:
    """The queue every host serving ``hardware`` polls, to take on a new deployment."""
    return f"replicant-deployhost-{hardware}"


def desired_instances(current: int, demand: int, config: DeploymentConfig, concurrency: int) -> int:
    """Instances that serve ``demand`` within the release's bounds."""
    need = math.ceil(demand / max(concurrency, 1))
    return max(config.min_instances, min(config.max_instances, need))


@workflow.defn(name="DeploymentWorkflow")
class DeploymentWorkflow:
    """The controller of one deployment's instances."""

    @workflow.init
    def __init__(self, state: DeploymentState) -> None:
        # Set before any handler runs: update-with-start delivers the update first.
        self._state = state
        self._woken = False
        self._settled = False  # the host reported exactly the instances asked for

    @workflow.run
    async def run(self, state: DeploymentState) -> None:
        state = self._state
        while True:
            keeps_wake = workflow.patched(KEEPS_WAKE)
            if keeps_wake:
                # A wake from here on (during the observation too) makes the next check now.
                self._woken = False
            observed = await workflow.execute_local_activity(
                ActivityName.OBSERVE_DEPLOYMENT,
                ObserveDeployment(
                    deployment_id=state.config.deployment_id,
                    owner=state.config.owner,
                    name=state.config.name,
                    busy=state.instances > 0 or not self._settled,
                ),
                result_type=DeploymentObservation,
                start_to_close_timeout=LOCAL,
            )
            if not observed.exists or state.retired:
                await self._stop_all(state)
                if observed.stranded and workflow.patched(ENDS_STRANDED):
                    await self._cancel_stranded(observed.stranded)
                return
            if observed.config is not None and observed.config.release > state.config.release:
                state.config = observed.config
            demand = observed.waiting + observed.running
            if not observed.runnable and workflow.patched("stops-unrunnable"):
                # Its owner may no longer run the model: no instance, whatever the release,
                # and its predictions still waiting end canceled.
                state.idle_since = None
                target = 0
                if observed.stranded and workflow.patched(ENDS_STRANDED):
                    await self._cancel_stranded(observed.stranded)
            elif observed.shared_hardware and workflow.patched("shared-hardware"):
                # New predictions run on the hardware's shared queue: instances serve only
                # those already queued on the deployment's own, and stop once they are done.
                state.idle_since = None
                config = state.config.model_copy(update={"min_instances": 0})
                target = desired_instances(state.instances, demand, config, state.concurrency)
            else:
                target = self._scale(state, demand, workflow.now())
            if target > 0 or state.instances > 0 or not self._settled:
                await self._ensure(state, target)
            quiet = state.instances == 0 and demand == 0 and self._settled
            if not keeps_wake:
                self._woken = False
            interval = IDLE_CHECK if quiet else timedelta(seconds=state.check_interval)
            with contextlib.suppress(TimeoutError):
                await workflow.wait_condition(lambda: self._woken, timeout=interval)
            info = workflow.info()
            if info.is_continue_as_new_suggested() or info.get_current_history_length() > (
                MAX_HISTORY
            ):
                await workflow.wait_condition(workflow.all_handlers_finished)
                workflow.continue_as_new(state)

    def _scale(self, state: DeploymentState, demand: int, now: datetime) -> int:
        """The instance count to ask for now; scale-down waits for the idle period."""
        config = state.config
        wanted = desired_instances(state.instances, demand, config, state.concurrency)
        if wanted >= state.instances or state.instances > config.max_instances:
            state.idle_since = None
            return wanted
        if state.idle_since is None:
            state.idle_since = now
        if now - state.idle_since >= timedelta(seconds=state.idle_timeout):
            state.idle_since = None
            return wanted
        return state.instances

    async def _ensure(self, state: DeploymentState, count: int) -> None:
        target = InstanceTarget(
            config=state.config,
            task_queue=state.task_queue,
            count=count,
            concurrency=state.concurrency,
            drain_timeout=state.drain_timeout,
        )
        queue = state.host_queue
        if queue is not None and state.host_hardware != state.config.hardware:
            # New hardware: the old host drains, a host of the new hardware takes over.
            await self._call_host(queue, target.model_copy(update={"count": 0}), HOST_ANSWER)
            queue = None
        if queue is not None:
            report = await self._call_host(queue, target, HOST_ANSWER)
            if report is None:
                workflow.logger.warning("deployment host gone: %s", queue)
                queue = None
        if queue is None:
            report = await self._call_host(
                host_queue_for(state.config.hardware), target, ANY_HOST_ANSWER
            )
        if report is None:
            return
        state.host_queue = report.host_queue
        state.host_hardware = state.config.hardware
        state.instances = count
        self._settled = report.ready + report.booting == count and report.draining == 0

    async def _call_host(
        self, queue: str, target: InstanceTarget, answer_within: timedelta
    ) -> HostReport | None:
        try:
            report: HostReport = await workflow.execute_activity(
                ActivityName.ENSURE_INSTANCES,
                target,
                result_type=HostReport,
                task_queue=queue,
                schedule_to_start_timeout=answer_within,
                start_to_close_timeout=timedelta(seconds=60),
                retry_policy=RetryPolicy(maximum_attempts=3),
            )
            return report
        except ActivityError as err:
            if isinstance(err.cause, ActivityTimeout) and err.cause.type in (
                TimeoutType.SCHEDULE_TO_START,
                TimeoutType.START_TO_CLOSE,
            ):
                return None
            workflow.logger.warning("ensure_instances failed: %s", err.cause or err)
            return None

    async def _cancel_stranded(self, prediction_ids: list[str]) -> None:
        """Cancel predictions waiting on the queue of a deployment that stopped serving, as
        the API's cancel does (through Temporal): each ends ``canceled`` in the read model
        and in Temporal, with its webhook. One already ended, or whose workflow has not
        started yet, is left (the next check, or the start reconciler, ends it)."""

        async def cancel(prediction_id: str) -> None:
            handle = workflow.get_external_workflow_handle(prediction_workflow_id(prediction_id))
            try:
                await handle.cancel()
            except Exception as err:
                workflow.logger.info("stranded prediction %s not canceled: %s", prediction_id, err)
                return
            # Workflows started before they closed at the run's end act on the signal.
            with contextlib.suppress(Exception):
                await handle.signal("cancel")

        workflow.logger.info("canceling %d stranded predictions", len(prediction_ids))
        await asyncio.gather(*(cancel(p) for p in prediction_ids))

    async def _stop_all(self, state: DeploymentState) -> None:
        if state.host_queue is not None:
            target = InstanceTarget(config=state.config, task_queue=state.task_queue, count=0)
            await self._call_host(state.host_queue, target, HOST_ANSWER)
        state.instances = 0

    @workflow.update
    async def apply_release(self, config: DeploymentConfig) -> int:
        """A new release (PATCH): applied at once; returns the release the controller runs."""
        if config.release > self._state.config.release:
            self._state.config = config
        self._woken = True
        return self._state.config.release

    @workflow.signal
    def wake(self) -> None:
        """A prediction arrived (or anything else worth a check now)."""
        self._woken = True

    @workflow.signal
    def retire(self) -> None:
        """The deployment was deleted: stop every instance and end."""
        self._state.retired = True
        self._woken = True

    @workflow.query
    def instances(self) -> int:
        return self._state.instances
