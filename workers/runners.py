"""The pool of warm coglet processes that the run activity hands predictions to.

One coglet process (Cog's own prediction server) per runner key, e.g. per version. coglet
has one slot, so a process runs one prediction at a time; the hardware queue in front of the
pool keeps it that way, and a per-process lock makes sure of it.

How a prediction reaches coglet, and why (measured with coglet 0.23.1, hello-world, p50):

- ``PUT /predictions/{id}`` without a webhook answers the terminal prediction: ~2.9 ms.
- the same with a ``webhook`` URL: ~10 ms, because coglet builds a new HTTP client per
  prediction that carries a webhook, loading the whole CA store (~7 ms) before it answers.

So the request is always synchronous (the response is the authoritative terminal state, and a
dropped connection makes coglet cancel), and a webhook is added only when it is needed: when
the caller wants live updates and the model streams output (an iterator; learned from coglet's
own log, or hinted by ``RunnerSpec.streams_output``). Live logs of every other model come for
free from coglet's stderr, where it writes each log line of a prediction, tagged with its id,
as it happens. The same stream fills in the logs that coglet leaves out of the synchronous
answer of a failed or canceled prediction.
"""

from __future__ import annotations

import asyncio
import atexit
import collections
import contextlib
import json
import logging
import os
import re
import secrets
import signal
import socket
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any, Literal
from urllib.parse import quote

import aiohttp
import httpx
import uvicorn
from pydantic import BaseModel, ConfigDict, Field
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import FileResponse, Response
from starlette.routing import Route

from replicant.weights import WeightsCache, WeightsError, file_name, parse_store_ref

TERMINAL = frozenset({"succeeded", "failed", "canceled"})

# Stores an output file: (prediction id, file name, content type, body) -> its URL.
UploadSink = Callable[[str, str, str | None, AsyncIterator[bytes]], Awaitable[str]]

# The worker's environment holds the platform's secrets: a model sees only these, plus spec.env.
PASSTHROUGH_ENV = (
    "HOME",
    "USER",
    "LOGNAME",
    "LANG",
    "LC_ALL",
    "LC_CTYPE",
    "TZ",
    "TMPDIR",
    "LD_LIBRARY_PATH",
    "CUDA_VISIBLE_DEVICES",
    "NVIDIA_VISIBLE_DEVICES",
    "NVIDIA_DRIVER_CAPABILITIES",
    "SSL_CERT_FILE",
    "SSL_CERT_DIR",
    "REQUESTS_CA_BUNDLE",
    "HTTP_PROXY",
    "HTTPS_PROXY",
    "NO_PROXY",
    "http_proxy",
    "https_proxy",
    "no_proxy",
    "HF_HOME",
    "HF_HUB_CACHE",
    "TORCH_HOME",
    "XDG_CACHE_HOME",
)

# Runs `python -m cog.server.http` after asking the kernel to kill it when the pool's process
# dies, so even a SIGKILLed worker leaves no coglet behind (its own worker exits on stdin EOF).
LAUNCHER = """\
import ctypes, os, runpy, signal, sys
parent = int(os.environ.pop("REPLICANT_POOL_PID", "0"))
try:
    ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
except (AttributeError, OSError):
    pass
if parent and os.getppid() != parent:
    sys.exit("replicant: the runner pool exited before coglet started")
runpy.run_module("cog.server.http", run_name="__main__", alter_sys=True)
"""

# coglet's markers (in its JSON log) that a prediction's log lines are all written.
END_MARKERS = frozenset(
    {"Prediction worker completed", "Prediction failed", "Prediction cancelled"}
)

# A fine-tune standby (see RunnerPool.keep_standby) is replaced after waiting this long, as
# models fetch their weights with a timeout (the built-in ngram: 120 s); standbys of a base
# are kept while its fine-tunes booted in the last STANDBY_KEEP seconds.
STANDBY_TTL = 90.0
STANDBY_KEEP = 900.0

# Loaded by coglet in place of the model's own predictor or trainer (see its docstring).
MODEL_ENTRY = Path(__file__).resolve().parent / "model_entry.py"

OUTPUT_TAIL_LINES = 300
# Health checks, 50 ms apart, after a model's worker process exits during setup.
SETUP_FAILED_CHECKS = 10
AT_CAPACITY_RETRY_FOR = 5.0
# A prediction's PUT: the connection within 10 s, the answer whenever the model is done.
PUT_TIMEOUT = aiohttp.ClientTimeout(total=None, sock_connect=10.0)
PROCESS_DIED = "The model process exited during the prediction"
# What coglet puts before a model's "Type: message" (repeated, in some combination).
COGLET_ERROR_PREFIX = re.compile(
    r"(?:Prediction failed|Training failed|Async prediction failed|Async training failed"
    r"|Generator iteration error): "
)


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
    # True for iterator outputs (partial output needs coglet's webhooks); None: learn it.
    streams_output: bool | None = None


class CogPrediction(BaseModel):
    """The latest state coglet reported for a prediction (cumulative output and logs)."""

    status: str
    output: Any = None
    logs: str = ""
    error: str | None = None
    metrics: dict[str, Any] = Field(default_factory=dict)


class BootError(Exception):
    """setup() failed, or coglet died or hung while booting; ``logs`` holds its output tail."""

    def __init__(self, message: str, logs: str = "") -> None:
        super().__init__(message)
        self.logs = logs


class _NotHandedOver(Exception):
    """coglet was gone before it received the prediction: safe to retry on a new process."""


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def _explain_model_error(result: CogPrediction) -> None:
    """coglet reports a model's exception as "Prediction failed: Prediction failed: Type: msg"
    (see COGLET_ERROR_PREFIX for the other wrappings). Keep the message as the
    error (as Cog's Python server did); the logs end with the traceback (model_entry.py) and
    so with "Type: msg", which is added should they not."""
    text = result.error
    if text == "Worker crashed":  # coglet's words when the model's process exits mid-run
        result.error = PROCESS_DIED
        return
    if text is None or not COGLET_ERROR_PREFIX.match(text):
        return
    while match := COGLET_ERROR_PREFIX.match(text):
        text = text[match.end() :]
    match = re.match(r"([A-Za-z_]\w*): (.*)\Z", text, re.DOTALL)
    if match is None:
        result.error = text
        return
    result.error = match.group(2) or match.group(1)
    line = text.rstrip("\n") + "\n"
    if not result.logs.endswith(line):
        separator = "" if not result.logs or result.logs.endswith("\n") else "\n"
        result.logs += separator + line


