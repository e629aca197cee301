"""The warm coglet processes of a pool: one per key, booted once, least recently used evicted.

``checkout`` hands out a READY process with one of its slots held (``spec.concurrency`` runs
per process); a key's boot is shared by everyone who waits for it, and a process is never
evicted while busy or awaited. Eviction also keeps a memory budget (``memory.py``), and a GPU
pool places each new process on a device slot (``devices.py``).
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from prometheus_client import Counter

from replicant.cogmodel import setup_timeout
from replicant.runner import BootError, RunnerSpec
from replicant.sandbox import SandboxConfig, SandboxUnavailable, require
from workers.runners.cgroups import CgroupsUnavailable
from workers.runners.client import CogletClient
from workers.runners.coglet import (
    HEALTHY,
    UNHEALTHY,
    setup_error,
    setup_out_of_memory_error,
    unhealthy_error,
)
from workers.runners.config import PoolConfig
from workers.runners.devices import Sharer
from workers.runners.memory import measure, version_of
from workers.runners.process import (
    CogletProcess,
    ModelSandbox,
    child_env,
    free_port,
    sandbox_port,
)
from workers.runners.receiver import Receiver
from workers.runners.standby import Standbys
from workers.runners.weights import ServedWeights

# Model processes found in a state they do not come back from, then stopped: "setup_failed",
# "defunct" (coglet's worker is gone) or "unhealthy" (the model's healthcheck() failed).
PROCESS_FAILURES = Counter(
    "replicant_model_process_failures",
    "Model processes stopped for their state (setup_failed, defunct, unhealthy), by version",
    ["version", "state"],
)

DEFUNCT_AT_BOOT = "coglet reported DEFUNCT while booting"
# Health checks, 50 ms apart, after a model's worker process exits during setup.
SETUP_FAILED_CHECKS = 10


class Processes:
    """Warm processes by key, their boots, and every process started and not yet reaped."""

    def __init__(
        self,
        client: CogletClient,
        weights: ServedWeights,
        log: logging.Logger,
        config: PoolConfig,
        sandbox: SandboxConfig,
        on_record: Callable[[dict[str, Any]], None] | None = None,
    ) -> None:
        self.client = client
        # Where its processes' log records about a prediction go (the pool's runs).
        self.on_record = on_record
        self.weights = weights
        self.log = log
        self.max_warm = config.max_warm
        self.budget = config.memory_budget
        if self.budget is not None:
            self.budget.pools.add(self)
        # The last measured size of each version's process: what booting one will take.
        self.sizes: dict[str, int] = {}
        self.boot_timeout = config.boot_timeout
        self.update_interval = config.update_interval
        self.uploads = config.upload is not None
        self.devices = config.devices
        # True: its idle processes keep their device against the other pools' boots (a
        # deployment instance); False: another pool sharing the devices may stop them.
        self.keeps_devices = config.keep_devices
        if self.devices is not None:
            self.devices.pools.add(self)
        # Where each process gets a memory cgroup with the limit (None: no limit).
        self.cgroups = config.cgroups
        # How model processes are sandboxed (replicant/sandbox.py), and the pool's receiver:
        # each process gets its own links there; a sandbox's forwarder reaches its Unix
        # socket and port (set when the pool starts).
        self.sandbox = sandbox
        self.receiver: Receiver | None = None
        # The Unix socket of the pool's egress proxy (model_egress=public), once started.
        self.egress: Path | None = None
        # The route of the receiver's relay of model spans to the collector, under each
        # process's links (when tracing), once started.
        self.spans: str | None = None
        self.standbys = Standbys(config.standby, self, weights, log)
        self._warm: collections.OrderedDict[str, CogletProcess] = collections.OrderedDict()
        self._boots: dict[str, asyncio.Task[CogletProcess]] = {}
        # Every process started and not yet reaped, warm or not: close() waits for them all.
        self._spawned: set[CogletProcess] = set()
        self._waiting: collections.Counter[str] = collections.Counter()
        self._closed = False
        # Told of each process stopped for its state (the version's boot log), in a thread.
        self.on_failure = config.on_failure
        self._reports: set[asyncio.Task[None]] = set()

    @property
    def closed(self) -> bool:
        """Whether ``close`` was called: no process starts any more."""
        return self._closed

    def warm_keys(self) -> list[str]:
        """Keys of the live warm processes, least recently used first."""
        return [key for key, process in self._warm.items() if process.alive]

    def live_processes(self) -> list[CogletProcess]:
        """Every live process: warm ones and standbys."""
        warm = [p for p in self._warm.values() if p.alive]
        return warm + [p for p in self.standbys.processes() if p.alive]

    def memory(self) -> int:
        """The warm processes' resident memory together, in bytes."""
        return sum(self._measure(p) for p in self._warm.values() if p.alive)

    def _measure(self, process: CogletProcess, fresh: bool = False) -> int:
        size = measure(process, fresh)
        if size:
            self.sizes[version_of(process.spec.key)] = size
        return size

    def expected_size(self, key: str) -> int:
        """What a process of ``key`` is expected to take: its version's last measurement."""
        return self.sizes.get(version_of(key), 0)

    def get(self, key: str) -> CogletProcess | None:
        """The live warm process of ``key``."""
        process = self._warm.get(key)
        return process if process is not None and process.alive else None

    async def close(self) -> int:
        """Stop every process (standbys and boots too); how many there were."""
        self._closed = True
        if self.budget is not None:
            self.budget.pools.discard(self)
        if self.devices is not None:
            self.devices.pools.discard(self)
        self.standbys.close()
        for boot in list(self._boots.values()):
            boot.cancel()
        if self._boots:
            await asyncio.wait(list(self._boots.values()), timeout=10)
        processes = list(self._spawned)
        self._warm.clear()
        self._spawned.clear()
        for process in processes:
            process.retire()
        await asyncio.gather(*(p.wait_closed() for p in processes))
        return len(processes)

    def kill_all(self) -> None:
        """Kill every process now (at interpreter exit, when ``close`` was never awaited)."""
        for process in list(self._spawned):
            process.kill()

    # -- checkout ------------------------------------------------------------------------

    async def checkout(self, spec: RunnerSpec) -> CogletProcess:
        """A ready process for ``spec.key`` with its lock held, booting one if needed."""
        # Counted as waiting, the key's process is never evicted between boot and use.
        self._waiting[spec.key] += 1
        try:
            while True:
                if self._closed:
                    raise RuntimeError("the runner pool is closed")
                process = self._warm.get(spec.key)
                if process is not None and process.alive:
                    await process.slots.acquire()
                    process.in_use += 1
                    if await self._usable(spec, process):
                        self._warm.move_to_end(spec.key)
                        process.last_used = time.monotonic()
                        return process
                    self._free_slot(process)
                    continue
                if process is not None:
                    self.retire(process)
                boot = self._boots.get(spec.key) or self._start_boot(spec)
                await asyncio.shield(boot)
        finally:
            self._waiting[spec.key] -= 1
            if not self._waiting[spec.key]:
                del self._waiting[spec.key]

    async def _usable(self, spec: RunnerSpec, process: CogletProcess) -> bool:
        """Whether a warm process may take the next run: still the key's, and (when its model
        has a ``healthcheck()``) coglet's /health-check does not report it unhealthy; an
        unhealthy one is stopped (its runs end saying why) and replaced."""
        if not process.alive or self._warm.get(spec.key) is not process:
            return False
        if not process.checks_health:
            return True
        status, body = await self.client.health(process.url)
        if status != UNHEALTHY:
            return process.alive
        self.stopped_for(process, "unhealthy", unhealthy_error(body))
        return False

    def report(self, process: CogletProcess, state: str, error: str) -> None:
        """Count a process found in ``state`` (``PROCESS_FAILURES``) and tell ``on_failure``
        (the version's boot log: the state, ``error`` and the process's output tail)."""
        PROCESS_FAILURES.labels(version_of(process.spec.key), state).inc()
        if self.on_failure is None:
            return
        write = asyncio.to_thread(
            self.on_failure, process.spec, state, error, process.output_tail()
        )
        task = asyncio.create_task(write)
        self._reports.add(task)
        task.add_done_callback(self._reported)

    def _reported(self, task: asyncio.Task[None]) -> None:
        self._reports.discard(task)
        if not task.cancelled() and task.exception() is not None:
            self.log.warning("event=boot_log_failed error=%r", task.exception())

    def stopped_for(self, process: CogletProcess, state: str, error: str) -> None:
        """Stop a process found in ``state`` (see ``PROCESS_FAILURES``); the runs on it end
        with ``error``."""
        process.failure = error
        self.report(process, state, error)
        self.log.warning(
            "event=runner_%s key=%s pid=%d error=%r", state, process.spec.key, process.pid, error
        )
        self.retire(process)

    def release(self, process: CogletProcess) -> None:
        """Give back a process from ``checkout``; idle processes beyond ``max_warm`` go."""
        self._free_slot(process)
        process.last_used = time.monotonic()
        self.evict_idle()

    def _free_slot(self, process: CogletProcess) -> None:
        process.in_use -= 1
        process.slots.release()

    def retire(self, process: CogletProcess, restart: bool = False) -> None:
        """Kill a process and forget it; optionally boot its replacement in the background."""
        process.retire()
        key = process.spec.key
        if self._warm.get(key) is process:
            del self._warm[key]
        if restart and not self._closed and key not in self._boots:
            self._start_boot(process.spec)

    def evict_idle(self, extra: int = 0, extra_bytes: int = 0) -> None:
        """Stop least recently used idle processes beyond ``max_warm``, then (across the
        pools sharing the memory budget) while the warm processes' memory plus
        ``extra_bytes`` about to boot passes it; never a busy or awaited one."""
        while len(self._warm) + len(self.booting()) + extra > self.max_warm:
            idle = self.idle_processes()
            if not idle:
                break
            self.evict(idle[0], "count")
        if self.budget is not None:
            self.budget.enforce(extra_bytes)

    def booting(self) -> list[str]:
        """Keys whose process is booting and not yet warm."""
        return [key for key in self._boots if key not in self._warm]

    def pending_memory(self) -> int:
        """What the processes booting now are expected to take."""
        return sum(self.expected_size(key) for key in self.booting())

    def idle_processes(self) -> list[CogletProcess]:
        """Warm processes that may be stopped (no run on them, none waiting), LRU first."""
        return [p for key, p in self._warm.items() if p.idle and key not in self._waiting]

    def evict(self, victim: CogletProcess, reason: str) -> None:
        """Stop an idle warm process (or a standby) to make room."""
        self.log.info(
            "event=runner_evicted key=%s pid=%d reason=%s rss=%d",
            victim.spec.key,
            victim.pid,
            reason,
            self.expected_size(victim.spec.key),
        )
        self.standbys.discard(victim)
        self.retire(victim)

    # -- boot ----------------------------------------------------------------------------

    def with_upload(self, spec: RunnerSpec) -> RunnerSpec:
        """Point coglet's uploads of a prediction's output files at the pool's receiver (a URL
        relative to each process's own links)."""
        if not self.uploads or spec.upload_url is not None or spec.mode != "predict":
            return spec
        return spec.model_copy(update={"upload_url": "upload/"})

    def new_process(
        self, spec: RunnerSpec, stop_others: bool = True
    ) -> tuple[CogletProcess, dict[str, str]]:
        """A process for ``spec`` (not started yet) on a free port, and its environment; on a
        GPU slot, idle processes in its way are stopped unless ``stop_others`` is False (then
        it takes only room that is free, else BootError)."""
        try:
            sandboxed = require(self.sandbox)
        except SandboxUnavailable as err:
            raise BootError(str(err)) from err
        own_network = sandboxed and self.sandbox.own_network
        port = sandbox_port() if own_network else free_port()
        process = CogletProcess(self.with_upload(spec), port, self.log, self.on_record)
        env = child_env(spec, port, self.update_interval)
        limit = self.cgroups.limit_for(spec.memory_sku) if self.cgroups is not None else None
        if self.cgroups is not None and limit is not None:
            try:
                process.cgroup = self.cgroups.create(limit)
            except CgroupsUnavailable as err:
                raise BootError(f"cannot give the model process its memory limit: {err}") from err
            env["REPLICANT_CGROUP_PROCS"] = str(process.cgroup.procs)
        if self.devices:
            try:
                self._pin(process, env, stop_others)
            except BaseException:
                if process.cgroup is not None:
                    process.cgroup.discard()
                raise
        receiver = self.receiver
        if sandboxed:
            links = (receiver.socket, receiver.port) if receiver is not None else None
            process.sandbox = ModelSandbox(self.sandbox, links, self.egress)
            self.client.route(process.url, process.sandbox.socket)
            process.on_exit = self.client.unroute
        if receiver is not None:
            process.links = receiver.issue(process)
            process.forget_links = receiver.revoke
            if process.sandbox is not None and self.spans is not None:
                # Its spans go to the relay through its own links.
                process.sandbox.spans = process.links + self.spans
        return process, env

    def stoppable(self) -> list[CogletProcess]:
        """Its idle processes and standbys: what another pool's boot may stop."""
        return self.idle_processes() + self.standbys.processes()

    def placed(self) -> set[CogletProcess]:
        """Its processes that hold a device: started and not reaped, or warm."""
        return {p for p in self._spawned if not p.exited} | set(self._warm.values())

    def _pin(self, process: CogletProcess, env: dict[str, str], stop_others: bool) -> None:
        """Place a new process on a GPU slot (stopping the idle processes in its way)."""
        assert self.devices is not None
        residents: list[CogletProcess] = []
        # Idle processes (and standbys) that may be stopped to make room, and their pools.
        stoppable: dict[CogletProcess, Sharer] = {}
        for pool in list(self.devices.pools):
            residents += pool.placed()
            if stop_others and (pool is self or not pool.keeps_devices):
                stoppable.update((p, pool) for p in pool.stoppable())
        index, victims = self.devices.place(
            process.spec.key, residents, lambda p: p not in stoppable, self.expected_size
        )
        for victim in victims:
            stoppable[victim].evict(victim, f"device slot={index}")
        process.slot = index
        process.devices = self.devices.groups[index]
        # Counted on its slot from now on, while it boots too (a failed start retires it).
        self._spawned.add(process)
        env.update(self.devices.env(index))

    def spawned(self, process: CogletProcess) -> None:
        """Note a started process, so ``close`` stops it."""
        self._spawned.add(process)

    def _start_boot(self, spec: RunnerSpec) -> asyncio.Task[CogletProcess]:
        """One boot per key, shared by everyone who waits for it."""
        self.evict_idle(extra=1, extra_bytes=self.expected_size(spec.key))
        task = asyncio.create_task(self._boot(spec))
        self._boots[spec.key] = task

        def done(t: asyncio.Task[CogletProcess]) -> None:
            if self._boots.get(spec.key) is t:
                del self._boots[spec.key]
            if not t.cancelled() and t.exception() is not None:
                self.log.warning("event=boot_failed key=%s error=%r", spec.key, str(t.exception()))

        task.add_done_callback(done)
        return task

    async def _boot(self, spec: RunnerSpec) -> CogletProcess:
        started = time.perf_counter()
        self._spawned = {p for p in self._spawned if not p.exited}
        if spec.weights_ref and self.standbys.enabled:
            self.standbys.keep(spec)  # for the next fine-tune of this base, too
            adopted = await self.standbys.adopt(spec, self.with_upload(spec))
            if adopted is not None and self.devices is not None and adopted.slot is not None:
                self.devices.home[spec.key] = adopted.slot  # its restarts go back there
            if adopted is not None:
                return self._ready(spec, adopted, started)
        for attempt in range(3):
            process: CogletProcess | None = None
            fetch: asyncio.Task[None] | None = None
            try:
                if self.devices is not None:
                    # With a device budget: what each process on the devices uses now.
                    placed = [p for pool in list(self.devices.pools) for p in pool.placed()]
                    await self.devices.refresh(placed)
                weights = await self.weights.managed(spec.model_dir)
                process, env = self.new_process(spec)
                self.weights.place(process, weights)
                if spec.weights_ref:
                    # The weights download while coglet and the model start; the model's
                    # request for them waits for the download (see ServedWeights.serve).
                    env["COG_WEIGHTS"] = process.links + self.weights.path(spec.weights_ref)
                    fetch = asyncio.create_task(self.weights.fetch(spec.weights_ref))
                await process.spawn(env)
                self._spawned.add(process)
                try:
                    await self.wait_ready(process)
                except BootError:
                    if fetch is not None and fetch.done() and fetch.exception() is not None:
                        fetch.result()  # the cause: the weights, not the model
                    raise
                if fetch is not None:
                    await fetch
            except BootError as err:
                if process is not None:
                    process.retire()
                    await process.wait_closed()
                    if process.cgroup is not None and process.oom_kills():
                        message = setup_out_of_memory_error(process.cgroup.limit)
                        raise BootError(message, err.logs) from err
                if "address already in use" in err.logs.lower() and attempt < 2:
                    continue  # another process took the free port first
                raise
            except BaseException:
                if process is not None:
                    process.retire()
                raise
            finally:
                if fetch is not None and not fetch.done():
                    fetch.cancel()
            return self._ready(spec, process, started)
        raise AssertionError("unreachable")

    def _ready(self, spec: RunnerSpec, process: CogletProcess, started: float) -> CogletProcess:
        """Register a booted process as the warm one of ``spec.key``."""
        if self._closed:
            process.retire()
            raise RuntimeError("the runner pool is closed")
        self._warm[spec.key] = process
        self._warm.move_to_end(spec.key)
        self.log.info(
            "event=runner_ready key=%s pid=%d port=%d boot_seconds=%.3f rss=%d",
            spec.key,
            process.pid,
            process.port,
            time.perf_counter() - started,
            self._measure(process, fresh=True),
        )
        self.evict_idle()
        return process

    async def wait_ready(self, process: CogletProcess) -> None:
        """Poll /health-check until READY; woken early by every line coglet writes."""
        assert process.proc is not None
        loop = asyncio.get_running_loop()
        # cog.yaml's COG_SETUP_TIMEOUT (which coglet enforces too) bounds setup, within ours.
        own = setup_timeout(process.spec.model_dir)
        limit = self.boot_timeout if own is None else min(self.boot_timeout, own + 1.0)
        deadline = loop.time() + limit
        interval = 0.01
        while True:
            process.output_seen.clear()
            if process.proc.returncode is not None:
                await process.wait_closed(within=1.0)
                raise BootError(
                    f"coglet exited with code {process.proc.returncode} before it was ready",
                    process.output_tail(),
                )
            status, body = await self.client.health(process.url)
            if status in HEALTHY:
                return
            if status == "SETUP_FAILED":
                raise await self._setup_failed(process, body)
            if status == "DEFUNCT":
                self.report(process, "defunct", DEFUNCT_AT_BOOT)
                raise BootError(DEFUNCT_AT_BOOT, process.output_tail())
            if status == UNHEALTHY and process.checks_health:
                # Setup is done, but the model's healthcheck() fails: it will not serve.
                await process.output_settled()
                self.report(process, "unhealthy", unhealthy_error(body))
                raise BootError(unhealthy_error(body), process.output_tail())
            if process.worker_exited():
                # coglet reports SETUP_FAILED (with the model's error) a moment after its
                # worker exits: ask again briefly before settling for the bare fact.
                for _ in range(SETUP_FAILED_CHECKS):
                    await asyncio.sleep(0.05)
                    status, body = await self.client.health(process.url)
                    if status == "SETUP_FAILED":
                        raise await self._setup_failed(process, body)
                await process.output_settled()
                raise BootError(
                    "the model's worker process exited during setup", process.output_tail()
                )
            if loop.time() > deadline:
                raise BootError(f"setup did not finish within {limit:g} s", process.output_tail())
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(interval):
                    await process.output_seen.wait()
            # coglet writes its last setup lines a moment before it reports READY: after
            # output, poll again soon rather than after the grown interval.
            interval = 0.01 if process.output_seen.is_set() else min(interval * 1.5, 0.25)

    async def _setup_failed(self, process: CogletProcess, body: dict[str, object]) -> BootError:
        """The BootError of a failed setup(): the model's error, and its output to the end."""
        setup = body.get("setup")
        setup_logs = str((setup if isinstance(setup, dict) else {}).get("logs") or "")
        await process.output_settled()
        error = setup_error(setup_logs)
        self.report(process, "setup_failed", error)
        return BootError(error, process.output_tail())
