"""GPU slots that pin devices: which devices a worker has, which slot owns which, and where a
model process boots.

Each slot owns its own device group (two slots never share a device). A process is placed on
a slot when it starts and sees only that slot's devices (``CUDA_VISIBLE_DEVICES`` and
``NVIDIA_VISIBLE_DEVICES``); a key goes back to the slot it had, so a restarted process keeps
its device. Without a memory budget a slot holds one resident process: its idle one is stopped
before another version boots there. With a budget, processes share a slot while their memory
fits: device memory from ``nvidia-smi`` when it answers, else their resident memory.
"""

from __future__ import annotations

import asyncio
import contextlib
import shutil
import weakref
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Protocol

import psutil

from replicant.devices import discover_devices as discover_devices
from replicant.runner import BootError
from workers.runners.memory import version_of
from workers.runners.process import CogletProcess


class Sharer(Protocol):
    """A pool whose processes share the slots: what placing a process asks of it."""

    # True: its idle processes keep their device against the other pools' boots.
    keeps_devices: bool

    def placed(self) -> set[CogletProcess]: ...
    def stoppable(self) -> list[CogletProcess]: ...
    def evict(self, victim: CogletProcess, reason: str) -> None: ...


# `nvidia-smi -L` lines: "GPU 0: NVIDIA A100-SXM4-80GB (UUID: GPU-...)".
async def device_memory() -> dict[int, int] | None:
    """Device memory in use per process id (``nvidia-smi --query-compute-apps``), in bytes;
    None without ``nvidia-smi`` or when it fails."""
    smi = shutil.which("nvidia-smi")
    if smi is None:
        return None
    query = ["--query-compute-apps=pid,used_memory", "--format=csv,noheader,nounits"]
    try:
        proc = await asyncio.create_subprocess_exec(
            smi, *query, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.DEVNULL
        )
    except OSError:
        return None
    try:
        async with asyncio.timeout(10):
            out, _ = await proc.communicate()
    except TimeoutError:
        with contextlib.suppress(ProcessLookupError):
            proc.kill()
        await proc.wait()
        return None
    if proc.returncode != 0:
        return None
    usage: dict[int, int] = {}
    for line in out.decode("utf-8", "replace").splitlines():
        pid, _, mib = (part.strip() for part in line.partition(","))
        if pid.isdigit() and mib.isdigit():
            usage[int(pid)] = usage.get(int(pid), 0) + int(mib) * 1024 * 1024
    return usage


def _tree(pid: int) -> list[int]:
    try:
        root = psutil.Process(pid)
        return [pid, *(child.pid for child in root.children(recursive=True))]
    except psutil.Error:
        return [pid]


def is_gpu_sku(sku: str, per_slot: Mapping[str, int]) -> bool:
    """A SKU whose slots own GPU devices: named ``gpu-*`` or given in ``gpus_per_slot``."""
    return sku in per_slot or sku.startswith("gpu")


def assign_devices(
    slots: Mapping[str, int], per_slot: Mapping[str, int], devices: Sequence[str]
) -> dict[str, list[tuple[str, ...]]]:
    """The device groups of each GPU SKU's slots, handed out in order without sharing.

    A SKU gets all its slots' devices or none (then the worker does not serve it); CPU SKUs
    are left out. With no devices at all, every SKU runs unpinned (left out too).
    """
    free = list(devices)
    groups: dict[str, list[tuple[str, ...]]] = {}
    if not free:
        return groups
    for sku, count in slots.items():
        if not is_gpu_sku(sku, per_slot):
            continue
        width = per_slot.get(sku, 1)
        need = width * count
        if need > len(free) or width < 1:
            groups[sku] = []
            continue
        taken, free = free[:need], free[need:]
        groups[sku] = [tuple(taken[i : i + width]) for i in range(0, need, width)]
    return groups


class DeviceSlots:
    """The slots of one GPU SKU and the processes placed on them, shared by the SKU's pool
    and its deployment instances' pools (``pools``)."""

    def __init__(self, groups: Iterable[Sequence[str]], budget: int | None = None) -> None:
        self.groups = [tuple(group) for group in groups]
        self.budget = budget
        self.pools: weakref.WeakSet[Sharer] = weakref.WeakSet()
        # Device memory each version's process took when last read (nvidia-smi).
        self.sizes: dict[str, int] = {}
        # The slot each key last booted on: its restarts go back there.
        self.home: dict[str, int] = {}

    def __bool__(self) -> bool:
        return bool(self.groups)

    async def refresh(self, processes: Iterable[CogletProcess]) -> None:
        """Read the device memory of placed processes (with a budget and ``nvidia-smi``
        only); without it, their resident memory stands in."""
        if self.budget is None:
            return
        usage = await device_memory()
        if usage is None:
            return
        for process in processes:
            if process.pid and not process.exited:
                used = sum(usage.get(pid, 0) for pid in _tree(process.pid))
                process.device_bytes = used
                if used:
                    self.sizes[version_of(process.spec.key)] = used

    def size(self, process: CogletProcess) -> int:
        """What a placed process takes of its slot's budget."""
        if process.device_bytes is not None:
            return process.device_bytes
        return process.measured[1]

    def place(
        self,
        key: str,
        residents: Iterable[CogletProcess],
        busy: Callable[[CogletProcess], bool],
        size: Callable[[str], int],
    ) -> tuple[int, list[CogletProcess]]:
        """The slot for a new process of ``key`` and the idle residents to stop first.

        ``residents`` are the live processes (placed ones carry their slot), ``busy`` tells
        whether one must not be stopped, ``size`` a key's expected memory.
        """
        on: dict[int, list[CogletProcess]] = {i: [] for i in range(len(self.groups))}
        for process in residents:
            if process.slot is not None and process.slot in on and not process.retired:
                on[process.slot].append(process)
        home = self.home.get(key)
        # Its own slot first, then empty ones, then the others in order.
        order = sorted(on, key=lambda i: (i != home, bool(on[i]), i))
        for index in order:
            need = self.sizes.get(version_of(key), size(key))
            victims = self._victims(on[index], busy, need)
            if victims is not None:
                self.home[key] = index
                return index, victims
        raise BootError(
            f"no GPU slot is free for {key}: every slot's devices hold a busy model process"
        )

    def _victims(
        self, processes: list[CogletProcess], busy: Callable[[CogletProcess], bool], need: int
    ) -> list[CogletProcess] | None:
        """The idle processes to stop so a new one fits on a slot (None: it cannot)."""
        staying = [p for p in processes if busy(p)]
        idle = sorted((p for p in processes if not busy(p)), key=lambda p: p.last_used)
        if self.budget is None:
            return None if staying else idle
        used = sum(self.size(p) for p in staying)
        if used + need > self.budget:
            return None
        victims: list[CogletProcess] = []
        # Least recently used first; stop only until the new one fits.
        for process in idle:
            if used + need + sum(self.size(p) for p in idle if p not in victims) <= self.budget:
                break
            victims.append(process)
        return victims

    def env(self, index: int) -> dict[str, str]:
        """The environment that pins a process to slot ``index``'s devices."""
        visible = ",".join(self.groups[index])
        return {"CUDA_VISIBLE_DEVICES": visible, "NVIDIA_VISIBLE_DEVICES": visible}
