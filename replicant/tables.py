"""The SQL read model: accounts, models, versions and predictions.

Temporal is the source of truth for what happens next; these tables are what the API reads,
so ``GET`` and ``list`` never wait on Temporal.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import JSON, Column, DateTime, Index, Text, UniqueConstraint
from sqlalchemy.engine import Dialect
from sqlalchemy.types import TypeDecorator
from sqlmodel import Field, SQLModel

from replicant.timeutil import as_utc, utcnow


class UTCDateTime(TypeDecorator[datetime]):
    """Stored as naive UTC on every database, read back as aware UTC."""

    impl = DateTime
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        return None if value is None else as_utc(value).replace(tzinfo=None)

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        return None if value is None else as_utc(value)


def created_field() -> Any:
    return Field(default_factory=utcnow, sa_column=Column(UTCDateTime, nullable=False))


def time_field(index: bool = False) -> Any:
    return Field(default=None, sa_column=Column(UTCDateTime, nullable=True, index=index))


def list_filter_indexes(table: str, columns: tuple[str, ...]) -> list[Index]:
    """One index per filter of a list: (owner, column, created_at, id), so a filtered page
    is one range scan in the list's order."""
    return [
        Index(f"ix_{table}_owner_{column}_created", "owner", column, "created_at", "id")
        for column in columns
    ]


TERMINAL_STATUSES = frozenset({"succeeded", "failed", "canceled", "aborted"})


class Account(SQLModel, table=True):
    """A user or an organization; models and predictions belong to one."""

    id: int | None = Field(default=None, primary_key=True)
    username: str = Field(index=True, unique=True)
    name: str = ""
    type: str = "user"  # "user" or "organization"
    github_url: str | None = None
    webhook_secret: str | None = None
    # Its share of a busy hardware queue against other accounts' (replicant/fairness.py).
    fairness_weight: float = 1.0
    created_at: datetime = created_field()


class Membership(SQLModel, table=True):
    """A user's membership of an organization."""

    organization_id: int = Field(foreign_key="account.id", primary_key=True)
    user_id: int = Field(foreign_key="account.id", primary_key=True)


class ApiToken(SQLModel, table=True):
    """An API token, stored hashed."""

    id: int | None = Field(default=None, primary_key=True)
    account_id: int = Field(foreign_key="account.id", index=True)
    token_hash: str = Field(index=True, unique=True)
    name: str = "default"
    created_at: datetime = created_field()
    revoked_at: datetime | None = time_field()


class DashboardSession(SQLModel, table=True):
    """A signed-in dashboard session. The browser's cookie holds only a random id; the row
    keeps that id's hash (a copy of the table opens no session), the API token the user
    signed in with by its id (never the token), and the session's CSRF token."""

    id_hash: str = Field(primary_key=True)
    token_id: int = Field(foreign_key="apitoken.id", index=True)
    csrf: str
    created_at: datetime = created_field()
    expires_at: datetime = Field(sa_column=Column(UTCDateTime, nullable=False, index=True))


class ManagedWeightRef(SQLModel, table=True):
    """An object of cog.yaml's managed weights (``weights/sha256/<digest>``) that a version
    refers to, written when the push first holds it. Kept after the version is deleted: the
    file-expiry sweep removes an object once every version that referred to it is gone (and
    a push holding it has had time to finish), then the rows (replicant/managedweights.py)."""

    version_id: str = Field(primary_key=True)
    object_key: str = Field(primary_key=True, index=True)
    created_at: datetime = created_field()


class Model(SQLModel, table=True):
    """A model: a named series of versions under an owner."""

    __table_args__ = (UniqueConstraint("owner", "name"),)

    id: int | None = Field(default=None, primary_key=True)
    owner: str = Field(index=True)
    name: str
    description: str | None = None
    visibility: str = "public"
    hardware: str = "cpu"
    github_url: str | None = None
    paper_url: str | None = None
    license_url: str | None = None
    cover_image_url: str | None = None
    latest_version_id: str | None = None
    # When the latest version was created (sorting of GET /v1/models); None: no version.
    latest_version_created_at: datetime | None = time_field()
    run_count: int = 0
    created_at: datetime = created_field()
    # Markdown: set by PATCH, or from the README.md of a pushed version.
    readme: str | None = Field(default=None, sa_column=Column(Text))
    # Marked by an operator (`replicant models official`): shown as `is_official`.
    is_official: bool = False


class Version(SQLModel, table=True):
    """One immutable version of a model: a Cog model directory and its schema."""

    id: str = Field(primary_key=True)
    model_id: int = Field(foreign_key="model.id", index=True)
    created_at: datetime = created_field()
    cog_version: str = ""
    openapi_schema: dict[str, Any] = Field(default_factory=dict, sa_column=Column(JSON))
    model_dir: str = ""
    python: str = ""  # the interpreter of the version's environment
    predict_ref: str = ""
    train_ref: str | None = None
    # Fine-tunes: the version they were trained from and the weights they load.
    base_version_id: str | None = Field(default=None, index=True)
    weights_url: str | None = None
    # Whether its predictor has a healthcheck() (own or inherited), found at push; None: a
    # version pushed before that was recorded (its predictor file is read instead).
    healthcheck: bool | None = None
    # Why its model processes were stopped (setup failed, defunct, unhealthy), newest last,
    # with their output's tail: written by the workers, kept within BOOT_LOGS_LIMIT.
    boot_logs: str = Field(
        default="", sa_column=Column(Text, nullable=False, default="", server_default="")
    )


