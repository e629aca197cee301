"""Per-version Python environments for Cog models.

Most models need nothing beyond what Replicant's own environment has (cog, coglet, pillow):
they run with ``sys.executable`` and nothing is built. A model that needs more gets a venv
under ``envs_dir/<hash>/``, one per (Python version, requirements), that sees Replicant's own
packages (so cog and coglet match the server's) underneath its own.
"""

from __future__ import annotations

import collections
import contextlib
import fcntl
import functools
import hashlib
import importlib.metadata
import json
import logging
import os
import shutil
import subprocess
import sys
import sysconfig
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from packaging.requirements import InvalidRequirement, Requirement
from packaging.specifiers import InvalidSpecifier, SpecifierSet
from packaging.utils import canonicalize_name
from packaging.version import InvalidVersion, Version

from replicant.cogmodel import CogConfig, local_package
from replicant.egress import PROXY_PORT, proxy_env, proxy_in_thread
from replicant.pythons import find_python
from replicant.sandbox import (
    EXEC_WITH_LINKS,
    RUN_DIR,
    SandboxUnavailable,
    filtered_env,
    give_to_model,
    machine_sandbox,
    require,
    sandboxed_run,
    scratch_prefix,
)

log = logging.getLogger(__name__)

Progress = Callable[[str], None]
COMPLETE_MARKER = ".replicant-complete"
PIP_TIMEOUT = 3600.0
TAIL_LINES = 40


class EnvBuildError(Exception):
    """A model's environment could not be built; the message ends with pip's output."""


def _host_version() -> str:
    return f"{sys.version_info.major}.{sys.version_info.minor}"


def _major_minor(version: str) -> str:
    return ".".join(version.strip().split(".")[:2])


def _is_installed(requirement: Requirement, seen: set[str]) -> bool:
    """True when this interpreter already has a distribution that meets ``requirement``."""
    if requirement.marker is not None and not requirement.marker.evaluate():
        return True
    if requirement.url:
        return False  # a direct URL may be anything: install it
    name = canonicalize_name(requirement.name)
    try:
        dist = importlib.metadata.distribution(name)
        version = Version(dist.version)
    except (importlib.metadata.PackageNotFoundError, InvalidVersion):
        return False
    if not requirement.specifier.contains(version, prereleases=True):
        return False
    for extra in sorted(requirement.extras):
        key = f"{name}[{extra}]"
        if key in seen:
            continue
        seen.add(key)
        for line in dist.requires or []:
            dep = Requirement(line)
            # Only the dependencies this extra adds; the base ones came with the package.
            if dep.marker is None or not dep.marker.evaluate({"extra": extra}):
                continue
            if dep.marker.evaluate({"extra": ""}):
                continue
            dep.marker = None
            if not _is_installed(dep, seen):
                return False
    return True


def requirements_satisfied(requirements: list[str]) -> bool:
    """True when every requirement line is already met by the running interpreter.

    pip options (``-r``, ``--index-url``), local paths and URLs count as unmet.
    """
    seen: set[str] = set()
    for line in requirements:
        try:
            requirement = Requirement(line)
        except InvalidRequirement:
            return False
        if not _is_installed(requirement, seen):
            return False
    return True


def _choose_python(version: str | None, progress: Progress) -> tuple[Path, str]:
    """The base interpreter for an env and its X.Y version (falls back to the host's)."""
    host = _host_version()
    # sys._base_executable is the interpreter behind Replicant's own venv.
    base = Path(getattr(sys, "_base_executable", None) or sys.executable)
    if version is None or _major_minor(version) == host:
        return base, host
    wanted = _major_minor(version)
    supported = _coglet_pythons()
    if not supported.contains(f"{wanted}.0"):
        # Older Cog models ask for 3.8 or 3.9; coglet does not install there, so pip would fail.
        message = (
            f"Python {wanted} is not one coglet runs on ({supported}); using Python {host} instead"
        )
        log.warning("event=python_version_unsupported requested=%s using=%s", wanted, host)
        progress(message)
        return base, host
    found = find_python(version)
    if found is not None:
        progress(f"using Python {found.version} at {found.path}")
        return found.path, wanted
    message = f"Python {wanted} is not installed here; using Python {host} instead"
    log.warning("event=python_version_missing requested=%s using=%s", wanted, host)
    progress(message)
    return base, host


