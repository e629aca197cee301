"""The pydantic contracts that cross workflow and activity boundaries.

One argument per workflow and activity, so fields can be added without breaking running
histories. Payloads carry references, never file bytes.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal

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


class StagedFile(BaseModel):
    """An input file in the object store: where it sits in ``input`` and under which key."""

    path: list[str | int]  # ["image"], or ["images", 2] inside a list
    key: str
    filename: str


class StagedInputs(BaseModel):
    """What ``stage_inputs`` reports: the input files it stored (references, not bytes)."""

    files: list[StagedFile] = Field(default_factory=list)


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
    created_at: datetime | None = None
    recorded: bool = False
    # Limits, in seconds; the API fills them from settings, programmatic starts may too.
    timeout: float = 1800.0
    retention: float = 3600.0
    heartbeat_timeout: float = 30.0
    # Task queue of the hardware; defaults to the SKU's queue.
    task_queue: str | None = None
    # Webhooks: seconds the `completed` event is retried until a 2xx; seconds per delivery.
    webhook_retry_period: float = 3600.0
    webhook_timeout: float = 10.0
    # Input files staged in the object store; the run activity hands them over as local paths.
    staged_files: list[StagedFile] = Field(default_factory=list)


class RunOutcome(BaseModel):
    """What the run activity reports back: the prediction's terminal state."""

    status: Status
    error: str | None = None
    started_at: datetime | None = None
    completed_at: datetime | None = None


class FinishPrediction(BaseModel):
    """Input of the activity that records a terminal state the run activity could not."""

    id: str
    status: Status
    error: str | None = None
    completed_at: datetime | None = None


class PredictionRef(BaseModel):
    """A prediction by id (retention, lookups)."""

    id: str


class WebhookDelivery(BaseModel):
    """Input of ``send_webhook``: one event of a prediction, to the prediction's webhook."""

    prediction_id: str
    event: WebhookEvent
    sequence: int = 0  # tells apart events of one kind; the same for retries of one event
    timeout: float = 10.0


class WebhookResult(BaseModel):
    """What the receiver answered (kept in the workflow's history)."""

    status_code: int


class WaitResult(BaseModel):
    """Answer of the ``wait_done`` update: the status once terminal."""

    status: Status
