"""The sandbox every process that runs model code starts in (bubblewrap).

A model's code runs at push (the schema probe imports its module), while its environment
builds (pip runs ``setup.py`` and build hooks), and in the runner pool (setup, predictions,
trainings, standbys, deployment instances). Each such process starts in ``bwrap``:

- as ``model_uid``/``model_gid`` (not the worker's uid) when the worker runs as root: bwrap
  (privileged, no user namespace) builds the sandbox and ``setpriv`` drops to that uid with
  no capabilities, an empty bounding set and ``no_new_privs``; a worker that is not root
  runs bwrap in a user namespace of its own, and the model keeps its uid;
- in its own pid, mount, IPC, UTS and cgroup namespaces: it sees only its own processes,
  and a file system made of the system's ``/usr`` (read-only), a short list of ``/etc``
  files, its Python environment and code (read-only), and its own scratch directory as
  ``/tmp`` (writable); never the data dir, the database, the secret key, other versions'
  directories or other runs' files;
- in a network namespace of its own with only a loopback interface (``model_egress``
  ``none``): the links it needs to the worker are Unix sockets bound into it, reached
  through a forwarder (``LINKS``; ``workers/runners/process.py``); ``public`` adds a proxy
  to public addresses (``replicant/egress.py``), ``unrestricted`` shares the worker's
  network instead;
- with the environment it is given, nothing of the worker's.

Binds go through file descriptors the spawning process opened (``--ro-bind-fd``), so a
directory the model's uid could not reach on the host (a data dir readable by the service
user only) is still bound, and nothing else of it is visible.
"""

from __future__ import annotations

import functools
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from replicant.settings import Settings, get_settings

Egress = Literal["none", "public", "unrestricted"]

# What of /etc a Python program needs (TLS roots, name resolution, time zones, the loader's
# cache, MIME types); the rest of /etc (and anything an operator keeps there) stays out.
ETC_FILES = (
    "/etc/ssl",
    "/etc/ca-certificates",
    "/etc/pki",
    "/etc/resolv.conf",
    "/etc/hosts",
    "/etc/host.conf",
    "/etc/nsswitch.conf",
    "/etc/gai.conf",
    "/etc/protocols",
    "/etc/services",
    "/etc/localtime",
    "/etc/timezone",
    "/etc/ld.so.cache",
    "/etc/ld.so.conf",
    "/etc/ld.so.conf.d",
    "/etc/alternatives",
    "/etc/mime.types",
    "/etc/fonts",
    "/etc/os-release",
    "/etc/debian_version",
)

# Top-level directories that merged-/usr systems keep as symlinks into /usr.
USR_LINKS = ("/bin", "/sbin", "/lib", "/lib32", "/lib64", "/libx32")

# GPU device nodes: bound when present; the slot's pinning is CUDA_VISIBLE_DEVICES.
GPU_DEVICES = ("nvidia-uvm", "nvidia-uvm-tools", "nvidiactl", "nvidia-modeset", "dri")

# Where a sandbox sees its own links to the worker and the files of the run it is given.
RUN_DIR = "/run/replicant"

# The most entries of a model's code directory bound one by one (see ``Mounts.add_code``).
MAX_CODE_ENTRIES = 256

