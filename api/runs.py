"""The create pipeline of everything that runs a model: a prediction or a training (a
deployment's prediction is a prediction placed on its deployment's queue).

    replay (a retry with an Idempotency-Key answers the first request's run)
    -> prepare the input: validate, seal ``Secret`` inputs, store data URIs and long texts,
       in one pass over the version's input facts (replicant/inputfacts.py)
    -> record the row, with its Idempotency-Key, in one transaction
    -> start the workflow, exactly as recorded
    -> settle a start whose answer was lost (api/startguard.py)

A kind (``RunKind``) brings only what is its own: its table, its workflow and queue, its
input component, how its row is written. The routes keep what is theirs: ``Prefer: wait``
(api/launch.py), a training's destination (api/routes/trainings.py).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Generic, Literal, TypeVar, cast

from sqlalchemy import insert
from sqlalchemy.engine import Connection
from temporalio.client import (
    WithStartWorkflowOperation,
    WorkflowHandle,
    WorkflowUpdateHandle,
    WorkflowUpdateStage,
)
from temporalio.common import WorkflowIDConflictPolicy, WorkflowIDReusePolicy
from temporalio.exceptions import WorkflowAlreadyStartedError

from api.errors import ProblemError, invalid
from api.idempotency import Claim, KeyTaken, record_claim, replayed
from api.inputfiles import discard_input_files, store_input_files
from api.startguard import START_RPC_TIMEOUT, settle_start, start_deadline, start_failed
from api.state import AppState
from replicant import readmodel
from replicant.contracts import (
    PredictionRequest,
    StagedFile,
    TrainingRequest,
    WaitResult,
    workflow_id,
)
from replicant.fairness import task_priority
from replicant.inputfacts import input_facts
from replicant.netguard import BlockedURL, check_target
from replicant.objectkeys import prediction_inputs, training_inputs
from replicant.sealing import Sealer
from replicant.settings import Settings
from replicant.summaries import run_details, run_summary
from replicant.tables import Model, Prediction, Training, Version
from replicant.trainings import training_from_request
from workflows.prediction import PredictionWorkflow
from workflows.steps import search_attributes
from workflows.training import TrainingWorkflow

TRAINING_COLUMNS = list(Training.__table__.columns)  # type: ignore[attr-defined]

log = logging.getLogger("replicant.api")


R = TypeVar("R", PredictionRequest, TrainingRequest)


@dataclass(frozen=True)
class RunKind(Generic[R]):
    """What one kind of run brings to the pipeline."""

    name: Literal["prediction", "training"]
    component: str  # the input component of the version's schema
    table: type[Prediction] | type[Training]
    request: type[R]
    workflow: Callable[..., Awaitable[Any]]  # the workflow's run method
    inputs_prefix: Callable[[str], str]
    # Where the workflow runs.
    queue: Callable[[Settings, R], str]
    # Writes the row in the create's transaction (after its Idempotency-Key's).
    write_row: Callable[[Connection, R], None]
    # The priority key within an account's turn (a deployment's), if any.
    priority_key: Callable[[R], int | None] = lambda _: None

    def workflow_id(self, run_id: str) -> str:
        return workflow_id(self.name, run_id)


def _prediction_queue(settings: Settings, req: PredictionRequest) -> str:
    # The workflow runs on its hardware's queue, so its worker runs the model at once
    # (Temporal's eager activity dispatch); its other activities go to ``side_queue``.
    # A deployment's instances serve runs only: its workflow runs on the orchestration queue.
    if req.task_queue is None:
        return settings.task_queue(req.hardware)
    return settings.orchestration_queue


def _write_training(conn: Connection, req: TrainingRequest) -> None:
    row = training_from_request(req)
    conn.execute(insert(Training), {c.name: getattr(row, c.name) for c in TRAINING_COLUMNS})


PREDICTION: RunKind[PredictionRequest] = RunKind(
    name="prediction",
    component="Input",
    table=Prediction,
    request=PredictionRequest,
    workflow=PredictionWorkflow.run,
    inputs_prefix=prediction_inputs,
    queue=_prediction_queue,
    write_row=readmodel.record_new_prediction,
    priority_key=lambda req: req.priority_key,
)


TRAINING: RunKind[TrainingRequest] = RunKind(
    name="training",
    component="TrainingInput",
    table=Training,
    request=TrainingRequest,
    workflow=TrainingWorkflow.run,
    inputs_prefix=training_inputs,
    # Its run activity goes to the hardware queue; the rest needs no hardware worker.
    queue=lambda settings, _: settings.orchestration_queue,
    write_row=_write_training,
)


def check_webhook(url: str, allow_private: bool) -> None:
    """422 unless ``url`` is an http(s) URL Replicant may call (names resolve at delivery)."""
    try:
        check_target(url, allow_private)
    except BlockedURL as err:
        raise invalid([{"field": "webhook", "message": str(err)}]) from None


def check_hardware(offered: dict[str, int], hardware: str, model: Model) -> None:
    """503 when no worker of this installation serves ``hardware`` (no queue would ever take
    the prediction: it would wait in ``starting`` forever)."""
    if hardware not in offered:
        raise ProblemError(
            503,
            f"Model {model.owner}/{model.name} runs on hardware {hardware!r}, which this "
            f"installation does not offer ({', '.join(offered)}); the model's owner can "
            "change its hardware",
        )


@dataclass(frozen=True)
class PreparedRun:
    """A create's input, ready: what the workflow carries (``Secret`` inputs sealed, files
    stored), what the read model keeps (``Secret`` inputs redacted), the files stored."""

    workflow_input: dict[str, Any]
    shown_input: dict[str, Any]
    staged_files: list[StagedFile]


@dataclass(frozen=True)
class Runs(Generic[R]):
    """The create steps of one kind of run, bound to the app state."""

    state: AppState
    kind: RunKind[R]

    async def replay(self, claim: Claim) -> Any | None:
        """The row a retry with ``claim`` answers (None: the key is unused: create)."""

        async def start(kept: dict[str, Any]) -> object:
            return await self.start(self.kind.request.model_validate(kept))

        return await replayed(self.state, claim, self.kind.table, start)

    def check(self, webhook: str | None, model: Model, hardware: str) -> None:
        """422 for a webhook Replicant may not call; 503 for hardware nobody serves."""
        settings = self.state.settings
        if webhook is not None:
            check_webhook(webhook, settings.allow_private_urls)
        check_hardware(settings.hardware, hardware, model)

    async def prepare(self, version: Version, payload: dict[str, Any], run_id: str) -> PreparedRun:
        """Validate (422 naming the fields), seal and store the input of run ``run_id``.
        ``KeyError`` when the version's schema has no input component of this kind."""
        facts = input_facts(version.id, version.openapi_schema, self.kind.component)
        sealer = Sealer(self.state.secret_key, run_id, version.id)
        prepared = facts.prepare(payload, sealer.seal_value)
        if prepared.problems:
            raise invalid([e.model_dump() for e in prepared.problems])
        workflow_input, stored = await store_input_files(
            self.state, prepared, self.kind.inputs_prefix(run_id)
        )
        return PreparedRun(workflow_input, prepared.redacted, stored)

    async def record(self, req: R, shown_input: dict[str, Any], claim: Claim | None) -> Any:
        """Write the run's row (its input as shown, ``shown_input``) and its key's in one
        transaction, the key's keeping ``req`` as it will start: None. When the key was
        taken meanwhile, the row of the request that took it (this create's stored files
        are removed); 409 when that request failed meanwhile."""
        row_req = req.model_copy(update={"input": shown_input})
        kept = claim.with_request(req) if claim is not None else None
        try:
            await self.state.db.transaction(_record, self.kind, row_req, kept)
        except KeyTaken:
            if req.staged_files:
                await discard_input_files(self.state, self.kind.inputs_prefix(req.id))
            assert claim is not None
            taken = await self.replay(claim)
            if taken is None:
                raise ProblemError(
                    409, "A request with this Idempotency-Key failed meanwhile; retry"
                ) from None
            return taken
        return None

    def _options(self, req: R) -> dict[str, Any]:
        return {
            "id": self.kind.workflow_id(req.id),
            "task_queue": self.kind.queue(self.state.settings, req),
            "search_attributes": search_attributes(req.model, req.version, req.owner),
            # Waiting for a hardware slot, accounts take turns (weighted): replicant/fairness.py.
            "priority": task_priority(req.owner, req.fairness_weight, self.kind.priority_key(req)),
            # A second start under this id (api/startguard.py) never runs the model twice.
            "id_reuse_policy": WorkflowIDReusePolicy.REJECT_DUPLICATE,
            # What the Temporal UI shows at a glance (Secret inputs are sealed by now).
            "static_summary": run_summary(self.kind.name, req.model, req.hardware, req.owner),
            "static_details": run_details(
                self.kind.name, req.id, req.model, req.version, req.hardware, req.owner, req.input
            ),
        }

    async def start(self, req: R) -> WorkflowHandle[Any, Any]:
        """Start the run's workflow with ``req`` as it was recorded."""
        client = await self.state.temporal()
        return await client.start_workflow(
            self.kind.workflow, req, rpc_timeout=START_RPC_TIMEOUT, **self._options(req)
        )

    async def start_waiting(self, req: R) -> WorkflowUpdateHandle[WaitResult]:
        """Start a prediction's workflow with its ``wait_done`` update in one call
        (update-with-start), so a waiting create needs no poll."""
        client = await self.state.temporal()
        start = WithStartWorkflowOperation(
            self.kind.workflow,
            req,
            id_conflict_policy=WorkflowIDConflictPolicy.FAIL,
            **self._options(req),
        )
        try:
            waited: WorkflowUpdateHandle[
                WaitResult
            ] = await client.start_update_with_start_workflow(
                PredictionWorkflow.wait_done,
                start_workflow_operation=cast(Any, start),
                wait_for_stage=WorkflowUpdateStage.ACCEPTED,
                rpc_timeout=START_RPC_TIMEOUT,
            )
        except BaseException:
            # The operation keeps the failure for its handle too, which nobody awaits here:
            # seen, asyncio does not log it as an exception never retrieved.
            kept = start._workflow_handle
            if kept.done() and not kept.cancelled():
                kept.exception()
            raise
        return waited

    async def launch(
        self, req: R, wait_until: float | None = None
    ) -> WorkflowHandle[Any, Any] | WorkflowUpdateHandle[WaitResult] | None:
        """Start the recorded run and settle a start whose outcome is unknown; the start's
        handle, or None when the workflow was started otherwise (a retry with its key, or the
        settled start). 503 when Temporal cannot be reached: the row (and its key) stay for a
        retry or the reconciler.

        ``wait_until`` (the event loop's time; a waiting create's deadline): start with the
        update the create holds on, and return by then whatever Temporal does (None when the
        start has not been answered): the start's acceptance needs the workflow's first task,
        which waits for a worker of the queue. A start cut short by the deadline is settled
        after the create has answered, so the run starts exactly once all the same."""
        if wait_until is None:
            return await self._launch(req, None)
        launching = self.state.keep(self._launch(req, wait_until), f"start of {req.id}")
        try:
            async with asyncio.timeout_at(wait_until):
                return await asyncio.shield(launching)
        except TimeoutError:
            return None

    async def _launch(
        self, req: R, wait_until: float | None
    ) -> WorkflowHandle[Any, Any] | WorkflowUpdateHandle[WaitResult] | None:
        try:
            if wait_until is None:
                return await self.start(req)
            async with asyncio.timeout_at(wait_until):
                return await self.start_waiting(req)
        except WorkflowAlreadyStartedError:
            return None  # a retry with this Idempotency-Key started it first
        except Exception as err:
            if wait_until is not None and asyncio.get_running_loop().time() >= wait_until:
                log.info("event=start_outlasted_wait %s=%s", self.kind.name, req.id)
            assert req.created_at is not None
            settled = await settle_start(
                await self.state.temporal(),
                self.kind.workflow_id(req.id),
                lambda: self.start(req),
                retry_before=start_deadline(req.created_at, self.state.settings.start_grace),
            )
            if not settled:
                raise start_failed(self.kind.name, req.id, err) from err
            return None


def _record(conn: Connection, kind: RunKind[R], req: R, claim: Claim | None) -> None:
    """The run's row and its Idempotency-Key's row in one transaction."""
    if claim is not None:  # first: a key in use fails before anything is written
        record_claim(conn, claim, req.id)
    kind.write_row(conn, req)
