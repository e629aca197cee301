"""One coglet process: its environment, start, output (read to the end) and kill."""

from __future__ import annotations

import asyncio
import collections
import contextlib
import itertools
import logging
import os
import shutil
import signal
import socket
import tempfile
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any
from urllib.parse import urljoin

from replicant import sandbox, tracing
from replicant.cogmodel import model_environment
from replicant.egress import PROXY_PORT, proxy_env
from replicant.runner import BootError, RunnerSpec
from replicant.sandbox import LINKS, RUN_DIR, Launch, Mounts, SandboxConfig
from workers.runners.cgroups import MemoryCgroup, oom_counter, read_oom_kills
from workers.runners.coglet import parse_log_line

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
# With a memory limit it first enters its own memory cgroup (see cgroups.py), so coglet and
# everything it starts are in it from their first allocation (a sandboxed one is put there
# before its sandbox starts). In a sandbox it first forks: the parent forwards the links to
# the worker (REPLICANT_LINKS, see ``ModelSandbox``) and exits with coglet's status, the
# child runs coglet, whose only child is then its own worker (see ``worker_exited``).
LAUNCHER = (
    """\
import ctypes, os, runpy, signal, sys
parent = int(os.environ.pop("REPLICANT_POOL_PID", "0"))
cgroup = os.environ.pop("REPLICANT_CGROUP_PROCS", "")
try:
    ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
except (AttributeError, OSError):
    pass
if parent and os.getppid() != parent:
    sys.exit("replicant: the runner pool exited before coglet started")
if cgroup:
    try:
        with open(cgroup, "w") as procs:
            procs.write(str(os.getpid()))
    except OSError as err:
        sys.exit(f"replicant: cannot enter the model's memory cgroup {cgroup}: {err}")
"""
    + LINKS
    + """\
runpy.run_module("cog.server.http", run_name="__main__", alter_sys=True)
"""
)

# Loaded by coglet in place of the model's own predictor or trainer (see its docstring).
MODEL_ENTRY = Path(__file__).resolve().parent.parent / "model_entry.py"

OUTPUT_TAIL_LINES = 300

# Where a sandboxed model's code is (its files read-only; its working directory, where it
# may write new files), as in Cog's images.
MODEL_DIR = "/src"


# Ports of sandboxed coglets with a network namespace of their own: any port is free in
# there, and one per live process keeps their URLs (the client's routes) apart.
_SANDBOX_PORTS = itertools.cycle(range(20000, 60000))


def sandbox_port() -> int:
    """A port for coglet inside a network namespace of its own."""
    return next(_SANDBOX_PORTS)


def free_port() -> int:
    """A TCP port on 127.0.0.1 that is free now (a process may still take it first)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def child_env(spec: RunnerSpec, port: int, update_interval: float) -> dict[str, str]:
    """coglet's environment: the passed-through variables, the spec's, and coglet's own."""
    env = {k: os.environ[k] for k in PASSTHROUGH_ENV if k in os.environ}
    env.update(model_environment(spec.model_dir))  # cog.yaml's `environment:`
    env.update(spec.env)
    path = env.get("PATH") or os.environ.get("PATH") or os.defpath
    # coglet starts its worker with the `python` found on PATH: the model's env first.
    env["PATH"] = os.pathsep.join([str(spec.python.parent), path])
    env.pop("RUST_LOG", None)
    env.update(tracing.model_env())  # traced: the model's spans join its prediction's trace
    env.update(
        {
            "PORT": str(port),
            # The pool reads prediction logs from coglet's JSON log lines at INFO.
            "LOG_FORMAT": "json",
            "COG_LOG_LEVEL": "info",
            "COG_THROTTLE_RESPONSE_INTERVAL": str(update_interval),
            "REPLICANT_POOL_PID": str(os.getpid()),
            # A streaming prediction's logs past this are held back by model_entry.py.
            "REPLICANT_MAX_LOG_SIZE": str(spec.max_logs),
        }
    )
    if spec.concurrency > 1:
        # coglet reads the model's concurrency from here (the Go CLI sets it in an image).
        env["COG_MAX_CONCURRENCY"] = str(spec.concurrency)
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


