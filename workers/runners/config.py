"""``PoolConfig``: what a ``RunnerPool`` is made of, in one value.

The resources several pools share are objects of their own, named by type: a worker's pools
share one ``MemoryBudget`` (their warm processes' memory together) and one ``MemoryCgroups``
(each model process's memory limit); a GPU SKU's pool and its deployment instances' pools
share one ``DeviceSlots``. A pool that shares gets the other pool's object; one that does not
gets one of its own (or None: no such limit).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from replicant.runner import RunnerSpec, UploadSink
from replicant.sandbox import SandboxConfig
from replicant.weights import WeightsCache
from workers.runners.cgroups import MemoryCgroups
from workers.runners.devices import DeviceSlots
from workers.runners.memory import MemoryBudget

# Told, in a thread, of a model process stopped for its state: (its spec, the state
# "setup_failed", "defunct" or "unhealthy", the error, the tail of its output).
OnFailure = Callable[[RunnerSpec, str, str, str], None]


@dataclass(frozen=True)
class PoolConfig:
    """A pool's settings and the resources it shares with other pools."""

    # Warm processes kept, one per key, least recently used evicted beyond it.
    max_warm: int = 4
    # How long a process may take to boot (Cog's setup) before it fails.
    boot_timeout: float = 300.0
    # How long a canceled prediction may take to stop before its process is killed.
    cancel_grace: float = 5.0
    # At most one live update per this many seconds.
    update_interval: float = 0.25
    # Where coglet's output files go (None: coglet returns data URIs).
    upload: UploadSink | None = None
    # Fine-tunes' stored weights, fetched and served to their model processes.
    weights: WeightsCache | None = None
    # Keep a booted standby for the base of each fine-tune (see standby.py).
    standby: bool = False
    # The warm-memory budget shared with other pools (None: no budget).
    memory_budget: MemoryBudget | None = None
    # The GPU slots its processes are pinned to, maybe shared (None: unpinned).
    devices: DeviceSlots | None = None
    # Its idle processes keep their device against another sharing pool's boot (a
    # deployment instance's pool); False: another pool may stop them.
    keep_devices: bool = False
    # Each model process's memory cgroup with the limit (None: no limit; see cgroups.py).
    cgroups: MemoryCgroups | None = None
    # How model processes are sandboxed (None: as the machine's settings say).
    sandbox: SandboxConfig | None = None
    # Told of each process stopped for its state: the version's boot log (None: nobody).
    on_failure: OnFailure | None = None
