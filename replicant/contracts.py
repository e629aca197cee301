"""The pydantic contracts that cross workflow and activity boundaries.

One argument per workflow and activity, so fields can be added without breaking running
histories. Payloads carry references, never file bytes.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any, Final, Literal

from pydantic import BaseModel, Field

Status = Literal["starting", "processing", "succeeded", "failed", "canceled", "aborted"]
WebhookEvent = Literal["start", "output", "logs", "completed"]

#: Names of the search attributes registered on the Temporal namespace.
SEARCH_ATTRIBUTES: dict[str, str] = {
    "ReplicantModel": "Keyword",
    "ReplicantVersion": "Keyword",
    "ReplicantStatus": "Keyword",
    "ReplicantOwner": "Keyword",
}


RunKindName = Literal["prediction", "training", "build"]


def workflow_id(kind: RunKindName, object_id: str) -> str:
    """The id of the one workflow of a prediction, training or build: ``{kind}-{id}``
    (the reconciler and the Temporal UI find them by it)."""
    return f"{kind}-{object_id}"


def prediction_workflow_id(prediction_id: str) -> str:
    """The id of a prediction's workflow."""
    return workflow_id("prediction", prediction_id)


def training_workflow_id(training_id: str) -> str:
    """The id of a training's workflow."""
    return workflow_id("training", training_id)


def build_workflow_id(build_id: str) -> str:
    """The id of a version build's workflow."""
    return workflow_id("build", build_id)


class StagedFile(BaseModel):
    """An input file in the object store: where it sits in ``input`` and under which key."""

    path: list[str | int]  # ["image"], or ["images", 2] inside a list
    key: str
    filename: str
    # A large text input kept out of Temporal's payloads: the model gets the text, not a path.
    text: bool = False


class StagedInputs(BaseModel):
    """What ``stage_inputs`` reports: the input files it stored (references, not bytes)."""

    files: list[StagedFile] = Field(default_factory=list)


class RunOutcome(BaseModel):
    """What the run activity reports back: the prediction's terminal state."""

    status: Status
    error: str | None = None
    started_at: datetime | None = None
    completed_at: datetime | None = None


# The PredictionRequest.shape the API starts a prediction with: 1 closes the workflow at the
# run's end ("closes-at-end"), stages input files ("stage-inputs"), cancels itself through
# Temporal at a deadline ("deadline-cancels-workflow") and starts the `completed` webhook's
# workflow with a local activity ("webhook-started-locally"), without a patch marker for any.
PREDICTION_SHAPE = 1


class PredictionRequest(BaseModel):
    """Input of ``PredictionWorkflow``: everything needed to run one prediction.

    A program may start the workflow itself with the Temporal client; then ``recorded`` is
    false and the workflow writes the read-model row the API would have written.
    """

    id: str
    owner: str
    model: str
    version: str
    input: dict[str, Any] = Field(default_factory=dict)
    hardware: str = "cpu"
    source: Literal["api", "web"] = "api"
    webhook: str | None = None
    webhook_events_filter: list[WebhookEvent] | None = None
    deployment: str | None = None
    stream: bool = False
    # Cog's per-request context: the model reads it as ``current_scope().context``.
    context: dict[str, str] = Field(default_factory=dict)
    created_at: datetime | None = None
    # ``Cancel-After``: past this time a waiting prediction ends ``aborted``, a running one
    # ``canceled``.
    deadline: datetime | None = None
    # Waiting for a hardware slot: the account's fairness weight and a deployment's priority
    # key (replicant/fairness.py); kept here so a restarted start keeps them.
    fairness_weight: float | None = None
    priority_key: int | None = None
    # Traced (replicant/tracing.py): the id of the trace the API's request began.
    trace_id: str | None = None
    recorded: bool = False
    # Limits, in seconds; the API fills them from settings, programmatic starts may too.
    timeout: float = 1800.0
    retention: float = 3600.0
    heartbeat_timeout: float = 30.0
    # Task queue of the hardware; defaults to the SKU's queue.
    task_queue: str | None = None
    # Where staging, webhooks and data removal run when the workflow itself runs on the
    # hardware queue (they must not take a hardware slot); None: the workflow's own queue.
    side_queue: str | None = None
    # Webhooks: seconds the `completed` event is retried until a 2xx, at most this many
    # seconds apart; seconds per delivery.
    webhook_retry_period: float = 3600.0
    webhook_retry_max_interval: float = 120.0
    webhook_timeout: float = 10.0
    # Input files staged in the object store; the run activity hands them over as local paths.
    staged_files: list[StagedFile] = Field(default_factory=list)
    # Set on the after-life run (continued on the orchestration queue once the run is over):
    # the prediction's terminal state; the run itself is not repeated.
    outcome: RunOutcome | None = None
    # The patches of PredictionWorkflow its starter knew (PREDICTION_SHAPE): the workflow
    # takes them without calling workflow.patched(), whose marker also costs a search
    # attribute (TemporalChangeVersion) written to Temporal's visibility store. 0: an older
    # API's start or a program's: workflow.patched() decides, as before.
    shape: int = 0
    # Run the model in the workflow's own task (a local activity) rather than as an activity
    # task of the hardware queue: set by the API for a run expected to be short
    # (``local_run_seconds``), whose workflow runs on the hardware's shared queue.
    local_run: bool = False