def _coglet_pythons() -> SpecifierSet:
    """The Python versions the installed coglet supports (its ``Requires-Python``)."""
    try:
        return SpecifierSet(importlib.metadata.metadata("coglet")["Requires-Python"] or "")
    except (importlib.metadata.PackageNotFoundError, KeyError, InvalidSpecifier):
        return SpecifierSet()


def _package_version(name: str) -> str:
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return ""


def _env_key(
    python: Path, version: str, requirements: list[str], local: dict[str, str] | None = None
) -> str:
    identity = {
        "python": version,
        "interpreter": str(python),
        "requirements": sorted(requirements),
        # Local package files by content: the same files from any copy of the model match.
        **({"local_packages": local} if local else {}),
        "cog": _package_version("cog"),
        "coglet": _package_version("coglet"),
        "host_site": sysconfig.get_paths()["purelib"],
    }
    return hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()[:20]


@contextmanager
def _exclusive(lock_path: Path) -> Iterator[None]:
    # flock works across processes and across threads (each open() is its own lock holder).
    with lock_path.open("a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


@functools.cache
def _pip_config() -> tuple[dict[str, str], dict[str, Path]]:
    """The operator's pip configuration (index URLs, find-links, certificates, constraints)
    as environment variables for a sandboxed pip, and the local files it names, to bind."""
    try:
        out = subprocess.run(
            [sys.executable, "-m", "pip", "config", "list"],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        ).stdout
    except (OSError, subprocess.TimeoutExpired):
        return {}, {}
    env: dict[str, str] = {}
    files: dict[str, Path] = {}
    for line in out.splitlines():
        name, _, value = line.partition("=")
        key = name.rpartition(".")[2]
        if not key or not value:
            continue
        value = value.strip().strip("'\"")
        env["PIP_" + key.upper().replace("-", "_")] = value
        for token in value.split():
            path = Path(token.removeprefix("file://"))
            if key.endswith("index-url") and path.name == "simple":
                path = path.parent  # a PEP 503 index links its files beside simple/
            if path.is_absolute() and path.exists():
                files[str(path)] = path
    return env, files


def _run(
    args: list[str],
    progress: Progress,
    what: str,
    *,
    sandboxed: tuple[Path, Path, dict[str, Path]] | None = None,
) -> None:
    """Run a build step, passing each output line to ``progress``; raise with its tail.
    ``sandboxed`` (the env's directory, its Python, local files to read): the step runs
    the model's packages' code (``setup.py``, build hooks, ``.pth`` files), so it runs in
    the model sandbox with that directory writable and nothing of this process's
    environment."""
    tail: collections.deque[str] = collections.deque(maxlen=TAIL_LINES)
    pipes: dict[str, Any] = {
        "stdout": subprocess.PIPE,
        "stderr": subprocess.STDOUT,
        "stdin": subprocess.DEVNULL,
    }
    scratch = Path(tempfile.mkdtemp(prefix=scratch_prefix("build")))
    try:
        with contextlib.ExitStack() as stack:
            try:
                if sandboxed is None:
                    env = {**os.environ, "PIP_NO_INPUT": "1", "PIP_PROGRESS_BAR": "off"}
                    env.pop("PYTHONPATH", None)
                    proc = subprocess.Popen(args, text=True, env=env, **pipes)
                else:
                    proc = stack.enter_context(_sandboxed(args, *sandboxed, scratch, pipes))
            except (SandboxUnavailable, OSError) as e:
                raise EnvBuildError(f"{what} failed: {e}") from e
            assert proc.stdout is not None
            with proc:
                for raw in proc.stdout:
                    line = raw.rstrip()
                    tail.append(line)
                    progress(line)
                try:
                    code = proc.wait(timeout=PIP_TIMEOUT)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    code = -1
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    if code != 0:
        output = "\n".join(tail)
        raise EnvBuildError(f"{what} failed (exit status {code}):\n{output}")


@contextmanager
def _sandboxed(
    args: list[str],
    env_dir: Path,
    python: Path,
    local: dict[str, Path],
    scratch: Path,
    pipes: dict[str, Any],
) -> Iterator[subprocess.Popen[str]]:
    config = machine_sandbox()
    pip_env, pip_files = _pip_config()
    env = filtered_env({**pip_env, "PIP_NO_INPUT": "1", "PIP_PROGRESS_BAR": "off"})
    env["PIP_USER"] = "0"
    (scratch / "tmp").mkdir()
    give_to_model(config, scratch / "tmp")
    if config.switches_uid:  # pip, as the model's uid, writes the new venv
        _chown_tree(env_dir, config.uid, config.gid)
    writable = {str(env_dir): env_dir, "/tmp": scratch / "tmp"}
    with contextlib.ExitStack() as stack:
        if config.build_egress == "public" and require(config):
            # pip reaches the index through the proxy to public addresses (replicant/egress.py).
            proxy = stack.enter_context(proxy_in_thread(scratch / "egress.sock"))
            writable[f"{RUN_DIR}/egress.sock"] = proxy
            env.update(proxy_env())
            env["REPLICANT_LINKS"] = f"tcp:127.0.0.1:{PROXY_PORT}=unix:{RUN_DIR}/egress.sock"
            args = [sys.executable, "-c", EXEC_WITH_LINKS, *args]
        yield sandboxed_run(
            config,
            args,
            cwd=env_dir,
            env=env,
            read_only={**pip_files, **local},
            writable=writable,
            python=python,
            share_net=config.build_egress == "unrestricted",
            **pipes,
        )


def _local_path(token: str) -> Path | None:
    path = Path(token.removeprefix("file://"))
    return path if path.is_absolute() and path.exists() else None


def _chown_tree(top: Path, uid: int, gid: int) -> None:
    for root, dirs, files in os.walk(top):
        for name in [*dirs, *files]:
            os.lchown(os.path.join(root, name), uid, gid)
    os.chown(top, uid, gid)


def _reclaim(env_dir: Path) -> None:
    """Give a built environment back to the worker's user: no model process may change it."""
    _chown_tree(env_dir, os.geteuid(), os.getegid())
    env_dir.chmod(0o755)


def _site_packages(env_dir: Path, version: str) -> Path:
    return env_dir / "lib" / f"python{version}" / "site-packages"


def _build(
    env_dir: Path,
    python: Path,
    version: str,
    requirements: list[str],
    progress: Progress,
    model_dir: str = "",
) -> None:
    progress(f"building a Python {version} environment in {env_dir}")
    _run(
        [str(python), "-m", "venv", "--without-pip", "--system-site-packages", str(env_dir)],
        progress,
        "creating the venv",
    )
    env_python = env_dir / "bin" / "python"
    # Local package files are given to pip by their path in the model (spaces and all).
    local = [str(Path(model_dir) / line) for line in requirements if local_package(line)]
    packages = [line for line in requirements if not local_package(line)]
    # What the sandboxed pip reads: those files, and requirements that name local paths.
    readable = {path: Path(path) for path in local}
    readable.update(
        (str(p), p) for p in map(_local_path, " ".join(packages).split()) if p is not None
    )
    if version == _host_version():
        # Replicant's own packages (cog, coglet, ...) sit under the env's, which win.
        paths = dict.fromkeys([sysconfig.get_paths()["purelib"], sysconfig.get_paths()["platlib"]])
        site = _site_packages(env_dir, version)
        site.mkdir(parents=True, exist_ok=True)
        (site / "zz-replicant-host.pth").write_text("\n".join(paths) + "\n", encoding="utf-8")
    else:
        # Another Python cannot share our compiled packages: give it the same cog and coglet.
        packages += [f"{name}=={_package_version(name)}" for name in ("cog", "coglet")]
    if packages or local:
        req_file = env_dir / "replicant-requirements.txt"
        req_file.write_text("\n".join(packages) + "\n", encoding="utf-8")
        progress(f"installing {len(packages) + len(local)} requirement(s)")
        # This pip installs into the env (--python), so the env needs no pip of its own.
        _run(
            [sys.executable, "-m", "pip", "--python", str(env_python), "install"]
            + ["--disable-pip-version-check", "--no-input", "-r", str(req_file), *local],
            progress,
            "pip install",
            sandboxed=(env_dir, env_python, readable),
        )
    _run(
        [str(env_python), "-c", "import cog, coglet"],
        progress,
        "importing cog in the env",
        sandboxed=(env_dir, env_python, {}),
    )
    _reclaim(env_dir)


def plan_env(config: CogConfig, envs_dir: Path, progress: Progress | None = None) -> Path:
    """The Python executable that will run a model with this config, without building it.

    ``sys.executable`` when the running interpreter meets every requirement, else the path of
    the env's interpreter under ``envs_dir`` (which ``ensure_env`` builds).
    """
    say: Progress = progress or (lambda _line: None)
    requirements = list(config.python_packages)
    python, version = _choose_python(config.python_version, say)
    if version == _host_version() and requirements_satisfied(requirements):
        return Path(sys.executable)
    key = _env_key(python, version, requirements, config.local_packages)
    return envs_dir / key / "bin" / "python"


def env_ready(python: Path) -> bool:
    """True when ``python`` (from ``plan_env``) can run models now."""
    return python == Path(sys.executable) or (python.parent.parent / COMPLETE_MARKER).exists()


def ensure_env(
    config: CogConfig,
    envs_dir: Path,
    progress: Progress | None = None,
) -> Path:
    """Return the Python executable that runs a model with this config.

    ``sys.executable`` when the running interpreter already meets every requirement (nothing
    is built); otherwise ``envs_dir/<hash>/bin/python``, built once per (Python version,
    sorted requirements) under a file lock and marked complete only when it fully works.
    A requirement pip cannot install raises ``EnvBuildError`` with pip's output tail.
    A ``python_version`` the host lacks falls back to the host's Python, with a warning.
    """
    say: Progress = progress or (lambda _line: None)
    requirements = list(config.python_packages)
    python, version = _choose_python(config.python_version, say)
    if version == _host_version() and requirements_satisfied(requirements):
        return Path(sys.executable)

    envs_dir.mkdir(parents=True, exist_ok=True)
    key = _env_key(python, version, requirements, config.local_packages)
    env_dir = envs_dir / key
    env_python = env_dir / "bin" / "python"
    marker = env_dir / COMPLETE_MARKER
    if marker.exists():
        return env_python
    with _exclusive(envs_dir / f"{key}.lock"):
        if marker.exists():
            return env_python  # another caller built it while we waited
        if env_dir.exists():
            say(f"removing an unfinished environment at {env_dir}")
            shutil.rmtree(env_dir)
        try:
            _build(env_dir, python, version, requirements, say, config.model_dir)
        except BaseException:
            shutil.rmtree(env_dir, ignore_errors=True)
            raise
        tmp = env_dir / f"{COMPLETE_MARKER}.tmp"
        tmp.write_text(
            json.dumps({"python": version, "requirements": requirements}), encoding="utf-8"
        )
        os.replace(tmp, marker)  # the env counts as ready only from this instant
        log.info("event=env_built key=%s python=%s packages=%d", key, version, len(requirements))
        say(f"environment ready: {env_python}")
    return env_python
