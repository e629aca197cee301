"""The objects the HTTP API returns, as pydantic models shaped like Replicate's spec.

Routes return these (``replicant.serialize`` builds them from rows), so Replicant's own
``/openapi.json`` documents the real shapes. Bodies are rendered with ``exclude_unset``: a
field the spec types as a non-nullable string (``started_at``, ``webhook``...) is declared
here as that type with no value, and is left out of the body until it is known, while a
nullable one (``error``, ``output``) is always present, null until set. Fields marked
"Beyond Replicate" are Replicant's own additions.
"""

from __future__ import annotations

from typing import Annotated, Any, Generic, TypeVar

from pydantic import BaseModel, ConfigDict, Field, WithJsonSchema

T = TypeVar("T")

Timestamp = Annotated[str, WithJsonSchema({"type": "string", "format": "date-time"})]
Url = Annotated[str, WithJsonSchema({"type": "string", "format": "uri"})]
# Left out of the body while unknown; never null (the spec types these as non-nullable).
OMITTED: Any = Field(default=None)


class Response(BaseModel):
    """Base of every response object: rendered with ``exclude_unset`` (see the module)."""

    model_config = ConfigDict(protected_namespaces=())


class PredictionUrls(Response):
    get: Url
    cancel: Url
    web: Url
    stream: Url = OMITTED


class Metrics(Response):
    """How long a run took, in seconds (other measures may follow)."""

    model_config = ConfigDict(extra="allow")

    total_time: float = OMITTED
    predict_time: float = OMITTED
    # Beyond Replicate: predict_time times the price of its hardware (replicant/usage.py).
    cost: float = OMITTED


class QueuePlace(Response):
    """Beyond Replicate: why a run that has not started waits (``queued for <hardware>``,
    ``booting the model``, ``building the environment``) and, while it waits for a slot, its
    place among the runs waiting for that hardware (1: next) and its estimated start."""

    reason: str
    hardware: str
    position: int = OMITTED
    estimated_start: Timestamp = OMITTED


class Prediction(Response):
    """A prediction (``schemas_prediction_response``)."""

    id: str
    model: str
    version: str
    input: dict[str, Any]
    logs: str
    output: Any
    data_removed: bool
    error: str | None
    status: str
    source: str
    created_at: Timestamp
    urls: PredictionUrls
    started_at: Timestamp = OMITTED
    completed_at: Timestamp = OMITTED
    deadline: Timestamp = OMITTED
    deployment: str = OMITTED
    metrics: Metrics = OMITTED
    webhook: str = OMITTED
    webhook_events_filter: list[str] = OMITTED
    hardware: str = OMITTED  # Beyond Replicate: the SKU that runs it
    trace_id: str = OMITTED  # Beyond Replicate: its OpenTelemetry trace (docs/tracing.md)
    queue: QueuePlace = OMITTED  # Beyond Replicate: why it has not started (replicant/queueing.py)


class PublicPredictionUrls(Response):
    web: Url


class PublicPredictionMetrics(Response):
    predict_time: float = OMITTED


class PublicPrediction(Response):
    """What a shared prediction shows anyone at ``urls.web``: no logs, webhook or owner."""

    id: str
    model: str
    version: str
    status: str
    input: dict[str, Any]
    output: Any
    error: str | None
    data_removed: bool
    created_at: Timestamp
    started_at: Timestamp | None
    completed_at: Timestamp | None
    urls: PublicPredictionUrls
    metrics: PublicPredictionMetrics = OMITTED


class TrainingUrls(Response):
    get: Url
    cancel: Url
    web: Url
    stream: Url = OMITTED  # Beyond Replicate: logs, output and the end as server-sent events


class TrainingOutput(Response):
    """The new version's id and a signed URL of the trained weights."""

    model_config = ConfigDict(extra="allow")

    version: str = OMITTED
    weights: str = OMITTED


class Training(Response):
    """A training (``schemas_training_response``); ``output.weights`` is a signed URL."""

    id: str
    model: str
    version: str
    destination: str
    input: dict[str, Any]
    logs: str
    error: str | None
    status: str
    source: str
    created_at: Timestamp
    urls: TrainingUrls
    output: TrainingOutput = OMITTED
    started_at: Timestamp = OMITTED
    completed_at: Timestamp = OMITTED
    metrics: Metrics = OMITTED
    webhook: str = OMITTED
    webhook_events_filter: list[str] = OMITTED
    hardware: str = OMITTED  # Beyond Replicate: the SKU that runs it
    trace_id: str = OMITTED  # Beyond Replicate: its OpenTelemetry trace (docs/tracing.md)
    queue: QueuePlace = OMITTED  # Beyond Replicate: why it has not started (replicant/queueing.py)