class FinishPrediction(BaseModel):
    """Input of the activity that records a terminal state the run activity could not."""

    id: str
    status: Status
    error: str | None = None
    completed_at: datetime | None = None


class ExpireFiles(BaseModel):
    """Input of ``FileExpiryWorkflow`` and ``remove_expired_files``: one sweep, at most
    ``limit`` files (the next sweep takes the rest)."""

    limit: int = 10000


class ExpiredFiles(BaseModel):
    """What a sweep removed: uploaded files past ``expires_at``, objects and rows; objects of
    managed weights no version refers to any more."""

    removed: int = 0
    weights_removed: int = 0


class ReconcileStarts(BaseModel):
    """Input of ``StartReconcileWorkflow``: settle ``starting`` rows older than
    ``grace`` seconds whose workflow does not exist, and builds as old still running whose
    workflow does not run, at most ``limit`` rows of each kind a run, asking Temporal about
    at most ``asks`` workflows of each kind a run (rows whose workflow a pass has already
    found are not asked about again; the rest wait for the next passes). Each kind's rows
    are gone over in id order from just after ``after[kind]`` (the id where the last run
    stopped; none: the lowest), wrapping around to the lowest."""

    grace: float = 60.0
    limit: int = 100_000
    asks: int = 200
    after: dict[str, str] = {}


class ReconciledStarts(BaseModel):
    """What a reconcile run found: rows checked, workflows asked about, rows failed for
    want of a workflow, and by kind the id of the last row it went over (where the next run
    goes on)."""

    checked: int = 0
    asked: int = 0
    failed: list[str] = []
    after: dict[str, str] = {}


class SweepRetention(BaseModel):
    """Input of ``RetentionSweepWorkflow``: remove the data of API predictions that ended
    more than ``retention`` + ``grace`` seconds ago and still hold it (their workflow was
    terminated or reset, so its own removal never ran); at most ``limit`` a sweep."""

    retention: float
    grace: float = 0.0
    limit: int = 10000
    # A prediction with a webhook keeps its data until its `completed` delivery is over (the
    # body is the final prediction): at least this many seconds after it ended.
    webhook_hold: float = 0.0


class SweptPredictions(BaseModel):
    """What a retention sweep removed: the data of that many predictions."""

    removed: int = 0


class PredictionRef(BaseModel):
    """A prediction by id (retention, lookups)."""

    id: str


class WorkflowRun(BaseModel):
    """One run of a workflow: the one a cancel request is for."""

    workflow_id: str
    run_id: str


class WebhookDelivery(BaseModel):
    """Input of ``send_webhook``: one event of a prediction, to the prediction's webhook."""

    prediction_id: str
    event: WebhookEvent
    sequence: int = 0  # tells apart events of one kind; the same for retries of one event
    timeout: float = 10.0


class CompletedWebhook(BaseModel):
    """Input of ``WebhookDeliveryWorkflow``: deliver one run's ``completed`` webhook (retried
    until a 2xx or ``retry_period`` is over) after its own workflow has closed."""

    kind: Literal["prediction", "training"]
    id: str
    host: str  # the receiver's host, named in the activities' summaries
    timeout: float = 10.0
    retry_period: float = 3600.0
    max_interval: float = 120.0


class WebhookStart(BaseModel):
    """Input of ``start_webhook_delivery``: start the workflow that delivers ``job`` on
    ``task_queue``, with ``summary`` for the Temporal UI."""

    job: CompletedWebhook
    task_queue: str
    summary: str


