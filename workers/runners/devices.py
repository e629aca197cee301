"""GPU slots that pin devices: which devices a worker has, which slot owns which, and where a
model process boots.

Each slot owns its own device group (two slots never share a device). A process is placed on
a slot when it starts and sees only that slot's devices (``CUDA_VISIBLE_DEVICES`` and
``NVIDIA_VISIBLE_DEVICES``); a key goes back to the slot it had, so a restarted process keeps
its device. Without a memory budget a slot holds one resident process: its idle one is stopped
before another version boots there. With a budget, processes share a slot while their measured
memory fits.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import weakref
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import TYPE_CHECKING

from replicant.runner import BootError
from workers.runners.process import CogletProcess

if TYPE_CHECKING:
    from workers.runners.processes import Processes

# `nvidia-smi -L` lines: "GPU 0: NVIDIA A100-SXM4-80GB (UUID: GPU-...)".
_GPU_LINE = re.compile(r"^GPU (\d+):", re.MULTILINE)


def discover_devices(configured: str | None) -> list[str]:
    """The worker's GPU devices: ``configured`` (comma-separated ids), else the ones
    ``nvidia-smi -L`` lists, else none."""
    if configured is not None:
        return [d.strip() for d in configured.split(",") if d.strip()]
    smi = shutil.which("nvidia-smi")
    if smi is None:
        return []
    try:
        listing = subprocess.run(
            [smi, "-L"], capture_output=True, text=True, timeout=10, check=True
        ).stdout
    except (OSError, subprocess.SubprocessError):
        return []
    return _GPU_LINE.findall(listing)


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
        self.pools: weakref.WeakSet[Processes] = weakref.WeakSet()
        # The slot each key last booted on: its restarts go back there.
        self.home: dict[str, int] = {}

    def __bool__(self) -> bool:
        return bool(self.groups)

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
            victims = self._victims(on[index], busy, size(key))
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
        used = sum(p.measured[1] for p in staying)
        if used + need > self.budget:
            return None
        victims: list[CogletProcess] = []
        # Least recently used first; stop only until the new one fits.
        for process in idle:
            if used + need + sum(p.measured[1] for p in idle if p not in victims) <= self.budget:
                break
            victims.append(process)
        return victims

    def env(self, index: int) -> dict[str, str]:
        """The environment that pins a process to slot ``index``'s devices."""
        visible = ",".join(self.groups[index])
        return {"CUDA_VISIBLE_DEVICES": visible, "NVIDIA_VISIBLE_DEVICES": visible}