class Version(Response):
    """A model version (``schemas_version_response``). Beyond Replicate: ``boot_logs``, for
    the model's owner only (why its model processes were stopped, replicant/bootlogs.py)."""

    id: str
    created_at: Timestamp
    cog_version: str | None
    openapi_schema: dict[str, Any] | None
    boot_logs: str = OMITTED  # Beyond Replicate: its owner's, on GET of the version only


class Model(Response):
    """A model (``schemas_model_response``); ``default_example`` is a prediction."""

    url: Url
    owner: str
    name: str
    description: str | None
    visibility: str
    github_url: Url | None
    paper_url: Url | None
    license_url: Url | None
    cover_image_url: Url | None
    run_count: int
    default_example: Prediction | None
    is_official: bool
    latest_version: Version | None


class Account(Response):
    """The caller's account. Beyond Replicate: ``fairness_weight``, its share of busy
    hardware queues."""

    type: str
    username: str
    name: str
    fairness_weight: float
    github_url: Url = OMITTED


class UsageLine(Response):
    """The runs of one kind, model and hardware in a usage report."""

    kind: str  # "prediction" or "training"
    model: str
    hardware: str
    runs: int
    predict_time: float
    cost: float


class Usage(Response):
    """Beyond Replicate: an account's runs that ended in ``[start, end)``, by model and
    hardware; ``runs``, ``predict_time`` and ``cost`` add up its lines."""

    account: str
    start: Timestamp
    end: Timestamp
    runs: int
    predict_time: float
    cost: float
    lines: list[UsageLine]


class Hardware(Response):
    name: str
    sku: str


class Creator(Response):
    """The account that made a deployment release."""

    type: str
    username: str
    name: str
    github_url: Url = OMITTED


class DeploymentConfiguration(Response):
    hardware: str
    min_instances: int
    max_instances: int


class DeploymentRelease(Response):
    number: int
    model: str
    version: str
    created_at: Timestamp
    created_by: Creator
    configuration: DeploymentConfiguration


class Deployment(Response):
    """A deployment (``schemas_deployment_response``). Beyond Replicate: the priority of its
    predictions, whether they run on the hardware's shared queue (``shared_hardware``, set by
    an operator) and what runs now (instances by state, queue depth, running predictions)."""

    owner: str
    name: str
    current_release: DeploymentRelease
    priority: int
    shared_hardware: bool
    instances: int
    instances_booting: int
    instances_draining: int
    queue_depth: int
    running: int


class FileChecksums(Response):
    sha256: str


class FileUrls(Response):
    get: Url
    download: Url


class File(Response):
    """An uploaded file (``schemas_file_response``); ``urls.download`` is signed."""

    id: str
    name: str
    content_type: str
    size: int
    etag: str
    checksums: FileChecksums
    metadata: dict[str, Any]
    created_at: Timestamp
    expires_at: Timestamp
    urls: FileUrls


class CollectionSummary(Response):
    """A collection in a list (``schemas_collection_list_item``)."""

    name: str
    slug: str
    description: str


class Collection(CollectionSummary):
    """A collection with its models (``schemas_collection_response``)."""

    full_description: str | None
    models: list[Model]


class SearchModelMetadata(Response):
    generated_description: str | None
    tags: list[str]
    score: float | None


class SearchModel(Response):
    model: Model
    metadata: SearchModelMetadata


class SearchCollection(CollectionSummary):
    """A matching collection; ``models`` names its models ``owner/name``."""

    models: list[str]


class SearchPage(Response):
    name: str
    href: str


class SearchResults(Response):
    """The answer of ``GET /v1/search`` (``schemas_search_response``)."""

    query: str
    models: list[SearchModel]
    collections: list[SearchCollection]
    pages: list[SearchPage]


class Build(Response):
    """A push's version build (``GET /v1/builds/{id}``): the version once it succeeded, the
    problem once it failed."""

    id: str
    model: str
    status: str
    logs: str
    version: Version | None
    error: dict[str, Any] | None
    created_at: Timestamp
    started_at: Timestamp | None
    completed_at: Timestamp | None


class WebhookSecret(Response):
    key: str


class Page(Response, Generic[T]):
    """One page of a list, newest first, with absolute cursor URLs."""

    next: str | None
    previous: str | None
    results: list[T]


class PredictionPage(Page[Prediction]):
    pass


class TrainingPage(Page[Training]):
    pass


class ModelPage(Page[Model]):
    pass


class VersionPage(Page[Version]):
    pass


class DeploymentPage(Page[Deployment]):
    pass


class FilePage(Page[File]):
    pass


class CollectionPage(Page[CollectionSummary]):
    pass