# Caches a model may read (read-only) when the operator points them at a shared directory.
SHARED_CACHES = ("HF_HOME", "HF_HUB_CACHE", "TORCH_HOME", "XDG_CACHE_HOME")


class ModelSandbox:
    """The sandbox of one coglet process (``replicant/sandbox.py``): its directory on the
    host (``tmp``, its /tmp; ``src``, under the model's code at /src, where it may write
    new files; ``run``, its RUN_DIR with coglet's socket; ``inputs``, the input files of
    its runs, read-only inside) and the links to the worker.

    Its network namespace has only loopback: the worker reaches coglet through
    ``coglet.sock`` (a forwarder inside to coglet's port), and with a ``receiver`` (the
    pool's Unix socket and TCP port) coglet's uploads, webhooks and weights requests reach
    the pool's receiver through a forwarder listening on the receiver's port inside, so
    every URL the worker hands out stays the same. With an ``egress`` proxy's socket
    (``model_egress=public``), a forwarder on port ``PROXY_PORT`` reaches it, named in the
    process's ``HTTP_PROXY``/``HTTPS_PROXY``. When the worker traces, the model's spans go
    to ``spans``, the receiver's relay to the collector (``workers/runners/spans.py``)."""

    def __init__(
        self,
        config: SandboxConfig,
        receiver: tuple[Path, int] | None,
        egress: Path | None,
        spans: str | None = None,
    ) -> None:
        self.config = config
        self.receiver = receiver
        self.egress = egress
        self.spans = spans
        self.root = Path(tempfile.mkdtemp(prefix=sandbox.scratch_prefix("model")))
        self.root.chmod(0o711)
        for name in ("tmp", "run", "src"):
            (self.root / name).mkdir()
            sandbox.give_to_model(config, self.root / name)
        self.inputs = self.root / "inputs"
        self.inputs.mkdir(mode=0o755)
        # cog.yaml's managed weights: their directories by their target inside, read-only.
        self.weights: dict[str, Path] = {}
        uid, gid = config.uid, config.gid
        (self.root / "passwd").write_text(sandbox.passwd_file(uid, gid), encoding="utf-8")
        (self.root / "group").write_text(f"root:x:0:\nmodel:x:{gid}:\n", encoding="utf-8")

    @property
    def socket(self) -> Path:
        """coglet's HTTP, as the worker reaches it."""
        return self.root / "run" / "coglet.sock"

    def take_inputs(self, run_id: str, value: Any) -> tuple[Any, Path | None]:
        """``value`` (a run's input) with each file the run activity staged for this run
        (under ``<tmp>/replicant-<run id>-``) linked into the sandbox's ``inputs`` and named
        by its path inside; and the run's directory there (None: no files), to remove
        with ``drop_inputs`` after the run. Other paths stay as they are, unreachable."""
        staged = f"{tempfile.gettempdir()}/replicant-{run_id}-"
        run_dir: Path | None = None

        def take(item: Any) -> Any:
            nonlocal run_dir
            if isinstance(item, dict):
                return {k: take(v) for k, v in item.items()}
            if isinstance(item, list):
                return [take(v) for v in item]
            if not (isinstance(item, str) and item.startswith(staged)):
                return item
            source = Path(item)
            if ".." in source.parts or not source.is_file():
                return item
            if run_dir is None:
                run_dir = Path(tempfile.mkdtemp(dir=self.inputs))
                run_dir.chmod(0o755)
            dest = Path(tempfile.mkdtemp(dir=run_dir)) / source.name
            dest.parent.chmod(0o755)
            try:
                os.link(source, dest)
            except OSError:
                shutil.copyfile(source, dest)
            dest.chmod(0o644)
            return f"{RUN_DIR}/inputs/{dest.relative_to(self.inputs)}"

        return take(value), run_dir

    def launch(
        self, spec: RunnerSpec, env: dict[str, str], command: list[str], cgroup: Path | None
    ) -> Launch:
        """The argv (and descriptors) that start ``command`` for ``spec`` in the sandbox;
        ``env`` is adjusted for it."""
        port = env["PORT"]
        links = [f"unix:{RUN_DIR}/coglet.sock=tcp:127.0.0.1:{port}"]
        mounts = Mounts(
            read_only={
                str(MODEL_ENTRY): MODEL_ENTRY,
                "/etc/passwd": self.root / "passwd",
                "/etc/group": self.root / "group",
                f"{RUN_DIR}/inputs": self.inputs,
            },
            writable={"/tmp": self.root / "tmp", RUN_DIR: self.root / "run"},
        )
        mounts.add_code(MODEL_DIR, spec.model_dir, self.root / "src")
        mounts.read_only.update(self.weights)  # over a directory of the model's own, too
        mounts.add_python(spec.python)
        for name in SHARED_CACHES:
            cache = Path(env.get(name, ""))
            if cache.is_absolute() and cache.is_dir():
                mounts.read_only[str(cache)] = cache
        if self.receiver is not None and self.config.own_network:
            path, receiver_port = self.receiver
            mounts.writable[f"{RUN_DIR}/receiver.sock"] = path
            links.append(f"tcp:127.0.0.1:{receiver_port}=unix:{RUN_DIR}/receiver.sock")
            if self.spans is not None and tracing.MODEL_ENDPOINT in env:
                env[tracing.MODEL_ENDPOINT] = self.spans  # the collector, through the relay
        if self.egress is not None and self.config.own_network:
            mounts.writable[f"{RUN_DIR}/egress.sock"] = self.egress
            links.append(f"tcp:127.0.0.1:{PROXY_PORT}=unix:{RUN_DIR}/egress.sock")
            env.update(proxy_env())
        env.update({"HOME": "/tmp", "TMPDIR": "/tmp", "REPLICANT_LINKS": ";".join(links)})
        env.pop("REPLICANT_POOL_PID", None)  # its parent inside is the sandbox's init
        env.pop("REPLICANT_CGROUP_PROCS", None)  # entered before the sandbox starts
        gpus = any(env.get(k) for k in ("CUDA_VISIBLE_DEVICES", "NVIDIA_VISIBLE_DEVICES"))
        return sandbox.launch(
            self.config, command, mounts, cwd=MODEL_DIR, cgroup_procs=cgroup, gpus=gpus
        )

    def remove(self) -> None:
        """Remove its directory (whatever the model left in it)."""
        shutil.rmtree(self.root, ignore_errors=True)


