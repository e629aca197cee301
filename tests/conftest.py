"""Shared fixtures: one real embedded stack (Temporal dev server, API, worker) per session.

Limits are short so that timeouts, retries and retention can be observed in seconds.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import shutil
import subprocess
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy.engine import Engine

from replicant.accounts import create_account
from replicant.cogmodel import CogConfig, Inspected
from replicant.db import make_engine
from replicant.devstack import Stack, free_port
from replicant.settings import Settings

# The dashboard's tests drive Debian's Chromium (a module-scoped fixture).
from tests.browser import browser  # noqa: F401
from tests.conformance import async_conformance_hook, conformance_hook
from tests.pgdb import fresh_postgres_database

# Every test gets its tier (unit, integration, e2e) by rule; unit tests may reach no service.
from tests.tiers import pytest_collection_modifyitems, service_guard  # noqa: F401
from tests.waiting import wait_until

# `REPLICANT_TEST_DATABASE=postgres pytest ...` runs the shared stack (and the stacks that
# test modules start for themselves) on fresh databases of the local PostgreSQL (dropped
# afterwards) instead of SQLite files.
TEST_DATABASE = os.environ.get("REPLICANT_TEST_DATABASE", "sqlite")

# Environment builds reach the package index through the worker's network: the test
# machines' resolvers may answer public names (pypi.org) with reserved addresses behind
# their own gateway, which the builds' proxy to public addresses rightly refuses. The model
# processes themselves keep the default (no network); tests/test_envs.py and
# tests/test_model_sandbox.py exercise the proxy. Set for this process's own builds too.
BUILD_EGRESS = "unrestricted"
os.environ.setdefault("REPLICANT_MODEL_BUILD_EGRESS", BUILD_EGRESS)

# Short limits for the shared stack; the tests that observe them read them from here.
RETENTION = 20.0
# The retention sweep is a scheduled workflow: every run costs the Temporal dev server and
# the worker a workflow, its tasks and an activity. An idle stack sweeping every second used
# 8.9% of a core, every 5 s 3.6% (docs/testing.md); a test waits at most this long more for a
# removal.
RETENTION_SWEEP = 5.0
TIMEOUT = 8.0
HEARTBEAT_TIMEOUT = 3.0
WEBHOOK_RETRY_PERIOD = 60.0
WEBHOOK_TIMEOUT = 2.0
STREAM_KEEPALIVE = 1.0
METRICS_COUNT_INTERVAL = 1.0
# Deployments scale down after this many idle seconds, and can be deleted after this many.
DEPLOYMENT_IDLE = 2.0
DEPLOYMENT_DELETE_IDLE = 6.0
TERMINAL = {"succeeded", "failed", "canceled", "aborted"}


@dataclass
class LiveStack:
    stack: Stack
    settings: Settings
    url: str
    token: str
    engine: Engine

    def client(self, token: str | None = None) -> httpx.Client:
        """An API client whose every JSON response is checked against Replicate's spec."""
        headers = {"Authorization": f"Bearer {token or self.token}"}
        return httpx.Client(
            base_url=self.url,
            headers=headers,
            timeout=90,
            event_hooks={"response": [conformance_hook(self.url)]},
        )

    def new_account(self, name: str) -> str:
        """A fresh account; returns its token."""
        _, token = create_account(self.engine, f"{name}-{os.urandom(3).hex()}")
        return token

    def predict(self, model: str, input: dict[str, Any], timeout: float = 300) -> dict[str, Any]:
        """Create a prediction of ``model`` (owner/name) with ``input`` and poll it to its end."""
        with self.client() as api:
            response = api.post(f"/v1/models/{model}/predictions", json={"input": input})
            assert response.status_code == 201, response.text
        return self.wait_for(response.json()["id"], timeout=timeout)

    def wait_for(
        self,
        prediction_id: str,
        until: Callable[[dict[str, Any]], bool] = lambda p: p["status"] in TERMINAL,
        timeout: float = 60,
        token: str | None = None,
    ) -> dict[str, Any]:
        """Poll a prediction until ``until`` holds and return it; fail when it never does."""
        with self.client(token) as client:

            def fetch() -> dict[str, Any]:
                body: dict[str, Any] = client.get(f"/v1/predictions/{prediction_id}").json()
                return body

            return wait_until(
                fetch,
                until,
                what=f"prediction {prediction_id} to reach the awaited state",
                timeout=timeout,
            )