def _setup_error(setup_logs: str) -> str:
    """The model's exception out of coglet's "worker setup failed: ... setup failed: X"."""
    text = setup_logs.strip()
    prefix = re.compile(r"(?:worker setup failed(?: \(slot [^)]*\))?|setup failed): ", re.I)
    while match := prefix.match(text):
        text = text[match.end() :]
    return text or setup_logs.strip()


def _readable(record: dict[str, Any]) -> str:
    fields = dict(record.get("fields") or {})
    message = str(fields.pop("message", ""))
    extra = " ".join(f"{k}={v}" for k, v in fields.items() if k != "source")
    return f"[{record.get('target', '')}] {message} {extra}".rstrip()


def _rank(payload: dict[str, Any]) -> tuple[int, int, int]:
    """Orders webhook deliveries by completeness: terminal, then more output, then more logs."""
    output = payload.get("output")
    count = len(output) if isinstance(output, list) else int(output is not None)
    return (int(payload.get("status") in TERMINAL), count, len(payload.get("logs") or ""))


def _prediction(payload: dict[str, Any]) -> CogPrediction:
    metrics = payload.get("metrics")
    return CogPrediction(
        status=str(payload.get("status") or "failed"),
        output=payload.get("output"),
        logs=str(payload.get("logs") or ""),
        error=None if payload.get("error") is None else str(payload["error"]),
        metrics=metrics if isinstance(metrics, dict) else {},
    )


def _worker_exited(pid: int) -> bool:
    """True when coglet's worker child is a zombie: coglet then waits in STARTING forever."""
    try:
        tasks = list(Path(f"/proc/{pid}/task").iterdir())
    except OSError:
        return False
    for task in tasks:
        try:
            children = (task / "children").read_text().split()
        except OSError:
            continue
        for child in children:
            try:
                stat = Path(f"/proc/{child}/stat").read_text()
            except OSError:
                continue
            if stat.rsplit(")", 1)[-1].split()[:1] == ["Z"]:
                return True
    return False


class _Run:
    """One prediction handed to a runner: what coglet has reported so far."""

    def __init__(self, prediction_id: str, runner: _Runner, webhook: bool) -> None:
        self.id = prediction_id
        self.runner = runner
        self.webhook = webhook
        self.best: dict[str, Any] | None = None
        self.hook_terminal = asyncio.Event()
        self.log_lines: list[str] = []
        self.logs_done = asyncio.Event()
        self.changed = asyncio.Event()
        self.cancel_requested = False
        self.started = False
        self.task: asyncio.Task[CogPrediction] | None = None
        self.stopper: asyncio.Task[None] | None = None

    def offer(self, payload: dict[str, Any]) -> None:
        """A webhook delivery; they arrive out of order, so keep the most complete."""
        if self.best is None or _rank(payload) >= _rank(self.best):
            self.best = payload
        if payload.get("status") in TERMINAL:
            self.hook_terminal.set()
        self.changed.set()

    def on_log_record(self, fields: dict[str, Any]) -> None:
        """A line of coglet's own log about this prediction."""
        message = fields.get("message")
        if "source" in fields:
            self.log_lines.append(f"{message}\n")
            if not self.webhook:
                self.changed.set()
        elif message == "Starting prediction":
            self.started = True
        elif message in END_MARKERS:
            self.logs_done.set()

    @property
    def stream_logs(self) -> str:
        return "".join(self.log_lines)

    def snapshot(self) -> CogPrediction:
        """The current non-terminal state for ``on_update``."""
        if self.webhook:
            state = _prediction(self.best or {"status": "processing"})
            if state.status in TERMINAL:
                state.status = "processing"
            return state
        return CogPrediction(status="processing", logs=self.stream_logs)