def defines_healthcheck(spec: RunnerSpec) -> bool:
    """Whether the model has a ``healthcheck()``, as its push found (its own or inherited);
    for a version pushed before that was recorded, whether its predictor file defines one.
    A model without one is never asked."""
    if spec.healthcheck is not None:
        return spec.healthcheck
    path = spec.model_dir / spec.predict_ref.partition(":")[0]
    try:
        return "def healthcheck" in path.read_text(encoding="utf-8", errors="replace")
    except OSError:
        return False


def _children(pid: int) -> list[int]:
    try:
        tasks = list(Path(f"/proc/{pid}/task").iterdir())
    except OSError:
        return []
    found: list[int] = []
    for task in tasks:
        try:
            found += [int(c) for c in (task / "children").read_text().split()]
        except OSError:
            continue
    return found


def coglet_pid(pid: int, sandboxed: bool) -> int | None:
    """The host pid of coglet itself: ``pid`` unsandboxed, else the child of the forwarder
    (bwrap, then its init, then the forwarder, then coglet)."""
    if not sandboxed:
        return pid
    for init in _children(pid):
        for forwarder in _children(init):
            for coglet in _children(forwarder):
                return coglet
    return None


def worker_exited(pid: int) -> bool:
    """True when coglet's worker child is a zombie: coglet then waits in STARTING forever."""
    for child in _children(pid):
        try:
            stat = Path(f"/proc/{child}/stat").read_text()
        except OSError:
            continue
        if stat.rsplit(")", 1)[-1].split()[:1] == ["Z"]:
            return True
    return False