# Python source (standard library only, any Python 3.9+) run first in a sandbox whose
# REPLICANT_LINKS names links to the worker (``listen=target;...``, each ``unix:<path>`` or
# ``tcp:<host>:<port>``): it forks, the parent forwards the links and exits with the child's
# status, and the child (with PR_SET_PDEATHSIG) goes on to run what the sandbox is for. So
# the links stay out of the child's process tree (coglet's only child is its worker).
LINKS = """\
links = os.environ.pop("REPLICANT_LINKS", "")
if links:
    child = os.fork()
    if child:
        # This process forwards the links and ends with its child, with its status.
        import asyncio

        def endpoint(spec):
            kind, _, where = spec.partition(":")
            if kind == "unix":
                return kind, where, None
            host, _, port = where.rpartition(":")
            return kind, host, int(port)

        async def pump(reader, writer):
            try:
                while True:
                    data = await reader.read(65536)
                    if not data:
                        break
                    writer.write(data)
                    await writer.drain()
                if writer.can_write_eof():
                    writer.write_eof()
            except (OSError, RuntimeError):
                writer.close()

        def handler(target):
            kind, where, port = endpoint(target)

            async def handle(reader, writer):
                try:
                    if kind == "unix":
                        far = await asyncio.open_unix_connection(where)
                    else:
                        far = await asyncio.open_connection(where, port)
                except OSError:
                    writer.close()
                    return
                await asyncio.gather(pump(reader, far[1]), pump(far[0], writer))
                writer.close()
                far[1].close()

            return handle

        async def serve():
            for link in links.split(";"):
                listen, _, target = link.partition("=")
                kind, where, port = endpoint(listen)
                if kind == "unix":
                    await asyncio.start_unix_server(handler(target), where)
                else:
                    await asyncio.start_server(handler(target), where, port)
            loop = asyncio.get_running_loop()
            return (await loop.run_in_executor(None, os.waitpid, child, 0))[1]

        os._exit(os.waitstatus_to_exitcode(asyncio.run(serve())) & 0xFF)
    ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)
"""

# Runs ``argv[1:]`` behind the links (the command of a sandboxed build or probe).
EXEC_WITH_LINKS = (
    "import ctypes, os, signal, sys\n" + LINKS + "os.execvp(sys.argv[1], sys.argv[1:])\n"
)


class SandboxUnavailable(RuntimeError):
    """This machine cannot sandbox model processes (and unsandboxed is not allowed)."""


@dataclass(frozen=True)
class SandboxConfig:
    """How model processes are started: ``bwrap`` (its path; None: not installed), or
    ``unsandboxed`` when the operator said so explicitly."""

    bwrap: str | None
    unsandboxed: bool = False
    uid: int = 65534
    gid: int = 65534
    egress: Egress = "none"
    build_egress: Egress = "public"

    @classmethod
    def from_settings(cls, settings: Settings) -> SandboxConfig:
        """The operator's configuration."""
        return cls(
            bwrap=shutil.which("bwrap"),
            unsandboxed=settings.model_unsandboxed,
            uid=settings.model_uid,
            gid=settings.model_gid,
            egress=settings.model_egress,
            build_egress=settings.model_build_egress,
        )

    @property
    def switches_uid(self) -> bool:
        """Whether the model gets a uid of its own (only a root worker can give one)."""
        return os.geteuid() == 0 and self.uid != 0

    @property
    def own_network(self) -> bool:
        """Whether the model gets a network namespace of its own (only loopback)."""
        return self.egress != "unrestricted"


def machine_sandbox() -> SandboxConfig:
    """The configuration of this process's settings."""
    return SandboxConfig.from_settings(get_settings())


@functools.cache
def _check(bwrap: str | None, uid: int, gid: int, switch: bool) -> str | None:
    if bwrap is None:
        return "bubblewrap (bwrap) is not installed"
    argv = [bwrap, *_base_args(switch), "--", *_drop(uid, gid, switch), "/bin/true"]
    try:
        proc = subprocess.run(argv, capture_output=True, text=True, timeout=30, check=False)
    except (OSError, subprocess.TimeoutExpired) as err:
        return f"cannot run bwrap: {err}"
    if proc.returncode != 0:
        return f"bwrap cannot create namespaces here: {proc.stderr.strip()[-500:]}"
    return None


def unavailable_reason(config: SandboxConfig) -> str | None:
    """Why this machine cannot sandbox with ``config`` (None: it can); tried once."""
    return _check(config.bwrap, config.uid, config.gid, config.switches_uid)