# The price per second of each SKU on test stacks, and the account with a spend limit.
PRICES = {"cpu": 0.0125, "gpu-t4": 0.5}
SPEND_CAPPED = "spend-capped"
SPEND_LIMIT = 0.000001


def stack_settings(data_dir: Path, **overrides: Any) -> Settings:
    api_port = free_port()
    values: dict[str, Any] = {
        "data_dir": data_dir,
        "api_port": api_port,
        "temporal_port": free_port(),
        "ui_port": free_port(),
        "prediction_retention": RETENTION,
        # The sweep removes the data once retention is over: within RETENTION_SWEEP here.
        "retention_sweep_interval": RETENTION_SWEEP,
        "prediction_timeout": TIMEOUT,
        "heartbeat_timeout": HEARTBEAT_TIMEOUT,
        "hardware": {"cpu": 2, "gpu-t4": 1},
        "max_warm_runners": 6,
        # Tests poll hard from one account; test_ratelimits.py checks the limits on apps of
        # their own, so the shared stack must not throttle the rest of the suite.
        "rate_limit_create": "100000/minute",
        "rate_limit_default": "100000/minute",
        # Webhook receivers and URLs served by the tests listen on 127.0.0.1.
        "allow_private_urls": True,
        # cog.yaml's weights: may come from URLs the tests serve there (not from localhost).
        "weights_url_hosts": ["127.0.0.1"],
        "webhook_retry_period": WEBHOOK_RETRY_PERIOD,
        "webhook_timeout": WEBHOOK_TIMEOUT,
        "stream_keepalive": STREAM_KEEPALIVE,
        "metrics_count_interval": METRICS_COUNT_INTERVAL,
        "deployment_idle_timeout": DEPLOYMENT_IDLE,
        "deployment_delete_idle": DEPLOYMENT_DELETE_IDLE,
        "deployment_check_interval": 0.5,
        # Built-in models' environments build on their first prediction, not at every start.
        "prebuild_envs": False,
        # Every run has a cost (tests/test_usage.py); one fixed account has a spend limit.
        "hardware_prices": PRICES,
        "spend_limits": {SPEND_CAPPED: SPEND_LIMIT},
        "model_build_egress": BUILD_EGRESS,
        # Runs go through their hardware queue as activities, whatever the earlier tests ran:
        # tests/test_local_runs.py runs fast versions in their workflow's task.
        "local_run_seconds": 0,
    }
    values.update(overrides)
    return Settings(**values)


@contextlib.contextmanager
def suite_database() -> Iterator[dict[str, Any]]:
    """Settings overrides that put a stack on this run's database (see TEST_DATABASE): none for
    SQLite (a file in the stack's data dir), else a fresh PostgreSQL database, dropped after."""
    if TEST_DATABASE == "postgres":
        with fresh_postgres_database() as url:
            yield {"database_url": url}
    else:
        yield {}


