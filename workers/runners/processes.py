"""The warm coglet processes of a pool: one per key, booted once, least recently used evicted.

``checkout`` hands out a READY process with its lock held (one run per process); a key's boot
is shared by everyone who waits for it, and a process is never evicted while busy or awaited.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import time

from replicant.runner import BootError, RunnerSpec
from workers.runners.client import CogletClient
from workers.runners.coglet import HEALTHY, setup_error
from workers.runners.process import CogletProcess, child_env, free_port, worker_exited
from workers.runners.standby import Standbys
from workers.runners.weights import ServedWeights

# Health checks, 50 ms apart, after a model's worker process exits during setup.
SETUP_FAILED_CHECKS = 10


class Processes:
    """Warm processes by key, their boots, and every process started and not yet reaped."""

    def __init__(
        self,
        client: CogletClient,
        weights: ServedWeights,
        log: logging.Logger,
        *,
        max_warm: int,
        boot_timeout: float,
        update_interval: float,
        uploads: bool,
        standby: bool,
    ) -> None:
        self.client = client
        self.weights = weights
        self.log = log
        self.max_warm = max_warm
        self.boot_timeout = boot_timeout
        self.update_interval = update_interval
        self.uploads = uploads
        self.standbys = Standbys(standby, self, weights, log)
        self._warm: collections.OrderedDict[str, CogletProcess] = collections.OrderedDict()
        self._boots: dict[str, asyncio.Task[CogletProcess]] = {}
        # Every process started and not yet reaped, warm or not: close() waits for them all.
        self._spawned: set[CogletProcess] = set()
        self._waiting: collections.Counter[str] = collections.Counter()
        self._closed = False

    @property
    def closed(self) -> bool:
        """Whether ``close`` was called: no process starts any more."""
        return self._closed

    def warm_keys(self) -> list[str]:
        """Keys of the live warm processes, least recently used first."""
        return [key for key, process in self._warm.items() if process.alive]

    def get(self, key: str) -> CogletProcess | None:
        """The live warm process of ``key``."""
        process = self._warm.get(key)
        return process if process is not None and process.alive else None

    async def close(self) -> int:
        """Stop every process (standbys and boots too); how many there were."""
        self._closed = True
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
                    await process.lock.acquire()
                    if process.alive and self._warm.get(spec.key) is process:
                        self._warm.move_to_end(spec.key)
                        return process
                    process.lock.release()
                    continue
                if process is not None:
                    self.retire(process)
                boot = self._boots.get(spec.key) or self._start_boot(spec)
                await asyncio.shield(boot)
        finally:
            self._waiting[spec.key] -= 1
            if not self._waiting[spec.key]:
                del self._waiting[spec.key]

    def release(self, process: CogletProcess) -> None:
        """Give back a process from ``checkout``; idle processes beyond ``max_warm`` go."""
        process.lock.release()
        self.evict_idle()

    def retire(self, process: CogletProcess, restart: bool = False) -> None:
        """Kill a process and forget it; optionally boot its replacement in the background."""
        process.retire()
        key = process.spec.key
        if self._warm.get(key) is process:
            del self._warm[key]
        if restart and not self._closed and key not in self._boots:
            self._start_boot(process.spec)

    def evict_idle(self, extra: int = 0) -> None:
        """Stop least recently used idle processes beyond ``max_warm`` (never a busy one)."""
        while True:
            booting = sum(1 for key in self._boots if key not in self._warm)
            if len(self._warm) + booting + extra <= self.max_warm:
                return
            idle = [
                p
                for key, p in self._warm.items()
                if not p.lock.locked() and key not in self._waiting
            ]
            if not idle:
                return
            victim = idle[0]
            self.log.info("event=runner_evicted key=%s pid=%d", victim.spec.key, victim.pid)
            self.retire(victim)

    # -- boot ----------------------------------------------------------------------------

    def with_upload(self, spec: RunnerSpec) -> RunnerSpec:
        """Point coglet's uploads of a prediction's output files at the pool's receiver."""
        if not self.uploads or spec.upload_url is not None or spec.mode != "predict":
            return spec
        return spec.model_copy(update={"upload_url": f"{self.weights.base}upload/"})

    def new_process(self, spec: RunnerSpec) -> tuple[CogletProcess, dict[str, str]]:
        """A process for ``spec`` (not started yet) on a free port, and its environment."""
        port = free_port()
        process = CogletProcess(self.with_upload(spec), port, self.log)
        return process, child_env(spec, port, self.update_interval)

    def spawned(self, process: CogletProcess) -> None:
        """Note a started process, so ``close`` stops it."""
        self._spawned.add(process)

    def _start_boot(self, spec: RunnerSpec) -> asyncio.Task[CogletProcess]:
        """One boot per key, shared by everyone who waits for it."""
        self.evict_idle(extra=1)
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
            if adopted is not None:
                return self._ready(spec, adopted, started)
        for attempt in range(3):
            process: CogletProcess | None = None
            fetch: asyncio.Task[None] | None = None
            try:
                process, env = self.new_process(spec)
                if spec.weights_ref:
                    # The weights download while coglet and the model start; the model's
                    # request for them waits for the download (see ServedWeights.serve).
                    env["COG_WEIGHTS"] = self.weights.url(spec.weights_ref)
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
            "event=runner_ready key=%s pid=%d port=%d boot_seconds=%.3f",
            spec.key,
            process.pid,
            process.port,
            time.perf_counter() - started,
        )
        self.evict_idle()
        return process

    async def wait_ready(self, process: CogletProcess) -> None:
        """Poll /health-check until READY; woken early by every line coglet writes."""
        assert process.proc is not None
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.boot_timeout
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
                raise BootError("coglet reported DEFUNCT while booting", process.output_tail())
            if worker_exited(process.pid):
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
                raise BootError(
                    f"setup did not finish within {self.boot_timeout:g} s", process.output_tail()
                )
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(interval):
                    await process.output_seen.wait()
            interval = min(interval * 1.5, 0.25)

    async def _setup_failed(self, process: CogletProcess, body: dict[str, object]) -> BootError:
        """The BootError of a failed setup(): the model's error, and its output to the end."""
        setup = body.get("setup")
        setup_logs = str((setup if isinstance(setup, dict) else {}).get("logs") or "")
        await process.output_settled()
        return BootError(setup_error(setup_logs), process.output_tail())
