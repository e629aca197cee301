"""Every setting of Replicant, read once from the environment (prefix ``REPLICANT_``)."""

from __future__ import annotations

import contextlib
import ipaddress
import os
import secrets
import time
from functools import lru_cache
from pathlib import Path
from typing import Literal

from limits import parse as parse_limit
from pydantic import ByteSize, Field, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict


class Settings(BaseSettings):
    """The one settings class; nothing else reads ``os.environ``."""

    model_config = SettingsConfigDict(env_prefix="REPLICANT_", extra="ignore")

    # Each field's description is the configuration reference (docs/configuration.md is
    # generated from them: `python -m replicant.configdoc`).

    data_dir: Path = Field(
        Path(".replicant"),
        description="Where the embedded stack keeps its files: the SQLite database, Temporal's "
        "database, model versions and their Python environments, the local object store.",
    )

    # API
    api_host: str = Field("127.0.0.1", description="The address the API listens on.")
    api_port: int = Field(8000, description="The port the API listens on.")
    public_url: str | None = Field(
        None,
        description="The base of the absolute URLs in responses (`urls.get`, file URLs); "
        "`http://<api_host>:<api_port>` when unset (`https://` with a TLS certificate).",
    )
    api_token: str | None = Field(
        None,
        description="The token of the default account; generated once and kept in "
        "`<data_dir>/api-token` when unset.",
    )
    default_account: str = Field(
        "replicant", description="The account that owns the token of `api_token`."
    )

    # Temporal
    temporal_address: str | None = Field(
        None,
        description="`host:port` of an external Temporal frontend; the embedded dev server "
        "(`127.0.0.1:<temporal_port>`) when unset.",
    )
    temporal_namespace: str = Field("default", description="The Temporal namespace.")
    temporal_port: int = Field(7233, description="The port of the embedded Temporal dev server.")
    ui_port: int = Field(8233, description="The port of the embedded Temporal Web UI.")
    temporal_ui_url: str | None = Field(
        None,
        description="The Temporal Web UI as browsers reach it (the dashboard links each "
        "prediction's workflow there); `http://<ui_host>:<ui_port>` when unset (`127.0.0.1` for "
        "a wildcard `ui_host`).",
    )
    temporal_bin: str | None = Field(
        None,
        description="The `temporal` CLI that runs the embedded dev server; the one next to "
        "the Python executable (the `temporal-bin` package) when unset.",
    )
    orchestration_queue: str = Field(
        "replicant-orchestration",
        description="The task queue of workflow side steps (staging inputs, webhooks, data "
        "removal), trainings' orchestration and deployment controllers.",
    )
    temporal_fairness: bool = Field(
        True,
        description="The embedded Temporal dev server serves backlogged hardware queues fairly "
        "between accounts (docs/fairness.md); false: first come, first served.",
    )
    temporal_memory_limit: ByteSize = Field(
        ByteSize(256 * 2**20),
        description="The memory the embedded Temporal dev server's Go runtime aims to stay "
        "within (its `GOMEMLIMIT`, with `GOGC=400`), e.g. `512MiB`: its resident set then "
        "levels off a little under this plus the ~130 MB of its binary within the first "
        "minute of load instead of rising with its heap, and while its live heap is under "
        "about a third of it, it collects garbage no more often than without "
        '(docs/performance.md, "The dev server\'s Go heap"). Raise it if the live heap nears '
        "it (very deep backlogs). `0`: Go's defaults (or the `GOGC` and `GOMEMLIMIT` of the "
        "environment).",
    )
    build_queue: str = Field(
        "replicant-build",
        description="The task queue of version builds (Python environments and predictor "
        "probes): workers that serve the orchestration queue serve it too.",
    )
    max_concurrent_builds: int = Field(
        2, description="Builds one worker runs at once; more wait in the build queue."
    )
    build_timeout: float = Field(
        7200.0, description="Seconds a version build (pip included) may take."
    )

    # Database
    database_url: str | None = Field(
        None,
        description="SQLAlchemy URL of Replicant's database, e.g. "
        "`postgresql+psycopg://user:password@host:5432/db`; a SQLite file in the data dir "
        "when unset.",
    )

    # Predictions
    prediction_retention: float = Field(
        3600.0,
        description="Seconds after an API prediction ends before its input and output are "
        "removed (later while its `completed` webhook is still retried: that body is the final "
        "prediction).",
    )
    prediction_timeout: float = Field(
        1800.0, description="Seconds a prediction may run before it fails."
    )
    max_wait: int = Field(
        60, description="The longest wait `Prefer: wait=N` may ask for, in seconds."
    )
    heartbeat_timeout: float = Field(
        30.0,
        description="Seconds without a heartbeat before a run is retried on another worker.",
    )
    local_run_seconds: float = Field(
        1.0,
        description="A prediction of a version whose last few runs (as an API process saw "
        "them answered) each took less than this many seconds runs in its workflow's own "
        "task (a Temporal local activity) instead of as an activity of its hardware queue: "
        "fewer round trips through Temporal, for a model's fast runs. Such a run waits for "
        "a slot in its worker rather than in Temporal's fair queue, and a cancel reaches it "
        "within the workflow task's heartbeat (seconds). Predictions with a deadline "
        "(`Cancel-After`), of a deployment or of a streaming model always run as activities. "
        "0 runs every prediction as an activity.",
        ge=0,
    )
    worker_stop_grace: float = Field(
        10.0,
        ge=0,
        description="Seconds a worker stopped gracefully (SIGTERM) lets the runs of its hardware "
        "queues finish, its model processes kept alive; runs still going then are run again by "
        "their next attempt. 0 ends them at once.",
    )
    training_timeout: float = Field(86400.0, description="Seconds a training may run.")
    aborted_clients: list[str] = Field(
        default_factory=list,
        description="User-Agent prefixes of the clients shown the status `aborted` (a deadline "
        "passed before the prediction started; `*`: every client); the others see `canceled`, "
        "since the Python client replicate 1.0.7 fails on a status it does not know (JSON list).",
    )
    start_grace: float = Field(
        60.0,
        description="Seconds after which a prediction or training still `starting` whose "
        "workflow does not exist (its create crashed half-way), or a build still running whose "
        "workflow never started or has ended, is failed by the reconciler; keep it above the "
        "API's 10 s start timeout.",
    )
    reconcile_interval: float = Field(
        30.0,
        description="Seconds between the reconciler's passes over `starting` rows and running "
        "builds.",
    )
    reconcile_asks: int = Field(
        200,
        ge=1,
        description="Workflows the reconciler asks Temporal about in one pass at most, for "
        "predictions and for trainings each; the `starting` rows beyond wait for the next "
        "passes. A pass asks once about each row (the reconciler then remembers the workflow "
        "exists), so a deep queue is gone over this many rows a pass instead of all at once, "
        "while a worker drains it. Each pass goes on after the row where the last one stopped "
        "and wraps around, so every row is checked within a bounded number of passes.",
    )
    reconcile_rows: int = Field(
        100_000,
        ge=1,
        description="Rows of each kind (predictions, trainings, builds) the reconciler goes "
        "over in one pass at most; the next pass goes on after the last of them.",
    )

    # Hardware: every SKU is a task queue.
    hardware: dict[str, int] = Field(
        default_factory=lambda: {"cpu": 2, "gpu-t4": 1, "gpu-l40s": 1, "gpu-a100-large": 1},
        description="Hardware SKUs of this installation and their concurrent slots per worker "
        "(JSON). Give every API and worker process the same value.",
    )
    hardware_names: dict[str, str] = Field(
        default_factory=lambda: {
            "cpu": "CPU",
            "gpu-t4": "Nvidia T4 GPU",
            "gpu-l40s": "Nvidia L40S GPU",
            "gpu-a100-large": "Nvidia A100 (80GB) GPU",
        },
        description="Display names of the SKUs in `GET /v1/hardware` (JSON).",
    )
    default_hardware: str = Field("cpu", description="The hardware of models created without one.")
    max_warm_runners: int = Field(
        4,
        description="Model processes a worker keeps warm; the least recently used one beyond "
        "that is stopped.",
    )
    max_warm_memory: ByteSize | None = Field(
        None,
        description="The most memory (resident set, each model process with its children) a "
        "worker's warm model processes of its hardware queues may take together, e.g. `8GB`; "
        "least recently used idle processes are stopped before the total would pass it "
        "(deployment instances are not counted). Unset: only `max_warm_runners` limits them.",
    )
    model_memory_limit: ByteSize | None = Field(
        None,
        description="The most memory one model process may take (with the processes it "
        "starts), e.g. `2GB`: each runs in a memory cgroup of its own (a child of the worker's "
        "cgroup, v2 `memory.max` or v1 `memory.limit_in_bytes`), the kernel kills it past the "
        "limit, and its prediction fails saying it ran out of memory. It covers the model "
        "processes of every SKU that `model_memory_limits` does not name. Where the worker "
        "cannot create cgroups, it logs a warning at start and runs them without. Unset: no "
        "limit of its own.",
    )
    model_memory_limits: dict[str, ByteSize] = Field(
        default_factory=dict,
        description="The memory limit of one model process on each SKU named (JSON), e.g. "
        '`{"cpu": "2GB", "gpu-t4": "16GB"}`, as `model_memory_limit` gives it; the SKUs not '
        "named get `model_memory_limit`. A version that runs on two SKUs of one worker gets a "
        "process for each SKU named here.",
    )
    # The model sandbox (replicant/sandbox.py): every process that runs model code.
    model_unsandboxed: bool = Field(
        False,
        description="Run model code without a sandbox, as the worker's own user with its view "
        "of the machine and network (only for an installation whose every account is trusted). "
        "Without it, a machine that cannot sandbox (no bubblewrap, no user or pid namespaces) "
        "refuses to start model processes, and says so in the worker's log at start.",
    )
    model_uid: int = Field(
        65534,
        description="The uid model processes run as when the worker runs as root (a user that "
        "owns no files of the installation; `nobody` by default). A worker that is not root "
        "cannot switch: its models keep its uid, inside their namespaces.",
    )
    model_gid: int = Field(65534, description="The gid model processes run as (see `model_uid`).")
    model_egress: Literal["none", "public", "unrestricted"] = Field(
        "none",
        description="The network a model process has. `none`: a network namespace of its own "
        "with only loopback (the worker's links, its HTTP to coglet and coglet's uploads, "
        "webhooks and weights, go through Unix sockets); it reaches no address at all. "
        "`public`: the same, plus an HTTP(S) proxy (`HTTP_PROXY`/`HTTPS_PROXY` in its "
        "environment) that connects only to public addresses, never to loopback, private "
        "networks, link-local metadata or the platform's services. `unrestricted`: the "
        "worker's own network, so a model can reach every service the worker reaches "
        "(Temporal, the database, Redis, the object store, private addresses).",
    )
    model_build_egress: Literal["public", "none", "unrestricted"] = Field(
        "public",
        description="The network of a sandboxed environment build (pip runs a package's "
        "`setup.py` and build hooks), as `model_egress` has them: `public` (pip reaches "
        "the package index through the proxy to public addresses), `none` (only local "
        "indexes: `PIP_FIND_LINKS`, `file://` index URLs, bound read-only), `unrestricted` "
        "(the worker's network, e.g. for an index on a private address).",
    )

    gpu_devices: str | None = Field(
        None,
        description="The GPU devices of a worker, comma-separated (e.g. `0,1`); the devices "
        "`nvidia-smi -L` lists when unset, none without it. Each slot of a GPU SKU owns its own "
        "devices (`CUDA_VISIBLE_DEVICES` of its model processes); a GPU SKU that gets none is "
        "not served by that worker. An installation without devices refuses GPU models at push "
        "unless their hardware is `cpu`.",
    )
    gpus_per_slot: dict[str, int] = Field(
        default_factory=dict,
        description='Devices each slot of a SKU owns (JSON), e.g. `{"gpu-a100-2x": 2}`; 1 for '
        "every other SKU named `gpu-*`.",
    )
    gpu_memory_budget: ByteSize | None = Field(
        None,
        description="Memory the model processes on one GPU slot may take together (e.g. "
        "`70GB`): their device memory as `nvidia-smi` reports it (their resident memory "
        "without it); unset: a slot keeps one resident model process, stopped before another "
        "version boots on its devices.",
    )
    setup_timeout: float = Field(
        300.0, description="Seconds a model's setup() may take before its prediction fails."
    )
    # Who may push models (api/push.py): defence in depth besides the model sandbox.
    push_accounts: list[str] = Field(
        default_factory=list,
        description="Accounts (usernames, JSON list) that may push models. With this and "
        "`push_organizations` both empty, every account may push; otherwise only the listed "
        "accounts and the members of the listed organizations, and any other gets 403.",
    )
    push_organizations: list[str] = Field(
        default_factory=list,
        description="Organizations (JSON list) whose members may push models (see "
        "`push_accounts`).",
    )
    max_push_bytes: int = Field(
        1024 * 1024 * 1024,
        description="The largest model archive a push may upload, and the most its files may "
        "unpack to, in bytes.",
    )
    weights_url_hosts: list[str] = Field(
        default_factory=list,
        description="Hosts (JSON list; `*` for any public host) that a model's cog.yaml "
        "`weights:` may name an http(s) source on; the push fetches it once (with the checks "
        "of every fetch: public addresses only unless `allow_private_urls`). Empty: such a "
        "push is refused, naming this setting.",
    )
    weights_url_max_bytes: int = Field(
        10 * 1024 * 1024 * 1024,
        description="The largest file an http(s) source of cog.yaml's `weights:` may be, in bytes.",
    )
    weights_cache_max_age: float = Field(
        7 * 24 * 3600.0,
        description="Seconds a worker keeps a set of cog.yaml's `weights:` in its weights cache "
        "(`<data dir>/weights-cache/sets/`) after it last placed it for a model process; an "
        "older set that no live model process uses is removed (looked for at a process boot, "
        "at most once a minute). The objects of the store behind it stay while a version "
        "refers to them.",
    )
    model_cpu_threads: int = Field(
        0,
        description="Threads a model's numerical libraries may use (onnxruntime, OpenMP), "
        "given to model processes as `REPLICANT_CPU_THREADS`; 0: the CPUs' share of one slot "
        "of the cpu SKU.",
    )
    envs_dir: Path | None = Field(
        None, description="Where model environments are built; `<data_dir>/envs` when unset."
    )
    prebuild_envs: bool = Field(
        True,
        description="Build the built-in models' environments in the background when the stack "
        "starts (else on their first prediction, which waits `starting` meanwhile).",
    )

    # Files and URLs fetched on behalf of users
    allow_private_urls: bool = Field(
        False,
        description="Let input and webhook URLs reach private and loopback addresses (local "
        "testing only).",
    )
    storage: Literal["local", "s3"] = Field(
        "local",
        description="The object store of uploaded files, staged inputs, outputs and weights: "
        "`local` (a directory in the data dir, served by the API with signed URLs) or `s3`.",
    )
    s3_endpoint: str = Field(
        "127.0.0.1:9000", description="`host:port` of the S3 API the API and workers reach."
    )
    s3_bucket: str = Field("replicant", description="The bucket (created when missing).")
    s3_access_key: str | None = Field(None, description="The S3 access key.")
    s3_secret_key: str | None = Field(None, description="The S3 secret key.")
    s3_secure: bool = Field(False, description="Reach the S3 endpoint over HTTPS.")
    s3_region: str = Field(
        "us-east-1", description="The bucket's region (presigning then needs no request)."
    )
    s3_public_url: str | None = Field(
        None,
        description="The base URL clients reach the store at, when it differs from "
        "`s3_endpoint` (e.g. `http://localhost:9000`): output URLs are presigned for it.",
    )
    max_file_size: int = Field(
        100 * 1024 * 1024,
        description="The largest upload or fetched input file, in bytes (413 beyond).",
    )
    max_log_size: int = Field(
        1024 * 1024,
        ge=1,
        description="The most characters of logs a prediction or training keeps: beyond it, "
        "its first line says how much was left out, and the last this many follow. A "
        "streaming (iterator) prediction's are kept within it in the model's own process "
        "(coglet copies them whole on every line): their first half as printed, then a line "
        "saying how much was left out, then their end, written when the prediction ends.",
    )
    max_output_size: int = Field(
        16 * 1024 * 1024,
        ge=1,
        description="The largest output a prediction may return, in bytes of JSON (output "
        "files do not count: they are stored); a bigger one fails the prediction, saying so.",
    )
    input_fetch_timeout: float = Field(
        60.0, description="Seconds to fetch one input URL, redirects included."
    )
    file_expiry: float = Field(
        86400.0, description="Seconds an uploaded file lives (its `expires_at`)."
    )
    file_sweep_interval: float = Field(
        600.0,
        description="Seconds between the scheduled removals of expired uploaded files.",
    )
    retention_sweep_interval: float = Field(
        60.0,
        description="Seconds between the scheduled sweeps that remove the data of predictions "
        "past their retention (a prediction's data goes within this long after its retention "
        "ends, or after its `completed` webhook is delivered or given up).",
    )
    output_url_expiry: float = Field(3600.0, description="Seconds a signed output URL works.")

    # User bytes, dashboard sessions and request bodies (docs/hardening.md)
    files_url: str | None = Field(
        None,
        description="A separate origin that serves uploaded files and output files (e.g. "
        "`https://files.example.com`, pointed at the same API processes): their signed URLs "
        "point there, and the API's own origin redirects any such URL to it, so no user "
        "bytes are ever served from the dashboard's origin. Unset: the public URL serves "
        "them (as attachments, media aside, with a sandboxing CSP).",
    )
    session_lifetime: float = Field(
        12 * 3600.0,
        gt=0,
        description="Seconds a dashboard sign-in lasts; then the browser signs in again. "
        "Signing out, or revoking the API token signed in with, ends it at once.",
    )
    max_request_body: int = Field(
        16 * 1024 * 1024,
        ge=1024,
        description="The largest request body in bytes (413 beyond, before it is read and "
        "before authentication), for every route but uploads: `POST /v1/files` and the "
        "dashboard's Run form take `max_file_size` plus 1 MiB, a model push "
        "`max_push_bytes` plus 1 MiB, sign-in 64 KiB. Larger input files go through "
        "`POST /v1/files` rather than data URIs.",
    )

    # TLS for the API
    tls_certfile: Path | None = Field(
        None,
        description="PEM certificate: the API serves HTTPS, and the public URL defaults to "
        "`https://`.",
    )
    tls_keyfile: Path | None = Field(None, description="PEM private key of `tls_certfile`.")

    # Webhooks and streams
    webhook_retry_period: float = Field(
        3600.0,
        description="Seconds a `completed` webhook is retried (with backoff) until it gets a 2xx.",
    )
    webhook_retry_max_interval: float = Field(
        120.0,
        description="Most seconds between two attempts of a `completed` webhook: the wait "
        "starts at 1 s and doubles up to this, so a receiver that comes back is reached "
        "within this long.",
        gt=0,
    )
    webhook_timeout: float = Field(10.0, description="Seconds one webhook delivery may take.")
    stream_keepalive: float = Field(
        15.0,
        description="Seconds without an event after which an SSE stream sends a keep-alive "
        "comment (and again after each further such quiet interval).",
    )
    secret_key: str | None = Field(
        None,
        description="Signs the URLs that carry no token (streams, files) and seals Cog Secret "
        "inputs; generated once in the data dir when unset. Set the same value on every API "
        "and worker process.",
    )

    # Deployments
    deployment_instance_concurrency: int = Field(
        1,
        description="Predictions one deployment instance (one warm model process) runs at a time.",
    )
    deployment_idle_timeout: float = Field(
        300.0,
        description="Seconds of lower demand before a deployment stops instances beyond "
        "`min_instances`.",
    )
    deployment_delete_idle: float = Field(
        900.0,
        description="Seconds a deployment must have been offline and unused before it can be "
        "deleted.",
    )
    deployment_check_interval: float = Field(
        2.0,
        description="Seconds between a deployment controller's checks of its queue (new "
        "predictions wake it at once).",
    )

    # Cost and usage: what a run costs on each SKU, and how much an account may spend
    # (docs/usage.md).
    hardware_prices: dict[str, float] = Field(
        default_factory=dict,
        description="Price of one second of a run on each hardware SKU (JSON, in the "
        'installation\'s currency), e.g. `{"cpu": 0.0001, "gpu-t4": 0.000225}`: a run\'s '
        "`metrics.cost` is its `predict_time` times its SKU's price, fixed when it ends. A SKU "
        "not named costs 0.",
    )
    spend_limits: dict[str, float] = Field(
        default_factory=dict,
        description="The most an account (a user or an organization, by username) may spend "
        'in a calendar month (UTC), as JSON, e.g. `{"acme": 250}`: once its runs of the month '
        "cost that much, new predictions and trainings of it are refused with 402. Accounts "
        "not named have no limit.",
    )

    # Rate limits per account, in the `limits` library's notation.
    rate_limit_create: str = Field(
        "600/minute",
        description="Prediction and training creates per account (e.g. `10 per 5 seconds`).",
    )
    rate_limit_default: str = Field(
        "3000/minute",
        description="Every other request per account (per client address without a valid token).",
    )
    redis_url: str | None = Field(
        None,
        description="Redis for rate-limit counters shared by every API process, e.g. "
        "`redis://:password@host:6379/0`; counters live in each process's memory when unset.",
    )
    rate_limit_prefix: str = Field(
        "replicant",
        description="Prefix of the rate-limit keys in Redis, for installations sharing one.",
    )

    # Who a request comes from behind proxies, what a rate-limit store failure does, where
    # the Temporal UI listens (docs/hardening.md, "Threat model").
    trusted_proxies: list[str] = Field(
        [],
        description="Addresses or networks (CIDR) of the reverse proxies in front of the API, "
        'as JSON, e.g. `["172.16.0.0/12"]`: only a request from one of them has its '
        "`X-Forwarded-For` and `X-Forwarded-Proto` believed (its client address keys the rate "
        "limit of requests without an account). Empty: no forwarded header is believed, not "
        "even from loopback.",
    )
    rate_limit_store_failure: Literal["open", "closed"] = Field(
        "open",
        description="What a request does when the rate-limit store (Redis) fails: `open` lets "
        "it through with a logged warning (`event=rate_limit_unavailable`) and counts it in "
        "`replicant_rate_limit_store_errors_total`; `closed` refuses it with 503 and "
        "`Retry-After` (and counts it too).",
    )
    ui_host: str = Field(
        "127.0.0.1",
        description="The address the embedded Temporal Web UI listens on. It has no "
        "authentication and shows every account's inputs and webhook URLs: keep it on "
        "loopback, or put it behind a proxy that authenticates.",
    )

    # Logs and metrics
    log_level: str = Field("INFO", description="The log level.")
    log_format: Literal["json", "text"] = Field(
        "json", description="`json` (one object per line) or `text` (key=value)."
    )
    worker_metrics_port: int = Field(
        0,
        description="The port of a worker's Prometheus `/metrics` (on `api_host`); 0 turns it off.",
    )
    temporal_metrics_port: int = Field(
        0,
        description="The port of a worker's Temporal SDK metrics (Prometheus, on `api_host`); "
        "0 turns it off.",
    )
    metrics_count_interval: float = Field(
        60.0,
        description="Seconds an API process reuses its count of ended predictions by status "
        "(the `replicant_predictions` gauge of `/metrics`: a scan of the whole table) for "
        "further scrapes; waiting and running ones are counted at every scrape. 0 counts all "
        "at every scrape.",
        ge=0,
    )

    # Tracing (docs/tracing.md): OpenTelemetry spans of each prediction, from the API's
    # request through its workflow and activities into the model, sent over OTLP/HTTP.
    otlp_endpoint: str | None = Field(
        None,
        description="The base URL of an OTLP/HTTP collector (e.g. `http://127.0.0.1:4318`); "
        "spans go to its `/v1/traces`. Unset (the default), nothing is traced and no "
        "tracing code runs.",
    )
    otlp_service_name: str = Field(
        "replicant",
        description="The `service.name` of this process's spans (`-api` or `-worker` appended).",
    )

    # Concurrency of an API process: its threads, its database connections (as many as
    # threads that may hold one, so none waits for a connection) and its admission bound.
    api_threads: int = Field(
        40,
        description="Threads of an API process for synchronous routes and database calls "
        "(anyio's thread limiter), and of synchronous routes' sessions open at once. Its "
        "database pool keeps a connection for each of those (2 x this), plus one per thread "
        "of its other pools (Python's default executor, `min(32, cores + 4)`, `/health`'s 2 "
        "and the queue board's 1): on PostgreSQL, keep API processes x that, plus the "
        "workers' pools, under `max_connections`.",
        ge=1,
    )

    api_max_requests: int = Field(
        1024,
        description="Requests an API process serves at once (not counting long-held ones); "
        "the next is answered at once with 503 and `Retry-After`. `/health` and `/metrics` "
        "are never refused.",
        ge=1,
    )
    api_max_held: int = Field(
        2048,
        description="Long-held requests an API process serves at once (creates with "
        "`Prefer: wait`, event streams, followed builds), apart from `api_max_requests` so "
        "that they cannot starve short ones; the next is answered at once with 503 and "
        "`Retry-After`.",
        ge=1,
    )
    api_retry_after: int = Field(
        1, description="Seconds of `Retry-After` in a 503 of a saturated API process.", ge=1
    )

    lookup_cache_ttl: float = Field(
        1.0,
        description="Seconds an API process reuses what nearly every request looks up (a "
        "token's account, a pinned version, a model's latest version as creates by the "
        "model's name run it, a version's hardware). Its own changes are seen at once; "
        "another process's (a token revoked by the CLI or another API process, a version "
        "built by a worker) within this time. 0 looks everything up every time.",
        ge=0,
    )

    @field_validator("rate_limit_create", "rate_limit_default")
    @classmethod
    def _valid_rate_limit(cls, value: str) -> str:
        parse_limit(value)  # "600/minute", "5 per 10 seconds", ...; ValueError otherwise
        return value

    @field_validator("trusted_proxies")
    @classmethod
    def _valid_proxies(cls, value: list[str]) -> list[str]:
        for entry in value:
            try:
                ipaddress.ip_network(entry, strict=False)
            except ValueError:
                raise ValueError(f"trusted proxy {entry!r} is not an address or network") from None
        return value

    @property
    def resolved_temporal_address(self) -> str:
        return self.temporal_address or f"127.0.0.1:{self.temporal_port}"

    @property
    def resolved_public_url(self) -> str:
        scheme = "https" if self.tls_certfile else "http"
        return (self.public_url or f"{scheme}://{self.api_host}:{self.api_port}").rstrip("/")

    @property
    def resolved_files_url(self) -> str:
        """Where user bytes are served: ``files_url``, else the public URL."""
        return (self.files_url or self.resolved_public_url).rstrip("/")

    @property
    def resolved_temporal_ui_url(self) -> str:
        if self.temporal_ui_url:
            return self.temporal_ui_url.rstrip("/")
        host = "127.0.0.1" if self.ui_host in ("0.0.0.0", "::", "") else self.ui_host
        return f"http://{f'[{host}]' if ':' in host else host}:{self.ui_port}"

    @property
    def resolved_database_url(self) -> str:
        return self.database_url or f"sqlite:///{(self.data_dir / 'replicant.db').resolve()}"

    @property
    def resolved_envs_dir(self) -> Path:
        return (self.envs_dir or self.data_dir / "envs").resolve()

    def task_queue(self, sku: str) -> str:
        """The Temporal task queue of a hardware SKU."""
        return f"replicant-hw-{sku}"

    def deployment_queue(self, owner: str, name: str) -> str:
        """The task queue only a deployment's own instances poll ('/' cannot be in a name)."""
        return f"replicant-deploy-{owner}/{name}"

    def ensure_secret_key(self) -> str:
        """The configured secret key, or one generated once and kept in the data dir (read
        from there once per process: every run and webhook asks for it)."""
        if self.secret_key:
            return self.secret_key
        return _kept_secret_key(self.data_dir.resolve())

    def ensure_api_token(self) -> str:
        """The configured token, or one generated once and kept in the data dir."""
        if self.api_token:
            return self.api_token
        path = self.data_dir / "api-token"
        if path.exists():
            return path.read_text().strip()
        self.data_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        token = "r8_" + secrets.token_urlsafe(30)
        # Created 0600: the token is never readable by others, even for a moment.
        with os.fdopen(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600), "w") as f:
            f.write(token + "\n")
        return token


@lru_cache
def get_settings() -> Settings:
    """The process-wide settings (tests build their own ``Settings`` instead)."""
    return Settings()


@lru_cache(maxsize=64)
def _kept_secret_key(data_dir: Path) -> str:
    """The secret key kept in ``data_dir``, generated there by the first process to ask."""
    path = data_dir / "secret-key"
    with contextlib.suppress(FileExistsError):
        data_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        # O_EXCL: API and worker processes starting together agree on one key.
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(secrets.token_urlsafe(32) + "\n")
    for _ in range(100):
        key = path.read_text().strip()
        if key:
            return key
        time.sleep(0.01)  # another process is writing it
    raise RuntimeError(f"{path} is empty")