@pytest.fixture(params=["sqlite", "postgres"])
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """A fresh, empty database of each kind in turn: a SQLite file, then a PostgreSQL one
    (dropped after)."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'replicant.db'}"
    else:
        with fresh_postgres_database("replicant_each") as url:
            yield url


@pytest.fixture(scope="session", autouse=True)
def official_clients_are_checked() -> Iterator[None]:
    """Every official `replicate` client of the suite checks its answers against the spec."""
    import replicate.client

    build = replicate.client._build_httpx_client

    def checked(client_type: Any, *args: Any, **kwargs: Any) -> Any:
        client = build(client_type, *args, **kwargs)
        is_async = issubclass(client_type, httpx.AsyncClient)
        hook = async_conformance_hook() if is_async else conformance_hook()
        client.event_hooks["response"].append(hook)
        return client

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(replicate.client, "_build_httpx_client", checked)
        yield


# The schemas of model directories, derived once per test process: every stack seeds the same
# built-in models, and each schema costs a Python process importing the model's predictor.
_SCHEMAS: dict[tuple[str, str, str], Inspected] = {}


@contextlib.contextmanager
def schemas_derived_once() -> Iterator[None]:
    """While it lasts, a model directory's schema is derived once per content, Python and
    cog.yaml (a failure is not kept: it is tried again)."""
    from replicant import versions

    derive = versions.inspect_model

    def inspect(model_dir: Path, python: Path, config: CogConfig) -> Inspected:
        key = (versions.content_hash(model_dir, ""), str(python), config.model_dump_json())
        if key not in _SCHEMAS:
            _SCHEMAS[key] = derive(model_dir, python, config)
        return _SCHEMAS[key].model_copy(deep=True)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(versions, "inspect_model", inspect)
        yield


@contextlib.contextmanager
def own_stack(
    tmp_path_factory: pytest.TempPathFactory, name: str, ui: bool = False, **overrides: Any
) -> Iterator[LiveStack]:
    """A started embedded stack on this run's database (see ``suite_database``), with the
    test settings of ``stack_settings`` and ``overrides``; stopped, and its database dropped,
    when the block ends. Modules that need settings of their own start theirs with it."""
    data_dir = tmp_path_factory.mktemp(name)
    with contextlib.ExitStack() as cleanup:
        database = cleanup.enter_context(suite_database())
        settings = stack_settings(data_dir, **{**overrides, **database})
        stack = Stack(settings, ui=ui, log_dir=data_dir / "logs")
        cleanup.callback(stack.stop)
        with schemas_derived_once():
            token = stack.start()
        engine = make_engine(settings.resolved_database_url)
        cleanup.callback(engine.dispose)
        yield LiveStack(stack, settings, settings.resolved_public_url, token, engine)


@pytest.fixture(scope="session")
def live(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveStack]:
    """The embedded stack, exactly as `make dev` runs it (the Temporal UI too), on free
    ports."""
    with own_stack(tmp_path_factory, "replicant", ui=True) as stack:
        yield stack


@pytest.fixture(scope="session")
def slowstream(live: LiveStack) -> str:
    """``replicant/slowstream``: a streaming model that yields a token (and prints a log line)
    every ``interval`` seconds, and fails after ``fail_after`` tokens when asked to."""
    from replicant.versions import create_version, ensure_model

    model = ensure_model(live.engine, "replicant", "slowstream")
    create_version(
        live.settings, live.engine, model, Path(__file__).parent / "models" / "slowstream"
    )
    return "replicant/slowstream"


@pytest.fixture
def api(live: LiveStack) -> Iterator[httpx.Client]:
    with live.client() as client:
        yield client


JS_DIR = Path(__file__).parent / "js"


@pytest.fixture(scope="session")
def node_client() -> Path:
    """The npm `replicate` client from tests/js/package-lock.json (npm ci when missing);
    the path of tests/js/stream.mjs, beside the other scripts that drive it."""
    if shutil.which("node") is None or shutil.which("npm") is None:
        pytest.fail("node and npm are needed for the JS client tests")
    # `make test` runs pytest processes side by side: one installs, the others wait for it.
    lock = os.open(JS_DIR, os.O_RDONLY)
    try:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not (JS_DIR / "node_modules" / "replicate").exists():
            subprocess.run(["npm", "ci", "--no-audit", "--no-fund"], cwd=JS_DIR, check=True)
    finally:
        os.close(lock)
    return JS_DIR / "stream.mjs"


REPLICATE2_DIR = Path(__file__).parent / "replicate2"


@pytest.fixture(scope="session")
def replicate2() -> Callable[..., Any]:
    """Replicate's 2.x Python client (tests/replicate2/requirements.txt, pip-installed into
    tests/replicate2/.lib when missing): runs tests/replicate2/client.py against a stack in a
    subprocess and returns what it printed, parsed."""
    lib = REPLICATE2_DIR / ".lib"
    lock = os.open(REPLICATE2_DIR, os.O_RDONLY)
    try:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not (lib / "replicate").exists():
            requirements = str(REPLICATE2_DIR / "requirements.txt")
            subprocess.run(
                [sys.executable, "-m", "pip", "install", "-q", "--target", str(lib)]
                + ["-r", requirements],
                check=True,
            )
    finally:
        os.close(lock)

    def run(stack: LiveStack, *args: str, token: str | None = None) -> Any:
        env = {
            **os.environ,
            "PYTHONPATH": str(lib),
            "REPLICATE_API_TOKEN": token or stack.token,
            "REPLICATE_BASE_URL": f"{stack.url}/v1",
        }
        done = subprocess.run(
            [sys.executable, str(REPLICATE2_DIR / "client.py"), *args],
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert done.returncode == 0, done.stderr
        return json.loads(done.stdout)

    return run
