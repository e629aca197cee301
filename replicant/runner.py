"""What the run activities and a pool of model processes say to each other.

The activities (which may import only ``replicant``) describe a process with ``RunnerSpec``,
get back ``CogPrediction``s, and type the pool as ``ModelRunner``; ``workers.runners``
implements it with coglet processes.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any, Literal, Protocol, TypedDict, Unpack

from pydantic import BaseModel, ConfigDict, Field

from replicant.runstate import CogPrediction as CogPrediction
from replicant.runstate import RunState

# Stores an output file: (prediction id, file name, content type, body) -> its URL.
UploadSink = Callable[[str, str, str | None, AsyncIterator[bytes]], Awaitable[str]]


# Called with each changed intermediate state of a run, and once its process took it.
OnUpdate = Callable[["CogPrediction"], Awaitable[None]]
OnBooted = Callable[[], Awaitable[None]]


class RunnerSpec(BaseModel):
    """How to start a coglet process; ``key`` names the warm process that can be reused."""

    model_config = ConfigDict(frozen=True)

    key: str
    model_dir: Path
    python: Path
    predict_ref: str
    train_ref: str | None = None
    mode: Literal["predict", "train"] = "predict"
    env: dict[str, str] = Field(default_factory=dict)
    upload_url: str | None = None
    # Weights in the object store (``replicant.weights``): materialized by the pool, then
    # served to the model from the pool's HTTP server as COG_WEIGHTS.
    weights_ref: str | None = None
    # Runs one process serves at once: cog.yaml's concurrency.max (async predict only).
    concurrency: int = Field(1, ge=1)
    # True for iterator outputs (partial output needs coglet's webhooks); None: learn it.
    streams_output: bool | None = None
    # Whether the model has a healthcheck() (own or inherited, found at push): the pool then
    # asks coglet's /health-check before each next run. None: not known (read from the file).
    healthcheck: bool | None = None
    # A run keeps the last this many characters of its logs (the rest is left out, said so
    # in their first line), and fails when its output is more bytes of JSON than this.
    max_logs: int = Field(1024 * 1024, ge=1)
    max_output: int = Field(16 * 1024 * 1024, ge=1)
    # The SKU whose own memory limit its process gets (``model_memory_limits``); None: the
    # worker's default limit. The key of such a process names the SKU too.
    memory_sku: str | None = None


class RunWith(TypedDict, total=False):
    """What a caller hands ``ModelRunner.predict`` with a run: ``on_update`` takes its changed
    states, ``on_booted`` is awaited once its process took it, ``context`` is Cog's
    per-request context, and ``state`` the run's one ``RunState`` (its id the run's), which
    the pool reports to and settles the end of (None: the pool keeps one of its own)."""

    on_update: OnUpdate | None
    on_booted: OnBooted | None
    context: dict[str, str] | None
    state: RunState | None


class BootError(Exception):
    """setup() failed, or coglet died or hung while booting; ``logs`` holds its output tail."""

    def __init__(self, message: str, logs: str = "") -> None:
        super().__init__(message)
        self.logs = logs


class ModelRunner(Protocol):
    """The part of a runner pool that the run activities use."""

    @property
    def upload(self) -> UploadSink | None:
        """Where the pool stores output files (None: they come back as data URIs)."""
        ...

    async def predict(
        self, spec: RunnerSpec, /, prediction_id: str, input: dict[str, Any], **run: Unpack[RunWith]
    ) -> CogPrediction:
        """Run one prediction (or training) and return its terminal state (see ``RunWith``)."""
        ...

    def keep_standby(self, spec: RunnerSpec) -> None:
        """Keep a process of fine-tune ``spec``'s base waiting for weights (if enabled)."""
        ...
