"""Memory of model processes: each coglet process tree's resident set, and its Prometheus series.

A model's memory is in coglet's worker child (and whatever that starts), so a process counts
with all its descendants. Measurements are kept for a second: eviction asks on every release.
"""

from __future__ import annotations

import time
import weakref
from collections.abc import Iterable, Iterator
from typing import Protocol

import psutil
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import REGISTRY, Collector

from workers.runners.process import CogletProcess

# A measurement younger than this is reused.
MEASURE_TTL = 1.0


def process_tree(pid: int) -> list[psutil.Process]:
    """A process and all its descendants ([]: it is gone)."""
    try:
        root = psutil.Process(pid)
        return [root, *root.children(recursive=True)]
    except psutil.Error:
        return []


def tree_rss(pid: int) -> int:
    """The resident set of a process and all its descendants, in bytes (0: it is gone)."""
    total = 0
    for member in process_tree(pid):
        try:
            total += member.memory_info().rss
        except psutil.Error:
            continue  # exited between the listing and the reading
    return total


def measure(process: CogletProcess, fresh: bool = False) -> int:
    """The process tree's resident set (reused for ``MEASURE_TTL`` unless ``fresh``)."""
    if not process.pid or process.exited:
        return 0
    now = time.monotonic()
    when, size = process.measured
    if fresh or now - when > MEASURE_TTL:
        size = tree_rss(process.pid)
        process.measured = (now, size)
    return size


def version_of(key: str) -> str:
    """The version label of a runner key: instances ``key#i`` count with their key, and the
    processes of a SKU with a memory limit of its own (``key@sku``) with the others."""
    return key.partition("#")[0].partition("@")[0]


def by_version(processes: Iterable[CogletProcess]) -> dict[str, tuple[int, int]]:
    """(bytes, process count) per version label of live processes, measured now."""
    totals: dict[str, tuple[int, int]] = {}
    for process in processes:
        if not process.alive:
            continue
        label = version_of(process.spec.key)
        size, count = totals.get(label, (0, 0))
        totals[label] = (size + measure(process, fresh=True), count + 1)
    return totals


class Member(Protocol):
    """A pool of warm processes as the memory budget and the metrics see it."""

    def memory(self) -> int: ...
    def pending_memory(self) -> int: ...
    def idle_processes(self) -> list[CogletProcess]: ...
    def evict(self, victim: CogletProcess, reason: str) -> None: ...
    def live_processes(self) -> list[CogletProcess]: ...


class MemoryBudget:
    """A limit on the resident memory of several pools' warm processes together (a worker's
    hardware pools share one)."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.pools: weakref.WeakSet[Member] = weakref.WeakSet()

    def used(self) -> int:
        """The warm processes' memory, plus what the ones booting are expected to take."""
        return sum(pool.memory() + pool.pending_memory() for pool in list(self.pools))

    def enforce(self, extra: int = 0) -> None:
        """Stop least recently used idle processes of any member pool while the total plus
        ``extra`` (a process about to boot) passes the limit."""
        while self.used() + extra > self.limit:
            candidates = [
                (process.last_used, id(pool), pool, process)
                for pool in list(self.pools)
                for process in pool.idle_processes()
            ]
            if not candidates:
                return
            _, _, pool, victim = min(candidates, key=lambda c: (c[0], c[1]))
            pool.evict(victim, "memory")


class MemoryCollector(Collector):
    """Prometheus series of every live pool's warm processes, measured at each scrape."""

    def __init__(self) -> None:
        self.sources: weakref.WeakSet[Member] = weakref.WeakSet()

    def collect(self) -> Iterator[GaugeMetricFamily]:
        """``replicant_model_memory_bytes`` and ``replicant_model_processes`` by version."""
        memory = GaugeMetricFamily(
            "replicant_model_memory_bytes",
            "Resident memory of a version's warm model processes (with their children)",
            labels=["version"],
        )
        count = GaugeMetricFamily(
            "replicant_model_processes", "Warm model processes of a version", labels=["version"]
        )
        totals: dict[str, tuple[int, int]] = {}
        for source in list(self.sources):
            for label, (size, n) in by_version(_snapshot(source)).items():
                old_size, old_n = totals.get(label, (0, 0))
                totals[label] = (old_size + size, old_n + n)
        for label, (size, n) in sorted(totals.items()):
            memory.add_metric([label], size)
            count.add_metric([label], n)
        yield memory
        yield count


def _snapshot(source: Member) -> list[CogletProcess]:
    """A pool's live processes, read from the metrics server's thread while the event loop
    may change them: read again when a dict changed under the reading."""
    for _ in range(5):
        try:
            return source.live_processes()
        except RuntimeError:
            continue
    return []


COLLECTOR = MemoryCollector()
_registered = False


def export(source: Member) -> None:
    """Include a pool's processes in the default registry's series (registered once)."""
    global _registered
    if not _registered:
        REGISTRY.register(COLLECTOR)
        _registered = True
    COLLECTOR.sources.add(source)