# The type name ``WebhookDeliveryWorkflow`` registers under (histories record it).
WEBHOOK_DELIVERY_WORKFLOW: Final = "WebhookDeliveryWorkflow"


def webhook_workflow_id(run_id: str) -> str:
    """The id of the workflow that delivers a run's ``completed`` webhook."""
    return f"webhook-{run_id}"


class WebhookResult(BaseModel):
    """What the receiver answered (kept in the workflow's history)."""

    status_code: int


class WaitResult(BaseModel):
    """Answer of the ``wait_done`` update: the status once terminal."""

    status: Status


# -- deployments ---------------------------------------------------------------------------


class DeploymentConfig(BaseModel):
    """One release of a deployment, as its controller and the hosts of its instances see it."""

    deployment_id: int
    owner: str
    name: str
    release: int
    model: str
    version: str
    hardware: str
    min_instances: int
    max_instances: int


def deployment_workflow_id(config: DeploymentConfig) -> str:
    """The id of a deployment's controller: one per deployment; the row id keeps a
    re-created name apart."""
    return f"deployment-{config.owner}/{config.name}-{config.deployment_id}"


class DeploymentState(BaseModel):
    """Input of ``DeploymentWorkflow``; also what it carries over continue-as-new."""

    config: DeploymentConfig
    task_queue: str
    concurrency: int = 1
    idle_timeout: float = 300.0
    check_interval: float = 2.0
    # A drained instance waits this long for its running predictions to finish.
    drain_timeout: float = 2400.0
    instances: int = 0
    host_queue: str | None = None
    host_hardware: str | None = None
    idle_since: datetime | None = None
    retired: bool = False


class DeploymentObservation(BaseModel):
    """What the read model says of a deployment: its current release and its demand."""

    exists: bool
    config: DeploymentConfig | None = None
    waiting: int = 0  # predictions not yet handed to an instance
    running: int = 0
    # Its new predictions run on the hardware's shared queue: instances only for those queued
    # on its own queue before (waiting and running count only those).
    shared_hardware: bool = False
    # False: its owner may no longer run its model (made private or deleted by another
    # account, or access lost): it keeps no instances.
    runnable: bool = True
    # Predictions waiting on its own queue that nothing will ever serve (it is not runnable,
    # or it was deleted): the controller cancels them.
    stranded: list[str] = Field(default_factory=list)


class ObserveDeployment(BaseModel):
    """Input of ``observe_deployment``; ``busy`` marks the deployment as in use now."""

    deployment_id: int
    owner: str
    name: str
    busy: bool = False


class InstanceTarget(BaseModel):
    """Input of ``ensure_instances``: how many instances of a release a host should run."""

    config: DeploymentConfig
    task_queue: str
    count: int
    concurrency: int = 1
    drain_timeout: float = 2400.0


class HostReport(BaseModel):
    """A host's answer: its own control queue and its instances of the deployment."""

    host_queue: str
    ready: int = 0
    booting: int = 0
    draining: int = 0


# -- trainings -------------------------------------------------------------------------------


class TrainingRequest(BaseModel):
    """Input of ``TrainingWorkflow``: train ``version`` and push the result to ``destination``."""

    id: str
    owner: str
    model: str  # owner/name of the model trained
    version: str  # the base version
    destination: str  # owner/name that receives the new version
    input: dict[str, Any] = Field(default_factory=dict)
    hardware: str = "cpu"
    webhook: str | None = None
    webhook_events_filter: list[WebhookEvent] | None = None
    # Cog's per-request context: the trainer reads it as ``current_scope().context``.
    context: dict[str, str] = Field(default_factory=dict)
    created_at: datetime | None = None
    timeout: float = 86400.0
    heartbeat_timeout: float = 30.0
    task_queue: str | None = None
    # Where staging runs; None: the workflow's own queue (the orchestration queue).
    side_queue: str | None = None
    # Waiting for a hardware slot, accounts take turns (replicant/fairness.py); kept here so
    # a restarted start keeps it.
    fairness_weight: float | None = None
    # Traced (replicant/tracing.py): the id of the trace the API's request began.
    trace_id: str | None = None
    webhook_retry_period: float = 3600.0
    webhook_retry_max_interval: float = 120.0
    webhook_timeout: float = 10.0
    # Input files staged in the object store; the trainer gets them as local paths.
    staged_files: list[StagedFile] = Field(default_factory=list)


