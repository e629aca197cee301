"""Memory cgroups of model processes: a memory limit per process tree, and its OOM kills.

With a limit (``REPLICANT_MODEL_MEMORY_LIMIT``, or the SKU's own in
``REPLICANT_MODEL_MEMORY_LIMITS``), each coglet process runs in a memory cgroup of its own, a
child of the worker's cgroup: the launcher moves itself in before coglet starts, so coglet's
worker child and whatever the model starts are in it too. Past the limit the kernel's OOM
killer kills inside that cgroup only (the model, never the worker), and the cgroup's own
counter (v2 ``memory.events``, v1 ``memory.oom_control``) tells the pool that it did. The
cgroup is removed once its process has ended (anything left in it is killed first); cgroups
left by a worker that was killed are removed by the next one that starts.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import os
import re
import signal
from collections.abc import Mapping
from pathlib import Path
from typing import Literal

import psutil

ROOT = Path("/sys/fs/cgroup")
PREFIX = "replicant-"
# replicant-<pid of the worker that made it>-<sequence>
NAME = re.compile(rf"{PREFIX}(\d+)-\d+\Z")
# How long removal waits for the processes of a cgroup to be gone.
REMOVE_WITHIN = 5.0


def oom_counter(pid: int) -> Path | None:
    """The file that counts the kernel's OOM kills in ``pid``'s memory cgroup (cgroup v2
    ``memory.events`` or v1 ``memory.oom_control``); None when there is none to read."""
    try:
        lines = Path(f"/proc/{pid}/cgroup").read_text().splitlines()
    except OSError:
        return None
    candidates: list[Path] = []
    for line in lines:
        _, controllers, path = line.split(":", 2)
        relative = path.lstrip("/")
        if controllers == "":
            for root in (Path("/sys/fs/cgroup"), Path("/sys/fs/cgroup/unified")):
                candidates.append(root / relative / "memory.events")
        elif "memory" in controllers.split(","):
            candidates.append(Path("/sys/fs/cgroup/memory") / relative / "memory.oom_control")
    for candidate in candidates:
        if read_oom_kills(candidate) is not None:
            return candidate
    return None


def read_oom_kills(counter: Path | None) -> int | None:
    """The OOM-kill count in a file of ``oom_counter`` (None: unreadable)."""
    if counter is None:
        return None
    try:
        text = counter.read_text()
    except OSError:
        return None
    for row in text.splitlines():
        name, _, value = row.partition(" ")
        if name == "oom_kill" and value.strip().isdigit():
            return int(value)
    return None


class CgroupsUnavailable(Exception):
    """No writable memory cgroup hierarchy: model processes run without a limit."""


class MemoryCgroup:
    """The memory cgroup of one model process tree."""

    def __init__(self, path: Path, version: Literal[1, 2], limit: int) -> None:
        self.path = path
        self.version = version
        self.limit = limit
        # Its OOM-kill count when it was removed (the files are gone then).
        self.final_oom_kills: int | None = None
        self.removed = False

    @property
    def procs(self) -> Path:
        """The file a process writes its pid to in order to enter the cgroup."""
        return self.path / "cgroup.procs"

    @property
    def counter(self) -> Path:
        """The file that counts the kernel's OOM kills in this cgroup."""
        return self.path / ("memory.events" if self.version == 2 else "memory.oom_control")

    def oom_kills(self) -> int | None:
        """How many processes the kernel killed in it for memory (None: unreadable)."""
        if self.removed:
            return self.final_oom_kills
        return read_oom_kills(self.counter)

    def pids(self) -> list[int]:
        """The processes in it now."""
        try:
            return [int(p) for p in self.procs.read_text().split()]
        except (OSError, ValueError):
            return []

    def discard(self) -> None:
        """Remove it before any process entered it."""
        with contextlib.suppress(OSError):
            self.path.rmdir()
        self.removed = True

    async def remove(self) -> None:
        """Kill whatever is left in it, then remove it (its OOM-kill count is kept)."""
        if self.removed:
            return
        self.final_oom_kills = read_oom_kills(self.counter)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + REMOVE_WITHIN
        while True:
            for pid in self.pids():
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.kill(pid, signal.SIGKILL)
            try:
                self.path.rmdir()
            except FileNotFoundError:
                break
            except OSError:  # EBUSY: a killed process has not exited yet
                if loop.time() > deadline:
                    return
                await asyncio.sleep(0.02)
                continue
            break
        self.removed = True