def require(config: SandboxConfig) -> bool:
    """True when model processes are sandboxed, False when the operator allowed them
    unsandboxed; raises ``SandboxUnavailable`` when neither."""
    if config.unsandboxed:
        return False
    reason = unavailable_reason(config)
    if reason is not None:
        raise SandboxUnavailable(
            f"model code is not run here: this machine cannot sandbox it ({reason}); "
            "install bubblewrap and allow user namespaces, or set "
            "REPLICANT_MODEL_UNSANDBOXED=true to run models without a sandbox"
        )
    return True


def status_line(config: SandboxConfig) -> str:
    """One log line's fields saying how model processes run (logged at worker start)."""
    if config.unsandboxed:
        return "event=model_sandbox mode=unsandboxed warning=model_code_runs_as_the_worker"
    reason = unavailable_reason(config)
    if reason is not None:
        return f"event=model_sandbox mode=refused reason={reason!r}"
    uid = config.uid if config.switches_uid else os.geteuid()
    return f"event=model_sandbox mode=bwrap uid={uid} egress={config.egress}"


def _drop(uid: int, gid: int, switch: bool) -> list[str]:
    """What the command runs behind: a root worker's bwrap (privileged, no user namespace)
    drops to the model's uid, its groups, capabilities and the right to regain any."""
    if not switch:
        return []
    setpriv = shutil.which("setpriv") or "/usr/bin/setpriv"
    return [
        setpriv,
        f"--reuid={uid}",
        f"--regid={gid}",
        "--clear-groups",
        "--inh-caps=-all",
        "--bounding-set=-all",
        "--no-new-privs",
        "--",
    ]


def _base_args(switch: bool) -> list[str]:
    # A root worker's bwrap needs no user namespace (the model gets its own uid instead);
    # any other's maps its own uid in one.
    if switch:
        args = ["--unshare-ipc", "--unshare-pid", "--unshare-net", "--unshare-uts"]
        args += ["--unshare-cgroup-try"]
    else:
        args = ["--unshare-all"]
    args += ["--die-with-parent", "--ro-bind", "/usr", "/usr"]
    for top in USR_LINKS:
        path = Path(top)
        if path.is_symlink():
            args += ["--symlink", os.readlink(path), top]
        elif path.is_dir():
            args += ["--ro-bind", top, top]
    for etc in ETC_FILES:
        args += ["--ro-bind-try", etc, etc]
    args += ["--proc", "/proc", "--dev", "/dev", "--tmpfs", "/run"]
    # CPU topology (thread pools size themselves by it); the rest of /sys stays out.
    args += ["--ro-bind-try", "/sys/devices/system/cpu", "/sys/devices/system/cpu"]
    return args


@dataclass
class Mounts:
    """What one sandbox sees beyond the base system, by its path inside; each host path
    is opened here (O_PATH) and handed to bwrap as a descriptor."""

    read_only: dict[str, Path] = field(default_factory=dict)
    writable: dict[str, Path] = field(default_factory=dict)
    # Symbolic links made inside (path inside -> target), resolved inside the sandbox.
    symlinks: dict[str, str] = field(default_factory=dict)

    def add_code(self, dest: str, code: Path, scratch: Path) -> None:
        """``code`` at ``dest``, each of its entries read-only, in the writable ``scratch``
        (a model may write new files where it runs, as in Cog's images, never change its
        own); a link among them is made inside, where it resolves in the sandbox, never
        followed on the host. A directory of very many entries is bound whole."""
        entries = sorted(code.iterdir())
        if len(entries) > MAX_CODE_ENTRIES:
            self.read_only[dest] = code
            return
        self.writable[dest] = scratch
        for entry in entries:
            inside = f"{dest}/{entry.name}"
            if entry.is_symlink():
                self.symlinks[inside] = os.readlink(entry)
            else:
                self.read_only[inside] = entry

    def add_python(self, python: Path) -> None:
        """The model's Python: its environment (a venv) and the installation under it, and
        Replicant's own environment, whose packages a host-version env reads."""
        for prefix in _python_prefixes(python):
            if not prefix.is_relative_to("/usr"):
                self.read_only.setdefault(str(prefix), prefix)