class _Runner:
    """One coglet process."""

    def __init__(self, spec: RunnerSpec, port: int, log: logging.Logger) -> None:
        self.spec = spec
        self.port = port
        self.url = f"http://127.0.0.1:{port}"
        self.log = log
        self.proc: asyncio.subprocess.Process | None = None
        self.lock = asyncio.Lock()
        self.retired = False
        self.current: _Run | None = None
        self.tail: collections.deque[str] = collections.deque(maxlen=OUTPUT_TAIL_LINES)
        self.output_seen = asyncio.Event()
        self.streams_output: bool | None = None
        self._reader: asyncio.Task[None] | None = None
        self._watcher: asyncio.Task[None] | None = None

    @property
    def pid(self) -> int:
        return self.proc.pid if self.proc is not None else 0

    @property
    def exited(self) -> bool:
        return self._watcher is not None and self._watcher.done()

    @property
    def alive(self) -> bool:
        return self.proc is not None and self.proc.returncode is None and not self.retired

    def output_tail(self) -> str:
        return "\n".join(self.tail)

    async def spawn(self, env: dict[str, str]) -> None:
        spec = self.spec
        args = [str(spec.python), "-c", LAUNCHER, "--host", "127.0.0.1"]
        if spec.mode == "train":
            args += ["--x-mode", "train"]
        if spec.upload_url:
            args += ["--upload-url", spec.upload_url]
        try:
            self.proc = await asyncio.create_subprocess_exec(
                *args,
                cwd=spec.model_dir,
                env=env,
                stdin=asyncio.subprocess.DEVNULL,
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.STDOUT,
                # Its own process group, so one killpg also reaches coglet's worker child.
                start_new_session=True,
                limit=1 << 20,
            )
        except OSError as err:
            raise BootError(f"cannot start {spec.python} in {spec.model_dir}: {err}") from err
        self._reader = asyncio.create_task(self._read_output())
        self._watcher = asyncio.create_task(self._watch())

    async def _read_output(self) -> None:
        # Always drained, so coglet never blocks on a full pipe.
        assert self.proc is not None and self.proc.stdout is not None
        stream = self.proc.stdout
        while True:
            try:
                raw = await stream.readline()
            except ValueError:  # a line longer than the limit: its start is dropped
                continue
            if not raw:
                return
            self._on_line(raw.decode("utf-8", "replace").rstrip("\n"))

    def _on_line(self, line: str) -> None:
        record: Any = None
        if line.startswith("{"):
            with contextlib.suppress(ValueError):
                record = json.loads(line)
        if not isinstance(record, dict):
            self.tail.append(line)
            self.output_seen.set()
            return
        self.tail.append(_readable(record))
        self.output_seen.set()
        fields = record.get("fields")
        if not isinstance(fields, dict) or "prediction_id" not in fields:
            return
        if fields.get("message") == "Prediction worker completed":
            self.streams_output = bool(fields.get("is_stream"))
        run = self.current
        if run is not None and run.id == fields["prediction_id"]:
            run.on_log_record(fields)

    async def _watch(self) -> None:
        assert self.proc is not None
        code = await self.proc.wait()
        if not self.retired:
            self.log.warning(
                "event=runner_exited key=%s pid=%d code=%s", self.spec.key, self.pid, code
            )
        self.kill()  # whatever is left of its process group
        self.output_seen.set()

    def kill(self) -> None:
        """SIGKILL coglet and its worker: Cog models have no teardown, and coglet's graceful
        stop takes ~2 s even when idle."""
        if self.proc is None:
            return
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.proc.pid, signal.SIGKILL)

    async def wait_closed(self, within: float = 5.0) -> None:
        tasks = [t for t in (self._watcher, self._reader) if t is not None]
        if tasks:
            await asyncio.wait(tasks, timeout=within)


class _QuietServer(uvicorn.Server):
    """uvicorn without its signal handlers: SIGTERM belongs to the worker, not to us."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


async def _output_settled(runner: _Runner, quiet: float = 0.05, within: float = 1.0) -> None:
    """Wait until the process has written nothing for ``quiet`` seconds (at most ``within``),
    so its last lines are in the tail."""
    with contextlib.suppress(TimeoutError):
        async with asyncio.timeout(within):
            while True:
                runner.output_seen.clear()
                try:
                    async with asyncio.timeout(quiet):
                        await runner.output_seen.wait()
                except TimeoutError:
                    return


def _base_key(spec: RunnerSpec) -> str:
    """What a fine-tune shares with its base version's processes: all but its weights."""
    return json.dumps(
        [
            str(spec.model_dir),
            str(spec.python),
            spec.predict_ref,
            sorted(spec.env.items()),
            spec.upload_url,
        ]
    )


class _Standby:
    """A base version's process started ahead for a fine-tune (see ``keep_standby``)."""

    def __init__(self, pool: RunnerPool, base: str, spec: RunnerSpec) -> None:
        self.pool = pool
        self.base = base
        self.source = spec  # what a replacement is made from
        self.spec = spec.model_copy(update={"key": f"standby:{spec.key}", "weights_ref": None})
        self.token = secrets.token_urlsafe(12)
        port = _free_port()
        self.runner = _Runner(pool._with_upload(self.spec), port, pool.log)
        self._ref: asyncio.Future[str | None] = asyncio.get_running_loop().create_future()
        self._spawned = asyncio.Event()
        self.asked = asyncio.Event()  # its setup() has asked for weights
        pool._by_token[self.token] = self
        env = pool._child_env(self.spec, port)
        env["COG_WEIGHTS"] = f"{pool._hook_base}standby/{self.token}"
        self._task = asyncio.create_task(self._run(env))

    async def _run(self, env: dict[str, str]) -> None:
        try:
            await self.runner.spawn(env)
            self.pool._spawned.add(self.runner)
        except BootError as err:
            self.pool.log.warning("event=standby_not_started error=%r", str(err))
            self.runner.retired = True
            return
        finally:
            self._spawned.set()
        self.pool.log.info("event=standby_started key=%s pid=%d", self.spec.key, self.runner.pid)
        # Models fetch their weights with a timeout: replace the standby well before it.
        await asyncio.sleep(STANDBY_TTL)
        if not self._ref.done():
            self.pool._standby_expired(self)

    async def waiting(self) -> bool:
        """Whether this standby can still be handed a fine-tune's weights."""
        await self._spawned.wait()
        return self.runner.alive and not self._ref.done()

    def assign(self, ref: str) -> None:
        self._ref.set_result(ref)

    async def assigned_ref(self) -> str | None:
        return await asyncio.shield(self._ref)

    def stop(self) -> None:
        """Stop an unadopted standby (its pending weights request fails)."""
        if not self._ref.done():
            self._ref.set_result(None)
            self.runner.retired = True
            self.runner.kill()
        self._task.cancel()