class Prediction(SQLModel, table=True):
    """The read model of one prediction; written by the API at create and by activities after."""

    __table_args__ = (
        Index("ix_prediction_owner_created", "owner", "created_at", "id"),
        # A deployment's controller counts its waiting and running predictions.
        Index("ix_prediction_deployment_status", "deployment", "status"),
        # The reconciler pages through the rows of one status in id order.
        Index("ix_prediction_status_id", "status", "id"),
        # The list's filters: each one a range scan in the list's own order.
        *list_filter_indexes("prediction", ("status", "model", "version", "deployment", "source")),
    )

    id: str = Field(primary_key=True)
    owner: str = Field(index=True)  # the account that created it
    model: str
    version: str = Field(index=True)
    deployment: str | None = None
    source: str = "api"
    status: str = "starting"
    input: dict[str, Any] | None = Field(default=None, sa_column=Column(JSON))
    output: Any = Field(default=None, sa_column=Column(JSON))
    logs: str = Field(default="", sa_column=Column(Text, nullable=False, default=""))
    error: str | None = Field(default=None, sa_column=Column(Text))
    metrics: dict[str, Any] | None = Field(default=None, sa_column=Column(JSON))
    webhook: str | None = None
    webhook_events_filter: list[str] | None = Field(default=None, sa_column=Column(JSON))
    stream: bool = False
    hardware: str = "cpu"
    data_removed: bool = False
    created_at: datetime = created_field()
    started_at: datetime | None = time_field()
    completed_at: datetime | None = time_field()
    deadline: datetime | None = time_field()
    # Readable by anyone at urls.web (``/p/{id}``) while true; only the owner changes it.
    shared: bool = False
    # A deployment's prediction that waits on its hardware's shared queue rather than on the
    # deployment's instances (the deployment runs on shared hardware): no instance serves it.
    deployment_shared: bool = False
    # Holding a slot but not started: "booting" or "building" (its environment); None while
    # it waits for a slot (replicant/queueing.py).
    waiting: str | None = None
    # The OpenTelemetry trace of its run, when tracing is on (replicant/tracing.py).
    trace_id: str | None = None


class Deployment(SQLModel, table=True):
    """A private endpoint that runs one version on instances of its own; private to its owner.

    The configuration columns mirror the current release; ``DeploymentWorkflow`` owns the
    instances, and ``DeploymentInstance`` rows say what is running now.
    """

    __table_args__ = (UniqueConstraint("owner", "name"),)

    id: int | None = Field(default=None, primary_key=True)
    owner: str = Field(index=True)
    name: str
    model: str  # owner/name of the deployed model
    version: str = Field(index=True)  # the current release's version id
    hardware: str = "cpu"
    min_instances: int = 0
    max_instances: int = 1
    release: int = 1  # the current release's number
    # Temporal priority key of its predictions, 1 (first) to 5; None: the default, 3.
    priority: int | None = None
    # Set by an operator: its predictions run on its hardware's shared queue (no instances of
    # its own), where ``priority`` orders them among everyone's (docs/fairness.md).
    shared_hardware: bool = False
    created_at: datetime = created_field()
    # The last time it had an instance or a prediction: deletion waits for a quiet period.
    last_active_at: datetime = created_field()


class DeploymentRelease(SQLModel, table=True):
    """One release of a deployment: every change makes a new one with the next number."""

    __table_args__ = (UniqueConstraint("deployment_id", "number"),)

    id: int | None = Field(default=None, primary_key=True)
    deployment_id: int = Field(foreign_key="deployment.id", index=True)
    number: int
    model: str
    version: str
    hardware: str
    min_instances: int
    max_instances: int
    created_by: str  # the username of the account that made the change
    created_at: datetime = created_field()


class DeploymentInstance(SQLModel, table=True):
    """One instance of a deployment (a warm model process), written by the host running it."""

    id: str = Field(primary_key=True)
    deployment_id: int = Field(index=True)
    release: int
    version: str
    hardware: str
    host: str
    pid: int | None = None
    status: str = "booting"  # booting, ready, draining
    created_at: datetime = created_field()
    ready_at: datetime | None = time_field()


class StoredFile(SQLModel, table=True):
    """A file uploaded through the Files API; its bytes live in the object store."""

    __table_args__ = (Index("ix_storedfile_owner_created", "owner", "created_at", "id"),)

    id: str = Field(primary_key=True)
    owner: str = Field(index=True)  # the account that uploaded it
    name: str
    content_type: str
    size: int
    sha256: str
    etag: str
    # "metadata" is reserved by SQLAlchemy's declarative base: the column keeps the name.
    user_metadata: dict[str, Any] = Field(
        default_factory=dict, sa_column=Column("metadata", JSON, nullable=False)
    )
    object_key: str
    created_at: datetime = created_field()
    expires_at: datetime = Field(sa_column=Column(UTCDateTime, nullable=False, index=True))