def _python_prefixes(python: Path) -> list[Path]:
    env = python.parent.parent  # <env>/bin/python
    prefixes = [env, Path(sys.prefix), Path(sys.base_prefix)]
    real = python.resolve().parent.parent
    prefixes.append(real)
    cfg = env / "pyvenv.cfg"
    if cfg.is_file():
        for line in cfg.read_text(encoding="utf-8", errors="replace").splitlines():
            key, _, value = line.partition("=")
            if key.strip() == "home" and value.strip():
                prefixes.append(Path(value.strip()).parent)
    return [p for p in dict.fromkeys(prefixes) if p.is_dir() and p != Path("/")]


def _open_to_model(path: Path) -> None:
    """Let the model's uid into a directory bound read-only (a version's directory is made
    0700 under a data dir that keeps everyone else out: the bind is the way in)."""
    if path.is_dir() and not path.is_relative_to("/usr"):
        mode = path.stat().st_mode
        if mode & 0o005 != 0o005:
            path.chmod(mode | 0o005)


@dataclass
class Launch:
    """The argv of a sandboxed process and the descriptors it must inherit (close them,
    with ``close``, once it started)."""

    argv: list[str]
    fds: list[int]

    def close(self) -> None:
        """Close this side's copies of the bound descriptors."""
        for fd in self.fds:
            os.close(fd)
        self.fds = []


def launch(
    config: SandboxConfig,
    command: Iterable[str],
    mounts: Mounts,
    *,
    cwd: str,
    cgroup_procs: Path | None = None,
    gpus: bool = False,
    share_net: bool | None = None,
) -> Launch:
    """The argv that runs ``command`` in a sandbox of ``config`` with ``mounts``: inside
    ``cgroup_procs``'s cgroup when given (entered before privileges are dropped, so cgroup
    v1 and v2 both take it), with the GPU device nodes when ``gpus``; ``share_net`` (default
    by the egress setting) keeps the worker's network."""
    fds: list[int] = []
    switch = config.switches_uid
    args: list[str] = _base_args(switch)
    if share_net if share_net is not None else not config.own_network:
        if switch:
            args.remove("--unshare-net")
        else:
            args.append("--share-net")
    try:
        for host in mounts.read_only.values():
            _open_to_model(host)
        binds = {dest: ("--ro-bind-fd", host) for dest, host in mounts.read_only.items()}
        binds.update((dest, ("--bind-fd", host)) for dest, host in mounts.writable.items())
        for dest, (flag, host) in sorted(binds.items()):  # a parent before what is in it
            fd = os.open(host, os.O_PATH | os.O_CLOEXEC)
            fds.append(fd)
            args += [flag, str(fd), dest]
    except OSError:
        for fd in fds:
            os.close(fd)
        raise
    # bwrap makes a bind's missing parents with the host's modes (/root is 0700): open
    # them to the model's uid, except where they are binds or inside one themselves.
    for dest, target in sorted(mounts.symlinks.items()):
        args += ["--symlink", target, dest]
    fixed = {*mounts.read_only, *ETC_FILES, "/usr", "/proc", "/dev"}
    dests = {*fixed, *mounts.writable, "/run"}
    parents = {str(a) for d in [*dests, *ETC_FILES] for a in Path(d).parents}
    for parent in sorted(parents - dests - {"/"}):
        if not any(parent.startswith(d + "/") for d in fixed):
            args += ["--chmod", "0755", parent]
    if gpus:
        args += ["--ro-bind", "/sys", "/sys"]  # the driver's libraries read the PCI tree
        for node in sorted(Path("/dev").glob("nvidia[0-9]*")):
            args += ["--dev-bind", str(node), str(node)]
        for name in GPU_DEVICES:
            args += ["--dev-bind-try", f"/dev/{name}", f"/dev/{name}"]
    args += ["--chdir", cwd, "--"]
    assert config.bwrap is not None
    argv = [config.bwrap, *args, *_drop(config.uid, config.gid, switch), *command]
    if cgroup_procs is not None:
        # The shell enters the cgroup as the worker's user, then becomes bwrap (same pid), so
        # the model is inside from its start, on cgroup v1 and v2 alike.
        argv = ["/bin/sh", "-c", 'echo $$ > "$0" && exec "$@"', str(cgroup_procs), *argv]
    return Launch(argv, fds)