class RunnerPool:
    """Warm coglet processes, one per key, least recently used evicted beyond ``max_warm``."""

    def __init__(
        self,
        max_warm: int = 4,
        boot_timeout: float = 300.0,
        log: logging.Logger | None = None,
        *,
        cancel_grace: float = 5.0,
        update_interval: float = 0.25,
        upload: UploadSink | None = None,
        weights: WeightsCache | None = None,
        standby: bool = False,
    ) -> None:
        self.max_warm = max_warm
        self.standby = standby
        self.upload = upload
        self.weights = weights
        self.boot_timeout = boot_timeout
        self.cancel_grace = cancel_grace
        self.update_interval = update_interval
        self.log = log or logging.getLogger("replicant.runners")
        self._runners: collections.OrderedDict[str, _Runner] = collections.OrderedDict()
        # Instance indexes in use per key: index i runs under key "{key}#{i}" (0: the key).
        self._busy_instances: dict[str, set[int]] = {}
        self._boots: dict[str, asyncio.Task[_Runner]] = {}
        # Stored-weights references by digest, for the model processes that fetch them.
        self._weight_refs: dict[str, str] = {}
        # Every process started and not yet reaped, warm or not: close() waits for them all.
        self._spawned: set[_Runner] = set()
        self._runs: dict[str, _Run] = {}
        self._streams_output: dict[str, bool] = {}
        self._waiting: collections.Counter[str] = collections.Counter()
        # Fine-tunes' base processes started ahead, their setup() waiting for weights.
        self._standbys: dict[str, _Standby] = {}
        self._standby_wanted: dict[str, float] = {}
        self._by_token: dict[str, _Standby] = {}
        self._secret = secrets.token_urlsafe(16)
        self._client: httpx.AsyncClient | None = None
        # The predictions themselves go through aiohttp: on the path of every prediction,
        # it costs a third of httpx's CPU per call (health checks and cancels use httpx).
        self._session: aiohttp.ClientSession | None = None
        self._server: _QuietServer | None = None
        self._serve_task: asyncio.Task[None] | None = None
        self._hook_base = ""
        self._started = False
        self._closed = False
        self._start_lock = asyncio.Lock()

    # -- lifecycle -------------------------------------------------------------------------

    async def start(self) -> None:
        """Start the HTTP client and the internal webhook receiver (idempotent)."""
        if self._started:
            return
        async with self._start_lock:
            if self._started:
                return
            if self._closed:
                raise RuntimeError("the runner pool is closed")
            # trust_env=False: a proxy from the environment must never sit before 127.0.0.1.
            self._client = httpx.AsyncClient(trust_env=False, timeout=httpx.Timeout(10.0))
            self._session = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0))
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            sock.bind(("127.0.0.1", 0))
            sock.listen(128)
            app = Starlette(
                routes=[
                    Route("/{secret}/{prediction_id}", self._on_webhook, methods=["POST"]),
                    Route("/{secret}/upload/{filename:path}", self._on_upload, methods=["PUT"]),
                    Route("/{secret}/weights/{digest}/{name}", self._on_weights, methods=["GET"]),
                    Route("/{secret}/standby/{token}", self._on_standby, methods=["GET"]),
                ]
            )
            config = uvicorn.Config(
                app,
                log_config=None,
                log_level="warning",
                access_log=False,
                lifespan="off",
                timeout_graceful_shutdown=1,
            )
            self._server = _QuietServer(config)
            self._serve_task = asyncio.create_task(self._server.serve(sockets=[sock]))
            while not self._server.started:
                if self._serve_task.done():
                    self._serve_task.result()
                    raise RuntimeError("the webhook receiver stopped while starting")
                await asyncio.sleep(0.005)
            port = sock.getsockname()[1]
            self._hook_base = f"http://127.0.0.1:{port}/{self._secret}/"
            atexit.register(self._kill_all)
            self._started = True
            self.log.info("event=pool_started webhook_port=%d max_warm=%d", port, self.max_warm)

    async def close(self) -> None:
        """Stop every coglet process and the webhook receiver."""
        self._closed = True
        for standby in list(self._standbys.values()):
            self._drop_standby(standby)
        for boot in list(self._boots.values()):
            boot.cancel()
        if self._boots:
            await asyncio.wait(list(self._boots.values()), timeout=10)
        runners = list(self._spawned)
        self._runners.clear()
        self._spawned.clear()
        for runner in runners:
            runner.retired = True
            runner.kill()
        await asyncio.gather(*(r.wait_closed() for r in runners))
        if self._server is not None and self._serve_task is not None:
            self._server.should_exit = True
            with contextlib.suppress(Exception):
                await self._serve_task
        if self._client is not None:
            await self._client.aclose()
        if self._session is not None:
            await self._session.close()
        atexit.unregister(self._kill_all)
        self.log.info("event=pool_closed stopped=%d", len(runners))

    def _kill_all(self) -> None:
        # Last resort at interpreter exit when close() was never awaited.
        for runner in list(self._spawned):
            runner.kill()

    def warm_keys(self) -> list[str]:
        """Keys of the live warm processes, least recently used first."""
        return [key for key, runner in self._runners.items() if runner.alive]

    def pid(self, key: str) -> int | None:
        """The coglet process id of a warm key (for tests and diagnostics)."""
        runner = self._runners.get(key)
        return runner.pid if runner is not None and runner.alive else None

    # -- predictions -----------------------------------------------------------------------

    async def predict(
        self,
        spec: RunnerSpec,
        prediction_id: str,
        input: dict[str, Any],
        on_update: Callable[[CogPrediction], Awaitable[None]] | None = None,
        on_booted: Callable[[], Awaitable[None]] | None = None,
    ) -> CogPrediction:
        """Run one prediction (or training, by ``spec.mode``) and return its terminal state.

        Boots a process for ``spec.key`` when none is warm, awaits ``on_booted`` once it is
        handed over, passes intermediate states to ``on_update`` (at most every
        ``update_interval``), and returns the terminal one. Cancelling the awaiting task
        cancels the prediction in coglet (killing and restarting the process if it does not
        stop within ``cancel_grace``), then re-raises.
        """
        await self.start()
        instance, index = self._claim_instance(spec)
        try:
            return await self._predict(instance, prediction_id, input, on_update, on_booted)
        finally:
            self._release_instance(spec.key, index)

    def _claim_instance(self, spec: RunnerSpec) -> tuple[RunnerSpec, int]:
        """The process this run gets: the first idle one of its key (one run per process), so
        concurrent runs of one version on a queue with several slots run side by side."""
        busy = self._busy_instances.setdefault(spec.key, set())
        index = next(i for i in range(len(busy) + 1) if i not in busy)
        busy.add(index)
        if index == 0:
            return spec, index
        return spec.model_copy(update={"key": f"{spec.key}#{index}"}), index

    def _release_instance(self, key: str, index: int) -> None:
        busy = self._busy_instances.get(key)
        if busy is not None:
            busy.discard(index)
            if not busy:
                del self._busy_instances[key]

    async def _predict(
        self,
        spec: RunnerSpec,
        prediction_id: str,
        input: dict[str, Any],
        on_update: Callable[[CogPrediction], Awaitable[None]] | None,
        on_booted: Callable[[], Awaitable[None]] | None,
    ) -> CogPrediction:
        booted_called = False
        for attempt in range(2):
            runner = await self._checkout(spec)
            webhook = on_update is not None and self._wants_webhook(spec)
            run = _Run(prediction_id, runner, webhook)
            self._runs[prediction_id] = run
            runner.current = run
            run.task = asyncio.create_task(self._execute(runner, run, input))
            try:
                if on_booted is not None and not booted_called:
                    booted_called = True
                    await on_booted()
                return await self._follow(run, run.task, on_update)
            except _NotHandedOver as err:
                if attempt:
                    raise BootError(
                        "the model process exited before it took the prediction",
                        runner.output_tail(),
                    ) from err
                self.log.warning("event=runner_gone key=%s retry=1", spec.key)
            except BaseException:
                # Cancelled (timeout, workflow cancel) or a callback failed: stop the run.
                await asyncio.shield(self._stop(run))
                raise
        raise AssertionError("unreachable")

    async def cancel(self, prediction_id: str) -> None:
        """Cancel a running prediction; its ``predict`` call then returns it ``canceled``."""
        run = self._runs.get(prediction_id)
        if run is None:
            self.log.info("event=cancel_unknown prediction=%s", prediction_id)
            return
        await asyncio.shield(self._stop(run))

    def _wants_webhook(self, spec: RunnerSpec) -> bool:
        if spec.streams_output is not None:
            return spec.streams_output
        # Unknown until the first run of the key reports it: stream to be safe.
        return self._streams_output.get(spec.key, True)

    async def _follow(
        self,
        run: _Run,
        task: asyncio.Task[CogPrediction],
        on_update: Callable[[CogPrediction], Awaitable[None]] | None,
    ) -> CogPrediction:
        """Wait for the run, passing changed states to ``on_update`` on the way."""
        if on_update is None:
            return await asyncio.shield(task)
        last: CogPrediction | None = None
        while not task.done():
            changed = asyncio.ensure_future(run.changed.wait())
            try:
                await asyncio.wait({task, changed}, return_when=asyncio.FIRST_COMPLETED)
            finally:
                changed.cancel()
            if task.done():
                break
            run.changed.clear()
            state = run.snapshot()
            if state != last:
                last = state
                await on_update(state)
                # Throttle: a chatty model must not turn into a flood of callbacks.
                await asyncio.wait({task}, timeout=self.update_interval)
        return task.result()

    async def _execute(self, runner: _Runner, run: _Run, input: dict[str, Any]) -> CogPrediction:
        """Send the prediction to coglet and settle its terminal state; frees the runner."""
        started = time.perf_counter()
        kind = "trainings" if runner.spec.mode == "train" else "predictions"
        body: dict[str, Any] = {"input": input}
        if run.webhook:
            body["webhook"] = self._hook_base + quote(run.id, safe="")
            body["webhook_events_filter"] = ["output", "logs", "completed"]
        try:
            result = await self._send(
                runner, run, f"{runner.url}/{kind}/{quote(run.id, safe='')}", body
            )
            if result.status in ("failed", "canceled") and runner.alive:
                await self._settle_failure(runner, run, result)
            _explain_model_error(result)
            self.log.info(
                "event=prediction_done key=%s prediction=%s status=%s webhook=%s seconds=%.4f",
                runner.spec.key,
                run.id,
                result.status,
                run.webhook,
                time.perf_counter() - started,
            )
            return result
        finally:
            if runner.streams_output is not None:
                self._streams_output[runner.spec.key] = runner.streams_output
            if self._runs.get(run.id) is run:
                del self._runs[run.id]
            runner.current = None
            runner.lock.release()
            self._evict_idle()

    async def _send(
        self, runner: _Runner, run: _Run, url: str, body: dict[str, Any]
    ) -> CogPrediction:
        deadline = time.monotonic() + AT_CAPACITY_RETRY_FOR
        delay = 0.001
        while True:
            if run.cancel_requested:
                return CogPrediction(status="canceled")
            try:
                status, content = await self._put(url, body)
            except (aiohttp.ClientError, TimeoutError) as err:
                # The process died: crashed, OOM-killed, or killed by us after a cancel.
                runner.retired = True
                runner.kill()
                await runner.wait_closed(within=2.0)  # its output, read to the end
                if run.cancel_requested:
                    return CogPrediction(status="canceled", logs=run.stream_logs)
                if not run.started:
                    raise _NotHandedOver() from err  # the model never ran: safe to retry
                return CogPrediction(status="failed", error=PROCESS_DIED, logs=run.stream_logs)
            # coglet answers 409 to a share of back-to-back calls while it frees its slot.
            if status in (409, 503) and time.monotonic() < deadline:
                await asyncio.sleep(delay)
                delay = min(delay * 2, 0.05)
                continue
            break
        if status == 200:
            try:
                return _prediction(json.loads(content))
            except ValueError:
                pass
        if status == 422:
            with contextlib.suppress(ValueError, TypeError, KeyError, IndexError):
                detail = json.loads(content)["detail"]
                error = "; ".join(f"{d['loc'][-1]}: {d['msg']}" for d in detail)
                return CogPrediction(status="failed", error=error)
        if status == 409:
            # The slot never came free: the process is stuck; do not reuse it.
            runner.retired = True
            runner.kill()
        text = content.decode("utf-8", "replace")[:500]
        return CogPrediction(status="failed", error=f"coglet answered HTTP {status}: {text}")

    async def _put(self, url: str, body: dict[str, Any]) -> tuple[int, bytes]:
        """PUT a prediction to coglet: its HTTP status and body."""
        assert self._session is not None
        async with self._session.put(url, json=body, timeout=PUT_TIMEOUT) as response:
            return response.status, await response.read()

    async def _settle_failure(self, runner: _Runner, run: _Run, result: CogPrediction) -> None:
        """Fill in the logs coglet leaves out of a failed or canceled answer; retire the
        process if the failure broke its slot (a crashed worker leaves coglet UNHEALTHY)."""
        if not result.logs:
            if run.webhook:
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(1.0):
                        await run.hook_terminal.wait()
                if run.best is not None:
                    result.logs = str(run.best.get("logs") or "")
                    if result.output is None:
                        # The partial output of an iterator that failed or was canceled.
                        result.output = run.best.get("output")
            if not result.logs:
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(0.5):
                        await run.logs_done.wait()
                result.logs = run.stream_logs
        status, _ = await self._health(runner)
        if status not in ("READY", "BUSY"):
            self.log.warning(
                "event=runner_unhealthy key=%s pid=%d health=%s",
                runner.spec.key,
                runner.pid,
                status,
            )
            self._retire(runner)

    async def _stop(self, run: _Run) -> None:
        """Cancel a run in coglet and wait until its slot is free (idempotent)."""
        if run.stopper is None:
            run.stopper = asyncio.create_task(self._cancel_and_settle(run))
        await run.stopper

    async def _cancel_and_settle(self, run: _Run) -> None:
        task, runner = run.task, run.runner
        assert task is not None and self._client is not None
        run.cancel_requested = True
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.cancel_grace
        kind = "trainings" if runner.spec.mode == "train" else "predictions"
        url = f"{runner.url}/{kind}/{quote(run.id, safe='')}/cancel"
        self.log.info("event=cancel key=%s prediction=%s", runner.spec.key, run.id)
        while not task.done() and loop.time() < deadline:
            try:
                response = await self._client.post(url, timeout=2.0)
            except httpx.TransportError:
                break
            if response.status_code == 200:
                break
            # 404: coglet has not registered the prediction yet (or just finished it).
            await asyncio.wait({task}, timeout=0.02)
        await asyncio.wait({task}, timeout=max(deadline - loop.time(), 0))
        if not task.done():
            # A model stuck in C code (time.sleep, a CUDA call) never sees coglet's cancel.
            self.log.warning(
                "event=cancel_timeout key=%s prediction=%s pid=%d action=kill_and_restart",
                runner.spec.key,
                run.id,
                runner.pid,
            )
            self._retire(runner, restart=True)
            await asyncio.wait({task}, timeout=10)

    # -- processes -------------------------------------------------------------------------

    async def _checkout(self, spec: RunnerSpec) -> _Runner:
        """A ready runner for ``spec.key`` with its lock held, booting one if needed."""
        # Counted as waiting, the key's process is never evicted between boot and use.
        self._waiting[spec.key] += 1
        try:
            while True:
                if self._closed:
                    raise RuntimeError("the runner pool is closed")
                runner = self._runners.get(spec.key)
                if runner is not None and runner.alive:
                    await runner.lock.acquire()
                    if runner.alive and self._runners.get(spec.key) is runner:
                        self._runners.move_to_end(spec.key)
                        return runner
                    runner.lock.release()
                    continue
                if runner is not None:
                    self._retire(runner)
                boot = self._boots.get(spec.key) or self._start_boot(spec)
                await asyncio.shield(boot)
        finally:
            self._waiting[spec.key] -= 1
            if not self._waiting[spec.key]:
                del self._waiting[spec.key]

    def _start_boot(self, spec: RunnerSpec) -> asyncio.Task[_Runner]:
        """One boot per key, shared by everyone who waits for it."""
        self._evict_idle(extra=1)
        task = asyncio.create_task(self._boot(spec))
        self._boots[spec.key] = task

        def done(t: asyncio.Task[_Runner]) -> None:
            if self._boots.get(spec.key) is t:
                del self._boots[spec.key]
            if not t.cancelled() and t.exception() is not None:
                self.log.warning("event=boot_failed key=%s error=%r", spec.key, str(t.exception()))

        task.add_done_callback(done)
        return task

    def _child_env(self, spec: RunnerSpec, port: int) -> dict[str, str]:
        env = {k: os.environ[k] for k in PASSTHROUGH_ENV if k in os.environ}
        env.update(spec.env)
        path = env.get("PATH") or os.environ.get("PATH") or os.defpath
        # coglet starts its worker with the `python` found on PATH: the model's env first.
        env["PATH"] = os.pathsep.join([str(spec.python.parent), path])
        env.pop("RUST_LOG", None)
        env.update(
            {
                "PORT": str(port),
                # The pool reads prediction logs from coglet's JSON log lines at INFO.
                "LOG_FORMAT": "json",
                "COG_LOG_LEVEL": "info",
                "COG_THROTTLE_RESPONSE_INTERVAL": str(self.update_interval),
                "REPLICANT_POOL_PID": str(os.getpid()),
            }
        )
        if spec.mode == "train":
            if not spec.train_ref:
                raise ValueError(f"runner {spec.key} is in train mode but has no train_ref")
            ref, stub = spec.train_ref, "COG_TRAIN_TYPE_STUB"
        else:
            ref, stub = spec.predict_ref, "COG_PREDICT_TYPE_STUB"
        # coglet loads workers/model_entry.py, which loads the model's own class or function
        # and adds the traceback of an exception to the logs (coglet reports only its line).
        env["REPLICANT_MODEL_REF"] = ref
        env[stub] = f"{MODEL_ENTRY}:{ref.partition(':')[2]}"
        return env

    async def _boot(self, spec: RunnerSpec) -> _Runner:
        started = time.perf_counter()
        self._spawned = {r for r in self._spawned if not r.exited}
        if spec.weights_ref and self.standby:
            self.keep_standby(spec)  # for the next fine-tune of this base, too
            adopted = await self._adopt_standby(spec)
            if adopted is not None:
                return self._ready(spec, adopted, started)
        for attempt in range(3):
            port = _free_port()
            runner = _Runner(self._with_upload(spec), port, self.log)
            fetch: asyncio.Task[None] | None = None
            try:
                env = self._child_env(spec, port)
                if spec.weights_ref:
                    # The weights download while coglet and the model start; the model's
                    # request for them waits for the download (see _on_weights).
                    env["COG_WEIGHTS"] = self._weights_url(spec.weights_ref)
                    fetch = asyncio.create_task(self._fetch_weights(spec.weights_ref))
                await runner.spawn(env)
                self._spawned.add(runner)
                try:
                    await self._wait_ready(runner)
                except BootError:
                    if fetch is not None and fetch.done() and fetch.exception() is not None:
                        fetch.result()  # the cause: the weights, not the model
                    raise
                if fetch is not None:
                    await fetch
            except BootError as err:
                runner.retired = True
                runner.kill()
                await runner.wait_closed()
                if "address already in use" in err.logs.lower() and attempt < 2:
                    continue  # another process took the free port first
                raise
            except BaseException:
                runner.retired = True
                runner.kill()
                raise
            finally:
                if fetch is not None and not fetch.done():
                    fetch.cancel()
            return self._ready(spec, runner, started)
        raise AssertionError("unreachable")

    def _ready(self, spec: RunnerSpec, runner: _Runner, started: float) -> _Runner:
        """Register a booted process as the warm one of ``spec.key``."""
        if self._closed:
            runner.retired = True
            runner.kill()
            raise RuntimeError("the runner pool is closed")
        self._runners[spec.key] = runner
        self._runners.move_to_end(spec.key)
        self.log.info(
            "event=runner_ready key=%s pid=%d port=%d boot_seconds=%.3f",
            spec.key,
            runner.pid,
            runner.port,
            time.perf_counter() - started,
        )
        self._evict_idle()
        return runner

    async def _health(self, runner: _Runner) -> tuple[str | None, dict[str, Any]]:
        """coglet's /health-check status (None when it does not answer) and its body."""
        assert self._client is not None
        try:
            response = await self._client.get(f"{runner.url}/health-check", timeout=2.0)
            body = response.json()
        except (httpx.HTTPError, ValueError):
            return None, {}
        if not isinstance(body, dict) or body.get("status") is None:
            return None, {}
        return str(body["status"]), body

    async def _wait_ready(self, runner: _Runner) -> None:
        """Poll /health-check until READY; woken early by every line coglet writes."""
        assert runner.proc is not None
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.boot_timeout
        interval = 0.01
        while True:
            runner.output_seen.clear()
            if runner.proc.returncode is not None:
                await runner.wait_closed(within=1.0)
                raise BootError(
                    f"coglet exited with code {runner.proc.returncode} before it was ready",
                    runner.output_tail(),
                )
            status, body = await self._health(runner)
            if status in ("READY", "BUSY"):
                return
            if status == "SETUP_FAILED":
                raise await self._setup_failed(runner, body)
            if status == "DEFUNCT":
                raise BootError("coglet reported DEFUNCT while booting", runner.output_tail())
            if _worker_exited(runner.pid):
                # coglet reports SETUP_FAILED (with the model's error) a moment after its
                # worker exits: ask again briefly before settling for the bare fact.
                for _ in range(SETUP_FAILED_CHECKS):
                    await asyncio.sleep(0.05)
                    status, body = await self._health(runner)
                    if status == "SETUP_FAILED":
                        raise await self._setup_failed(runner, body)
                await _output_settled(runner)
                raise BootError(
                    "the model's worker process exited during setup", runner.output_tail()
                )
            if loop.time() > deadline:
                raise BootError(
                    f"setup did not finish within {self.boot_timeout:g} s", runner.output_tail()
                )
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(interval):
                    await runner.output_seen.wait()
            interval = min(interval * 1.5, 0.25)

    async def _setup_failed(self, runner: _Runner, body: dict[str, Any]) -> BootError:
        """The BootError of a failed setup(): the model's error, and its output to the end."""
        setup_logs = str((body.get("setup") or {}).get("logs") or "")
        await _output_settled(runner)
        return BootError(_setup_error(setup_logs), runner.output_tail())

    def _retire(self, runner: _Runner, restart: bool = False) -> None:
        """Kill a process and forget it; optionally boot its replacement in the background."""
        runner.retired = True
        runner.kill()
        key = runner.spec.key
        if self._runners.get(key) is runner:
            del self._runners[key]
        if restart and not self._closed and key not in self._boots:
            self._start_boot(runner.spec)

    def _evict_idle(self, extra: int = 0) -> None:
        """Stop least recently used idle processes beyond ``max_warm`` (never a busy one)."""
        while True:
            booting = sum(1 for key in self._boots if key not in self._runners)
            if len(self._runners) + booting + extra <= self.max_warm:
                return
            idle = [
                r
                for key, r in self._runners.items()
                if not r.lock.locked() and key not in self._waiting
            ]
            if not idle:
                return
            victim = idle[0]
            self.log.info("event=runner_evicted key=%s pid=%d", victim.spec.key, victim.pid)
            self._retire(victim)

    # -- fine-tune standbys ----------------------------------------------------------------
    #
    # A fine-tune runs its base version's code in the base version's environment with its
    # own weights (COG_WEIGHTS). A standby is a process of that base started ahead of need,
    # with COG_WEIGHTS pointing at this pool: its coglet, Python and imports are up and its
    # setup() waits on the weights request. A fine-tune that boots adopts it and hands it its
    # weights, so its cold start is the weights and setup()'s own work, not a process start.

    def keep_standby(self, spec: RunnerSpec) -> None:
        """Keep a standby for the base of fine-tune ``spec`` (started in the background);
        one per base, replaced when adopted or stale, for ``STANDBY_KEEP`` seconds."""
        if not self.standby or self._closed or spec.mode != "predict":
            return
        base = _base_key(spec)
        self._standby_wanted[base] = time.monotonic()
        current = self._standbys.get(base)
        if current is None or not current.runner.alive:
            self._standbys[base] = _Standby(self, base, spec)

    async def standby_ready(self, spec: RunnerSpec, within: float = 60.0) -> bool:
        """Wait until the standby for ``spec``'s base waits for its weights (diagnostics,
        benchmarks and tests); False when there is none or it did not get there in time."""
        standby = self._standbys.get(_base_key(spec))
        if standby is None:
            return False
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(within):
                await standby.asked.wait()
        return standby.asked.is_set() and await standby.waiting()

    async def _adopt_standby(self, spec: RunnerSpec) -> _Runner | None:
        """The standby of ``spec``'s base, handed its weights and READY; None when there is
        none to adopt (or it failed: the caller boots a process the usual way)."""
        standby = self._standbys.get(_base_key(spec))
        if standby is None or not await standby.waiting():
            return None
        assert spec.weights_ref is not None
        self._weights_url(spec.weights_ref)  # a bad reference fails here, standby kept
        await self._fetch_weights(spec.weights_ref)
        if self._standbys.get(standby.base) is not standby or not await standby.waiting():
            return None  # taken by another fine-tune meanwhile
        del self._standbys[standby.base]
        runner = standby.runner
        runner.spec = self._with_upload(spec)
        try:
            standby.assign(spec.weights_ref)
            await self._wait_ready(runner)
        except BootError as err:
            self.log.warning("event=standby_failed key=%s error=%r", spec.key, str(err))
            runner.retired = True
            runner.kill()
            return None
        finally:
            self.keep_standby(spec)
        self.log.info("event=standby_adopted key=%s pid=%d", spec.key, runner.pid)
        return runner

    def _drop_standby(self, standby: _Standby) -> None:
        if self._standbys.get(standby.base) is standby:
            del self._standbys[standby.base]
        standby.stop()

    def _standby_expired(self, standby: _Standby) -> None:
        """A standby waited ``STANDBY_TTL``: replace it while its base is still in use."""
        self._drop_standby(standby)
        wanted = self._standby_wanted.get(standby.base, 0.0)
        if time.monotonic() - wanted < STANDBY_KEEP and not self._closed:
            self._standbys[standby.base] = _Standby(self, standby.base, standby.source)
        else:
            self._standby_wanted.pop(standby.base, None)

    async def _on_standby(self, request: Request) -> Response:
        """A standby's setup() asks for its weights: answer once a fine-tune adopts it."""
        if not secrets.compare_digest(request.path_params["secret"], self._secret):
            return Response(status_code=404)
        standby = self._by_token.get(request.path_params["token"])
        if standby is None:
            return Response(status_code=404)
        standby.asked.set()
        ref = await standby.assigned_ref()
        self._by_token.pop(standby.token, None)
        if ref is None:  # stopped before any fine-tune took it: its setup() fails
            return Response(status_code=410)
        key, digest = parse_store_ref(ref)
        return await self._serve_weights(digest, file_name(key))

    # -- weights ---------------------------------------------------------------------------

    def _weights_url(self, ref: str) -> str:
        """A URL of the stored weights that the model process can fetch (never expires);
        known before the weights are cached."""
        if self.weights is None:
            raise BootError("this worker has no weights cache for stored weights")
        try:
            key, digest = parse_store_ref(ref)
        except WeightsError as err:
            raise BootError(f"cannot load the version's weights: {err}") from err
        self._weight_refs[digest] = ref
        return f"{self._hook_base}weights/{digest}/{file_name(key)}"

    async def _fetch_weights(self, ref: str) -> None:
        """Materialize the weights in the cache (once per digest, however many ask)."""
        assert self.weights is not None
        try:
            await self.weights.materialize(ref)
        except WeightsError as err:
            raise BootError(f"cannot load the version's weights: {err}") from err

    async def _on_weights(self, request: Request) -> Response:
        if not secrets.compare_digest(request.path_params["secret"], self._secret):
            return Response(status_code=404)
        return await self._serve_weights(request.path_params["digest"], request.path_params["name"])

    async def _serve_weights(self, digest: str, name: str) -> Response:
        if self.weights is None:
            return Response(status_code=404)
        path = self.weights.cached(digest, name)
        ref = self._weight_refs.get(digest)
        if path is None and ref is not None:
            # A model booting while its weights download: answer once they are here.
            with contextlib.suppress(BootError):
                await self._fetch_weights(ref)
            path = self.weights.cached(digest, name)
        if path is None:
            return Response(status_code=404)
        return FileResponse(path, media_type="application/octet-stream")

    # -- webhook receiver ------------------------------------------------------------------

    async def _on_webhook(self, request: Request) -> Response:
        if not secrets.compare_digest(request.path_params["secret"], self._secret):
            return Response(status_code=404)
        run = self._runs.get(request.path_params["prediction_id"])
        if run is not None:
            try:
                payload = json.loads(await request.body())
            except ValueError:
                return Response(status_code=400)
            if isinstance(payload, dict):
                run.offer(payload)
        # 200 for late deliveries too, so coglet does not retry them.
        return Response(status_code=200)

    # -- output files ----------------------------------------------------------------------

    def _with_upload(self, spec: RunnerSpec) -> RunnerSpec:
        """Point coglet's uploads of a prediction's output files at this pool's sink."""
        if self.upload is None or spec.upload_url is not None or spec.mode != "predict":
            return spec
        return spec.model_copy(update={"upload_url": f"{self._hook_base}upload/"})

    async def _on_upload(self, request: Request) -> Response:
        """coglet PUTs each output file here (``--upload-url``); the sink stores it and its URL
        goes back in ``Location``, which coglet puts in the output instead of a data URI."""
        if self.upload is None or not secrets.compare_digest(
            request.path_params["secret"], self._secret
        ):
            return Response(status_code=404)
        prediction_id = request.headers.get("x-prediction-id", "")
        if prediction_id not in self._runs:
            return Response(status_code=404)
        try:
            url = await self.upload(
                prediction_id,
                request.path_params["filename"],
                request.headers.get("content-type"),
                request.stream(),
            )
        except Exception as err:
            self.log.warning(
                "event=output_upload_failed prediction=%s type=%s",
                prediction_id,
                type(err).__name__,
            )
            return Response(status_code=500)
        return Response(status_code=201, headers={"Location": url})


__all__ = ["BootError", "CogPrediction", "RunnerPool", "RunnerSpec", "UploadSink"]