class MemoryCgroups:
    """Where a worker makes its model processes' cgroups, and the limit each gets: its SKU's
    own (``by_sku``), else ``limit`` (None: no cgroup)."""

    def __init__(
        self,
        parent: Path,
        version: Literal[1, 2],
        limit: int | None,
        by_sku: Mapping[str, int] | None = None,
    ) -> None:
        self.parent = parent
        self.version = version
        self.limit = limit
        self.by_sku = dict(by_sku or {})
        self._sequence = itertools.count()

    @classmethod
    def discover(
        cls,
        limit: int | None,
        proc_cgroup: Path = Path("/proc/self/cgroup"),
        root: Path = ROOT,
        by_sku: Mapping[str, int] | None = None,
    ) -> MemoryCgroups:
        """The worker's own memory cgroup, checked by making (and removing) a child with a
        limit; raises CgroupsUnavailable saying why not."""
        limits = [limit, *(by_sku or {}).values()]
        given = [value for value in limits if value is not None]
        if not given or min(given) <= 0:
            raise CgroupsUnavailable("every limit must be positive")
        found = cls(*locate(proc_cgroup, root), limit, by_sku)
        found.prepare()
        found.sweep()
        probe = found.create(max(given))
        readable = probe.oom_kills() is not None
        probe.discard()
        if not readable:
            raise CgroupsUnavailable(f"cannot read {probe.counter}")
        return found

    def prepare(self) -> None:
        """v2: let the worker's cgroup hand the memory controller to its children."""
        if self.version != 2:
            return
        control = self.parent / "cgroup.subtree_control"
        if "memory" in _words(control):
            return
        try:
            control.write_text("+memory")
        except OSError as err:
            raise CgroupsUnavailable(f"cannot enable memory in {control}: {err}") from err

    def limit_for(self, sku: str | None) -> int | None:
        """The limit of a model process of ``sku`` (None: the SKUs not named), or None."""
        if sku is not None and sku in self.by_sku:
            return self.by_sku[sku]
        return self.limit

    def create(self, limit: int | None = None) -> MemoryCgroup:
        """A new cgroup with ``limit`` (None: the default one); raises CgroupsUnavailable when
        it cannot be made."""
        limit = self.limit if limit is None else limit
        if limit is None:
            raise CgroupsUnavailable("no memory limit to give")
        path = self.parent / f"{PREFIX}{os.getpid()}-{next(self._sequence)}"
        cgroup = MemoryCgroup(path, self.version, limit)
        try:
            path.mkdir()
        except OSError as err:
            raise CgroupsUnavailable(f"cannot create {path}: {err}") from err
        try:
            if self.version == 2:
                (path / "memory.max").write_text(str(limit))
                swap = path / "memory.swap.max"
                if swap.exists():  # the limit is the memory the process has, not swapped
                    swap.write_text("0")
            else:
                (path / "memory.limit_in_bytes").write_text(str(limit))
        except OSError as err:
            with contextlib.suppress(OSError):
                path.rmdir()
            raise CgroupsUnavailable(f"cannot set the memory limit of {path}: {err}") from err
        return cgroup

    def sweep(self) -> int:
        """Remove the cgroups of workers that are gone (killed before they cleaned up)."""
        removed = 0
        with contextlib.suppress(OSError):
            for path in self.parent.iterdir():
                match = NAME.match(path.name)
                if match is None or psutil.pid_exists(int(match.group(1))):
                    continue
                leftover = MemoryCgroup(path, self.version, 0)
                for pid in leftover.pids():
                    with contextlib.suppress(ProcessLookupError, PermissionError):
                        os.kill(pid, signal.SIGKILL)
                with contextlib.suppress(OSError):
                    path.rmdir()
                    removed += 1
        return removed


def locate(proc_cgroup: Path, root: Path = ROOT) -> tuple[Path, Literal[1, 2]]:
    """The directory and version of the memory cgroup a process is in (``proc_cgroup``: its
    ``/proc/<pid>/cgroup``): cgroup v2 when its unified hierarchy has the memory controller,
    else v1's memory hierarchy."""
    try:
        lines = proc_cgroup.read_text().splitlines()
    except OSError as err:
        raise CgroupsUnavailable(f"cannot read {proc_cgroup}: {err}") from err
    v1: Path | None = None
    for line in lines:
        _, controllers, path = line.split(":", 2)
        relative = path.lstrip("/")
        if controllers == "":
            for mount in (root, root / "unified"):
                if "memory" in _words(mount / "cgroup.controllers"):
                    return mount / relative, 2
        elif "memory" in controllers.split(","):
            v1 = root / "memory" / relative
    if v1 is None:
        raise CgroupsUnavailable("no memory controller in this process's cgroups")
    return v1, 1


def _words(path: Path) -> list[str]:
    try:
        return path.read_text().split()
    except OSError:
        return []


def model_cgroups(
    limit: int | None, log: logging.Logger, by_sku: Mapping[str, int] | None = None
) -> MemoryCgroups | None:
    """The cgroups that give model processes ``limit``, or their SKU's own in ``by_sku``
    (None and no SKU's: no limit); where they cannot be made, a warning says why and model
    processes run without a limit."""
    if limit is None and not by_sku:
        return None
    limits = ",".join(f"{sku}:{value}" for sku, value in sorted((by_sku or {}).items()))
    try:
        cgroups = MemoryCgroups.discover(limit, by_sku=by_sku)
    except CgroupsUnavailable as err:
        log.warning(
            "event=model_memory_limit_unavailable limit=%s limits=%s reason=%r: model processes "
            "run without a memory limit; an OOM kill is still recognised where the kernel "
            "counts it",
            limit,
            limits,
            str(err),
        )
        return None
    log.info(
        "event=model_memory_limit limit=%s limits=%s cgroup_version=%d parent=%s",
        limit,
        limits,
        cgroups.version,
        cgroups.parent,
    )
    return cgroups