class Training(SQLModel, table=True):
    """The read model of one training; written by the API at create and by activities after.

    ``output`` is ``{"version": "owner/name:id"}`` once the new version exists; the weights
    URL in the API's answer is signed when it is read, from ``weights_key``.
    """

    __table_args__ = (
        Index("ix_training_owner_created", "owner", "created_at", "id"),
        Index("ix_training_status_id", "status", "id"),
        *list_filter_indexes("training", ("status", "model", "version", "source")),
    )

    id: str = Field(primary_key=True)
    owner: str = Field(index=True)  # the account that created it
    model: str  # owner/name of the model trained
    version: str = Field(index=True)  # the base version trained
    destination: str  # owner/name of the model that receives the new version
    source: str = "api"
    status: str = "starting"
    input: dict[str, Any] | None = Field(default=None, sa_column=Column(JSON))
    output: dict[str, Any] | None = Field(default=None, sa_column=Column(JSON))
    weights_key: str | None = None  # the object-store key of the trained weights
    logs: str = Field(default="", sa_column=Column(Text, nullable=False, default=""))
    error: str | None = Field(default=None, sa_column=Column(Text))
    metrics: dict[str, Any] | None = Field(default=None, sa_column=Column(JSON))
    webhook: str | None = None
    webhook_events_filter: list[str] | None = Field(default=None, sa_column=Column(JSON))
    hardware: str = "cpu"
    waiting: str | None = None  # as a prediction's (replicant/queueing.py)
    trace_id: str | None = None  # as a prediction's (replicant/tracing.py)
    created_at: datetime = created_field()
    started_at: datetime | None = time_field()
    completed_at: datetime | None = time_field()


class Build(SQLModel, table=True):
    """One push's build of a version: written by the API at push, by the build activity after.

    ``logs`` grows while the build runs (the API tails it); ``error`` is the problem+json body
    of a build that failed, ``version_id`` the version of one that succeeded.
    """

    __table_args__ = (Index("ix_build_status_id", "status", "id"),)

    id: str = Field(primary_key=True)
    owner: str = Field(index=True)  # the account that pushed
    model: str  # owner/name of the model pushed to
    status: str = "starting"  # starting, processing, succeeded, failed
    version_id: str | None = None
    created: bool = False  # the build made a new version (not one that existed already)
    logs: str = Field(default="", sa_column=Column(Text, nullable=False, default=""))
    error: dict[str, Any] | None = Field(default=None, sa_column=Column(JSON))
    created_at: datetime = created_field()
    started_at: datetime | None = time_field()  # when a worker took it (``processing``)
    completed_at: datetime | None = time_field()


class WorkerHeartbeat(SQLModel, table=True):
    """A worker process's sign of life, so ``/health`` notices a dead worker in seconds."""

    identity: str = Field(primary_key=True)
    queues: list[str] = Field(default_factory=list, sa_column=Column(JSON))
    seen_at: datetime = created_field()


class IdempotencyKey(SQLModel, table=True):
    """A create request's ``Idempotency-Key``: a retry with it within 24 hours answers the
    object the first request made. Written in the same transaction as that object's row, and
    unique per account, so two racing requests can never both create."""

    __table_args__ = (UniqueConstraint("owner", "key"),)

    id: int | None = Field(default=None, primary_key=True)
    owner: str  # the account that sent it
    key: str
    request_hash: str  # HMAC-SHA256 (secret_key) of the route and body: another is refused
    kind: str  # "prediction" or "training"
    object_id: str
    # The workflow's input: a retry starts the workflow if the API that recorded it died first.
    request: dict[str, Any] | None = Field(default=None, sa_column=Column(JSON))
    created_at: datetime = created_field()


class Collection(SQLModel, table=True):
    """A curated, named list of models (``/v1/collections``); operators manage them."""

    id: int | None = Field(default=None, primary_key=True)
    slug: str = Field(index=True, unique=True)
    name: str
    description: str = ""
    full_description: str | None = Field(default=None, sa_column=Column(Text))
    created_at: datetime = created_field()


class CollectionModel(SQLModel, table=True):
    """A model in a collection."""

    collection_id: int = Field(foreign_key="collection.id", primary_key=True)
    model_id: int = Field(foreign_key="model.id", primary_key=True)
    added_at: datetime = created_field()


class ModelExample(SQLModel, table=True):
    """A prediction the model's owner marked as an example of it (``/examples``); the default
    one is the model's ``default_example``. Retention leaves its data in place."""

    model_id: int = Field(foreign_key="model.id", primary_key=True)
    prediction_id: str = Field(primary_key=True, index=True)
    is_default: bool = False
    added_at: datetime = created_field()