class CogletProcess:
    """One coglet process: ``spec.concurrency`` runs at a time (``slots``, counted by
    ``in_use``); coglet's log records about a prediction go to ``on_record``."""

    def __init__(
        self,
        spec: RunnerSpec,
        port: int,
        log: logging.Logger,
        on_record: Callable[[dict[str, Any]], None] | None = None,
    ) -> None:
        self.spec = spec
        self.port = port
        self.url = f"http://127.0.0.1:{port}"
        self.log = log
        self.proc: asyncio.subprocess.Process | None = None
        self.slots = asyncio.Semaphore(spec.concurrency)
        self.in_use = 0
        self.retired = False
        self.on_record = on_record
        # Its model has a healthcheck(): the pool asks /health-check before each next run.
        self.checks_health = defines_healthcheck(spec)
        # Why the pool stopped it (None: it did not): the error of the runs it had.
        self.failure: str | None = None
        # The GPU devices it is pinned to (see workers/runners/devices.py); None: unpinned.
        self.devices: tuple[str, ...] | None = None
        self.slot: int | None = None
        # (when, bytes): its last memory measurement (see workers/runners/memory.py).
        self.measured: tuple[float, int] = (0.0, 0)
        # Its own memory cgroup with the pool's limit (None: no limit, see cgroups.py).
        self.cgroup: MemoryCgroup | None = None
        # Without one: the OOM-kill counter of the cgroup it is in (found at its first run).
        self.oom_counter: Path | None = None
        self.oom_counter_found = False
        # Device memory it used when last read (nvidia-smi); None: never read.
        self.device_bytes: int | None = None
        # time.monotonic() of its last checkout or release: eviction across pools goes by it.
        self.last_used = 0.0
        # Its sandbox (None: the operator runs models unsandboxed).
        self.sandbox: ModelSandbox | None = None
        # Called with its URL and socket once it is reaped (the client forgets the socket).
        self.on_exit: Callable[[str, Path], Awaitable[None]] | None = None
        # The base URL of its links to the pool's receiver, with a token of its own (see
        # receiver.py): its webhooks, uploads and weights requests; and what forgets them
        # once it is reaped.
        self.links = ""
        self.forget_links: Callable[[str], None] | None = None
        self.tail: collections.deque[str] = collections.deque(maxlen=OUTPUT_TAIL_LINES)
        self.output_seen = asyncio.Event()
        self.streams_output: bool | None = None
        # What setup() printed: the first training the process runs shows it first in its
        # logs, as under Cog.
        self.setup_logs = ""
        # Whether a training run on this process has shown ``setup_logs`` (only the first).
        self.setup_logs_taken = False
        self._reader: asyncio.Task[None] | None = None
        self._watcher: asyncio.Task[None] | None = None

    @property
    def pid(self) -> int:
        """The process id (0 before it started)."""
        return self.proc.pid if self.proc is not None else 0

    @property
    def idle(self) -> bool:
        """No run holds one of its slots."""
        return self.in_use == 0

    @property
    def exited(self) -> bool:
        """Whether the process has exited and been reaped."""
        return self._watcher is not None and self._watcher.done()

    @property
    def alive(self) -> bool:
        """Running and not retired: it may take a prediction."""
        return self.proc is not None and self.proc.returncode is None and not self.retired

    def oom_kills(self) -> int | None:
        """How many processes the kernel has killed for memory in its memory cgroup (None:
        no counter to read); a rise during a run means the run's process was OOM-killed."""
        if self.cgroup is not None:
            return self.cgroup.oom_kills()
        if not self.oom_counter_found and self.pid:
            self.oom_counter = oom_counter(self.pid)
            self.oom_counter_found = True
        return read_oom_kills(self.oom_counter)

    def worker_exited(self) -> bool:
        """True when coglet's worker child is a zombie: coglet then waits in STARTING."""
        pid = coglet_pid(self.pid, self.sandbox is not None) if self.pid else None
        return pid is not None and worker_exited(pid)

    def output_tail(self) -> str:
        """The last lines of its output (coglet's log records made readable)."""
        return "\n".join(self.tail)

    async def spawn(self, env: dict[str, str]) -> None:
        """Start coglet for this process's spec with ``env`` (see ``child_env``)."""
        spec = self.spec
        args = [str(spec.python), "-c", LAUNCHER, "--host", "127.0.0.1"]
        if spec.mode == "train":
            args += ["--x-mode", "train"]
        if spec.upload_url:
            # Relative: to its own links (the pool's uploads).
            args += ["--upload-url", urljoin(self.links, spec.upload_url)]
        launch: Launch | None = None
        try:
            if self.sandbox is not None:
                cgroup = self.cgroup.procs if self.cgroup is not None else None
                launch = self.sandbox.launch(spec, env, args, cgroup)
                args = launch.argv
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
                pass_fds=launch.fds if launch is not None else (),
            )
        except OSError as err:
            self._forget_links()
            if self.cgroup is not None:
                await self.cgroup.remove()
            if self.sandbox is not None:
                self.sandbox.remove()
                if self.on_exit is not None:
                    await self.on_exit(self.url, self.sandbox.socket)
            raise BootError(f"cannot start {spec.python} in {spec.model_dir}: {err}") from err
        finally:
            if launch is not None:
                launch.close()
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

    def _on_line(self, raw: str) -> None:
        line = parse_log_line(raw)
        self.tail.append(line.text)
        self.output_seen.set()
        if (
            line.setup_print is not None
            and self.spec.mode == "train"
            and len(self.setup_logs) < self.spec.max_logs
        ):
            # Kept for the first training it runs (a later one did not see setup run).
            self.setup_logs += line.setup_print + "\n"
        fields = line.fields
        if fields is None:
            return
        if fields.get("message") == "Prediction worker completed":
            self.streams_output = bool(fields.get("is_stream"))
        if self.on_record is not None:
            self.on_record(fields)

    async def _watch(self) -> None:
        assert self.proc is not None
        code = await self.proc.wait()
        if not self.retired:
            self.log.warning(
                "event=runner_exited key=%s pid=%d code=%s", self.spec.key, self.pid, code
            )
        self.kill()  # whatever is left of its process group
        if self.cgroup is not None:
            await self.cgroup.remove()  # and of its cgroup
        if self.sandbox is not None:
            self.sandbox.remove()
        if self.on_exit is not None and self.sandbox is not None:
            await self.on_exit(self.url, self.sandbox.socket)
        self._forget_links()
        self.output_seen.set()

    def _forget_links(self) -> None:
        if self.forget_links is not None and self.links:
            self.forget_links(self.links)

    def kill(self) -> None:
        """SIGKILL coglet and its worker: Cog models have no teardown, and coglet's graceful
        stop takes ~2 s even when idle."""
        if self.proc is None:
            return
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.proc.pid, signal.SIGKILL)

    def retire(self) -> None:
        """Never hand it another prediction, and kill it."""
        self.retired = True
        if self.proc is None:
            self._forget_links()  # never started: no reaping will
        self.kill()

    async def wait_closed(self, within: float = 5.0) -> None:
        """Wait (at most ``within`` seconds) until it is reaped and its output read."""
        tasks = [t for t in (self._watcher, self._reader) if t is not None]
        if tasks:
            await asyncio.wait(tasks, timeout=within)

    async def output_settled(self, quiet: float = 0.05, within: float = 1.0) -> None:
        """Wait until it has written nothing for ``quiet`` seconds (at most ``within``),
        so its last lines are in the tail."""
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(within):
                while True:
                    self.output_seen.clear()
                    try:
                        async with asyncio.timeout(quiet):
                            await self.output_seen.wait()
                    except TimeoutError:
                        return


def place_weights(process: CogletProcess, placed: dict[str, Path]) -> None:
    """Bind a version's managed weights (cog.yaml ``weights:``) at their targets in its
    process's sandbox; a process without a sandbox cannot have them."""
    if not placed:
        return
    if process.sandbox is None:
        raise BootError(
            "cog.yaml's weights: are placed at their targets in the model sandbox, and this "
            "worker runs models without one (REPLICANT_MODEL_UNSANDBOXED)"
        )
    process.sandbox.weights = placed
