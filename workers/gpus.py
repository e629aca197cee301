"""A worker's GPU SKUs: their devices, split into slots, each SKU with a pool of its own."""

from __future__ import annotations

import logging

from replicant.runner import UploadSink
from replicant.settings import Settings
from replicant.weights import WeightsCache
from workers.runners import PoolConfig, RunnerPool
from workers.runners.cgroups import MemoryCgroups
from workers.runners.config import OnFailure
from workers.runners.devices import DeviceSlots, assign_devices, discover_devices
from workers.runners.memory import MemoryBudget

log = logging.getLogger("replicant.worker")


def gpu_slot_pools(
    settings: Settings,
    slots: dict[str, int],
    upload: UploadSink,
    weights: WeightsCache,
    budget: MemoryBudget | None = None,
    cgroups: MemoryCgroups | None = None,
    on_failure: OnFailure | None = None,
) -> tuple[list[str], dict[str, RunnerPool]]:
    """The SKUs this worker serves, and a device-pinned pool for each GPU SKU among them.

    Without devices (none configured, no ``nvidia-smi``) every SKU is served unpinned on the
    shared pool, as on a CPU-only machine. With devices, a GPU SKU that gets none (too few for
    its slots) is not served here: a prediction waits for a worker that has them. The pools
    share ``budget`` (the worker's warm-memory budget) and ``cgroups`` (the memory limit of
    each model process) with the worker's other pool, and tell ``on_failure`` of processes
    stopped for their state (the versions' boot logs).
    """
    devices = discover_devices(settings.gpu_devices)
    groups = assign_devices(slots, settings.gpus_per_slot, devices)
    served: list[str] = []
    pools: dict[str, RunnerPool] = {}
    for sku, count in slots.items():
        if sku not in groups:
            served.append(sku)
            continue
        if not groups[sku]:
            log.warning(
                "event=hardware_not_served hardware=%s reason=too_few_devices devices=%s",
                sku,
                ",".join(devices),
            )
            continue
        served.append(sku)
        config = PoolConfig(
            max_warm=max(settings.max_warm_runners, count),
            memory_budget=budget,
            update_interval=0.05,
            upload=upload,
            weights=weights,
            devices=DeviceSlots(groups[sku], settings.gpu_memory_budget),
            cgroups=cgroups,
            # Standbys take only free room on a slot, and any boot there stops them.
            standby=True,
            on_failure=on_failure,
        )
        pools[sku] = RunnerPool(config)
        log.info(
            "event=gpu_slots hardware=%s slots=%s",
            sku,
            ";".join(",".join(group) for group in groups[sku]),
        )
    return served, pools