class StoredWeights(BaseModel):
    """The trainer's weights, stored in the object store (a reference, never the bytes)."""

    key: str
    sha256: str
    size: int
    content_type: str = "application/octet-stream"


class TrainingRun(BaseModel):
    """What the run activity of a training reports: the trainer's end, weights if any."""

    status: Status
    error: str | None = None
    weights: StoredWeights | None = None
    started_at: datetime | None = None


class CompleteTraining(BaseModel):
    """Input of ``complete_training``: create the fine-tune version and succeed, together."""

    id: str
    weights: StoredWeights
    completed_at: datetime


class FinishTraining(BaseModel):
    """Input of ``finish_training``: a terminal state without a new version."""

    id: str
    status: Status
    error: str | None = None
    completed_at: datetime | None = None


class TrainingOutcome(BaseModel):
    """The end of a training: its status and, on success, the new version (owner/name:id)."""

    status: Status
    error: str | None = None
    version: str | None = None
    completed_at: datetime | None = None


class TrainingWebhook(BaseModel):
    """Input of ``send_training_webhook``: one event of a training, to its webhook."""

    training_id: str
    event: WebhookEvent
    sequence: int = 0
    timeout: float = 10.0


class NewModel(BaseModel):
    """A model that a push creates together with its first version."""

    visibility: str = "public"
    hardware: str = "cpu"
    description: str | None = None


class BuildRequest(BaseModel):
    """Input of ``BuildVersionWorkflow``: one push, its archive already in the object store."""

    id: str
    owner: str  # the account that pushed
    model: str  # owner/name
    version: str  # the version id the files hash to
    archive_key: str
    # None: the model exists; else it is created with its first version.
    new_model: NewModel | None = None
    timeout: float = 7200.0
    heartbeat_timeout: float = 30.0


class BuildOutcome(BaseModel):
    """How a build ended; the details (logs, problem) are in the ``build`` row."""

    status: Literal["succeeded", "failed"]
    version: str | None = None
    created: bool = False
    error: str | None = None  # a failed build's problem, as its detail says it


class FailBuild(BaseModel):
    """Input of ``fail_build``: a build the build activity could not finish."""

    build_id: str
    archive_key: str
    message: str


class ActivityName:
    """The names activities register under and workflows schedule them by; histories record
    them, so a name never changes."""

    RECORD_PREDICTION: Final = "record_prediction"
    STAGE_INPUTS: Final = "stage_inputs"
    RUN_PREDICTION: Final = "run_prediction"
    FINISH_PREDICTION: Final = "finish_prediction"
    REMOVE_PREDICTION_DATA: Final = "remove_prediction_data"
    ABORT_PREDICTION: Final = "abort_prediction"
    REQUEST_WORKFLOW_CANCEL: Final = "request_workflow_cancel"
    SEND_WEBHOOK: Final = "send_webhook"
    START_WEBHOOK_DELIVERY: Final = "start_webhook_delivery"
    STAGE_TRAINING_INPUTS: Final = "stage_training_inputs"
    RUN_TRAINING: Final = "run_training"
    COMPLETE_TRAINING: Final = "complete_training"
    FINISH_TRAINING: Final = "finish_training"
    SEND_TRAINING_WEBHOOK: Final = "send_training_webhook"
    OBSERVE_DEPLOYMENT: Final = "observe_deployment"
    ENSURE_INSTANCES: Final = "ensure_instances"
    REMOVE_EXPIRED_FILES: Final = "remove_expired_files"
    REMOVE_OVERDUE_PREDICTION_DATA: Final = "remove_overdue_prediction_data"
    BUILD_VERSION: Final = "build_version"
    FAIL_BUILD: Final = "fail_build"
    RECONCILE_STARTS: Final = "reconcile_starts"


class ErrorType:
    """``ApplicationError`` types that activities raise and workflows act on."""

    VERSION_NOT_FOUND: Final = "VersionNotFound"
    DESTINATION_GONE: Final = "DestinationGone"
    INPUT_FILE_ERROR: Final = "InputFileError"
    NO_WEBHOOK: Final = "NoWebhook"
    WEBHOOK_REFUSED: Final = "WebhookRefused"
    WEBHOOK_FAILED: Final = "WebhookFailed"
    # A run stopped with the worker process that ran it: the next attempt runs it.
    WORKER_STOPPED: Final = "WorkerStopped"