def passwd_file(uid: int, gid: int) -> str:
    """An /etc/passwd and /etc/group content naming the model's user (home: /tmp)."""
    return f"root:x:0:0:root:/root:/bin/sh\nmodel:x:{uid}:{gid}:model:/tmp:/bin/sh\n"


# Sandbox directories in the temporary directory: replicant-<kind>-<pid of their maker>-...
SCRATCH_KINDS = ("model", "probe", "build")


def scratch_prefix(kind: str) -> str:
    """The name prefix of this process's sandbox directories of ``kind``."""
    return f"replicant-{kind}-{os.getpid()}-"


def sweep_scratch() -> int:
    """Remove the sandbox directories of processes that are gone (killed before they could);
    how many."""
    removed = 0
    for kind in SCRATCH_KINDS:
        prefix = f"replicant-{kind}-"
        for path in Path(tempfile.gettempdir()).glob(f"{prefix}*-*"):
            owner = path.name.removeprefix(prefix).partition("-")[0]
            if owner.isdigit() and not Path(f"/proc/{owner}").exists():
                shutil.rmtree(path, ignore_errors=True)
                removed += 1
    return removed


@contextmanager
def scratch_dir(config: SandboxConfig, kind: str) -> Iterator[Path]:
    """A directory the sandboxed process owns (its /tmp), removed afterwards."""
    path = Path(tempfile.mkdtemp(prefix=scratch_prefix(kind)))
    try:
        give_to_model(config, path)
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


def give_to_model(config: SandboxConfig, path: Path) -> None:
    """Make ``path`` writable by the model's uid (and by it only)."""
    if config.switches_uid:
        os.chown(path, config.uid, config.gid)
    path.chmod(0o700)


def sandboxed_run(
    config: SandboxConfig,
    command: list[str],
    *,
    cwd: Path,
    env: Mapping[str, str],
    read_only: Mapping[str, Path] = {},
    writable: Mapping[str, Path] = {},
    python: Path | None = None,
    share_net: bool = False,
    host_cwd: Path | None = None,
    **kwargs: Any,
) -> subprocess.Popen[str]:
    """Start ``command`` like ``subprocess.Popen`` (text mode) in a sandbox with these binds
    (the caller waits for it), or, where the operator allowed it, unsandboxed in
    ``host_cwd`` (default ``cwd``); raises ``SandboxUnavailable`` when neither."""
    if not require(config):
        return subprocess.Popen(command, cwd=host_cwd or cwd, env=dict(env), text=True, **kwargs)
    mounts = Mounts(read_only=dict(read_only), writable=dict(writable))
    if python is not None:
        mounts.add_python(python)
    spec = launch(config, command, mounts, cwd=str(cwd), share_net=share_net)
    try:
        return subprocess.Popen(spec.argv, env=dict(env), text=True, pass_fds=spec.fds, **kwargs)
    finally:
        spec.close()


def filtered_env(extra: Mapping[str, str] = {}) -> dict[str, str]:
    """A minimal environment for model code: none of the worker's variables but the
    locale, plus ``extra``."""
    env = {"PATH": "/usr/local/bin:/usr/bin:/bin", "HOME": "/tmp", "LANG": "C.UTF-8"}
    env.update(extra)
    return env
