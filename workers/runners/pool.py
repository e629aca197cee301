"""``RunnerPool``: the public face of the runner package (see its docstring)."""

from __future__ import annotations

import asyncio
import atexit
import collections
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any, Unpack

from starlette.requests import Request
from starlette.responses import Response

from replicant.egress import EgressProxy
from replicant.runner import CogPrediction, RunnerSpec, RunWith
from replicant.sandbox import machine_sandbox, status_line, sweep_scratch
from workers.runners.answer import answer_reader, read_answer
from workers.runners.cgroups import MemoryCgroup, MemoryCgroups
from workers.runners.client import CogletClient
from workers.runners.config import PoolConfig
from workers.runners.devices import DeviceSlots
from workers.runners.execution import Executor
from workers.runners.memory import by_version
from workers.runners.memory import export as export_memory
from workers.runners.process import CogletProcess
from workers.runners.processes import Processes
from workers.runners.receiver import Receiver
from workers.runners.run import Runs
from workers.runners.spans import ROUTE, SpanRelay
from workers.runners.weights import ServedWeights


class RunnerPool:
    """Warm coglet processes, one per key, least recently used evicted beyond ``max_warm``."""

    def __init__(self, config: PoolConfig | None = None, log: logging.Logger | None = None) -> None:
        """``config``: its settings and the resources it shares (see config.py)."""
        self.config = config = config or PoolConfig()
        self.max_warm = config.max_warm
        self.upload = config.upload
        self.weights = config.weights
        self.log = log or logging.getLogger("replicant.runners")
        self._client = CogletClient()
        self._served = ServedWeights(config.weights)
        self._runs = Runs()
        self._processes = Processes(
            self._client,
            self._served,
            self.log,
            config,
            config.sandbox or machine_sandbox(),
            on_record=self._runs.on_record,
        )
        export_memory(self._processes)
        self._executor = Executor(
            self._processes,
            self._client,
            self._runs,
            self.log,
            cancel_grace=config.cancel_grace,
            update_interval=config.update_interval,
        )
        self._receiver = Receiver(self)
        # Model processes' proxy to public addresses (model_egress=public).
        self._egress: EgressProxy | None = None
        # Sandboxed model processes' spans to the collector (when this process traces).
        self._spans: SpanRelay | None = None
        # Runs per instance index of a key: index i runs under key "{key}#{i}" (0: the key).
        self._busy_instances: dict[str, collections.Counter[int]] = {}
        self._started = False
        self._start_lock = asyncio.Lock()

    # -- lifecycle -------------------------------------------------------------------------

    async def start(self) -> None:
        """Start the HTTP client and the internal webhook receiver (idempotent)."""
        if self._started:
            return
        async with self._start_lock:
            if self._started:
                return
            if self._processes.closed:
                raise RuntimeError("the runner pool is closed")
            self._client.open()
            await self._receiver.start()
            self._processes.receiver = self._receiver
            if self._processes.sandbox.egress == "public":
                self._egress = EgressProxy(self._receiver.socket.with_name("egress.sock"))
                await self._egress.start()
                self._processes.egress = self._egress.path
            self._spans = SpanRelay.when_tracing()
            if self._spans is not None:
                self._processes.spans = ROUTE
            atexit.register(self._processes.kill_all)
            self._started = True
            self.log.info(
                "event=pool_started webhook_port=%d max_warm=%d",
                self._receiver.port,
                self.max_warm,
            )
            self.log.info(await asyncio.to_thread(status_line, self._processes.sandbox))
            await asyncio.to_thread(sweep_scratch)

    async def close(self) -> None:
        """Stop every coglet process and the webhook receiver."""
        stopped = await self._processes.close()
        if self._egress is not None:
            await self._egress.close()
        await self._receiver.stop()
        if self._spans is not None:
            await self._spans.close()
        await self._client.close()
        atexit.unregister(self._processes.kill_all)
        self.log.info("event=pool_closed stopped=%d", stopped)

    def warm_keys(self) -> list[str]:
        """Keys of the live warm processes, least recently used first."""
        return self._processes.warm_keys()

    def memory(self) -> dict[str, tuple[int, int]]:
        """(resident bytes, processes) of each version's live processes, measured now."""
        return by_version(self._processes.live_processes())

    @property
    def memory_cgroups(self) -> MemoryCgroups | None:
        """Where its model processes get their memory limit (None: they have none)."""
        return self._processes.cgroups

    def cgroup(self, key: str) -> MemoryCgroup | None:
        """The memory cgroup of a warm key's process (None: no limit, or not warm)."""
        process = self._processes.get(key)
        return process.cgroup if process is not None else None

    @property
    def device_slots(self) -> DeviceSlots | None:
        """Its GPU slots (None: its processes are not pinned)."""
        return self._processes.devices

    def devices(self, key: str) -> tuple[str, ...] | None:
        """The GPU devices a warm key's process is pinned to (None: unpinned or not warm)."""
        process = self._processes.get(key)
        return process.devices if process is not None else None

    def pid(self, key: str) -> int | None:
        """The coglet process id of a warm key (for tests and diagnostics)."""
        process = self._processes.get(key)
        return process.pid if process is not None else None

    def has_started(self, prediction_id: str) -> bool:
        """Whether a model process has started ``prediction_id`` (for tests and diagnostics)."""
        run = self._runs.get(prediction_id)
        return run is not None and run.started

    # -- processes -------------------------------------------------------------------------

    @asynccontextmanager
    async def exclusive(self, spec: RunnerSpec) -> AsyncIterator[CogletProcess]:
        """The READY process of ``spec.key`` (booted if needed), no prediction running on it
        until the block ends."""
        await self.start()
        process = await self._processes.checkout(spec)
        try:
            yield process
        finally:
            self._processes.release(process)

    async def warm(self, spec: RunnerSpec) -> int:
        """Boot ``spec.key``'s process ahead of any prediction (if it is not warm); its pid."""
        async with self.exclusive(spec) as process:
            return process.pid

    async def health(self, process: CogletProcess) -> dict[str, Any]:
        """coglet's /health-check body of a process (empty when it does not answer)."""
        _, body = await self._client.health(process.url)
        return body

    # -- predictions -----------------------------------------------------------------------

    async def predict(
        self, spec: RunnerSpec, prediction_id: str, input: dict[str, Any], **run: Unpack[RunWith]
    ) -> CogPrediction:
        """Run one prediction (or training, by ``spec.mode``) and return its terminal state.

        Boots a process for ``spec.key`` when none is warm, awaits ``on_booted`` once it is
        handed over, passes intermediate states to ``on_update`` (at most every
        ``update_interval``), and returns the terminal one (``run``: see ``RunWith``; the
        run reports to and ends its ``state``). Cancelling the awaiting task
        cancels the prediction in coglet (killing and restarting the process if it does not
        stop within ``cancel_grace``), then re-raises.
        """
        await self.start()
        instance, index = self._claim_instance(spec)
        try:
            return await self._executor.predict(instance, prediction_id, input, **run)
        finally:
            self._release_instance(spec.key, index)

    async def cancel(self, prediction_id: str) -> None:
        """Cancel a running prediction; its ``predict`` call then returns it ``canceled``."""
        await self._executor.cancel(prediction_id)

    def _claim_instance(self, spec: RunnerSpec) -> tuple[RunnerSpec, int]:
        """The process this run gets: the first of its key with a free slot, so up to
        ``spec.concurrency`` runs share one process and more run side by side on others."""
        busy = self._busy_instances.setdefault(spec.key, collections.Counter())
        index = next(i for i in range(len(busy) + 1) if busy[i] < spec.concurrency)
        busy[index] += 1
        if index == 0:
            return spec, index
        return spec.model_copy(update={"key": f"{spec.key}#{index}"}), index

    def _release_instance(self, key: str, index: int) -> None:
        busy = self._busy_instances.get(key)
        if busy is not None:
            busy[index] -= 1
            if busy[index] <= 0:
                del busy[index]
            if not busy:
                del self._busy_instances[key]

    # -- fine-tune standbys (see workers/runners/standby.py) -------------------------------

    def keep_standby(self, spec: RunnerSpec) -> None:
        """Keep a standby for the base of fine-tune ``spec`` (started in the background);
        one per base, replaced when adopted or stale (a pool made without standbys: none)."""
        self._processes.standbys.keep(spec)

    async def standby_ready(self, spec: RunnerSpec, within: float = 60.0) -> bool:
        """Wait until the standby for ``spec``'s base waits for its weights (diagnostics,
        benchmarks and tests); False when there is none or it did not get there in time."""
        return await self._processes.standbys.ready(spec, within)

    def standby_pid(self, spec: RunnerSpec) -> int | None:
        """The process id of the standby for ``spec``'s base (None: there is none)."""
        return self._processes.standbys.pid(spec)

    def standby_processes(self) -> list[CogletProcess]:
        """The processes of the current standbys (diagnostics and tests)."""
        return self._processes.standbys.processes()

    # -- the receiver's routes (see workers/runners/receiver.py) ---------------------------

    async def on_webhook(
        self, process: CogletProcess, prediction_id: str, request: Request
    ) -> Response:
        """coglet's webhook of a streaming prediction (only for a run on its own process)."""
        run = self._runs.get(prediction_id)
        if run is not None and run.process is not process:
            return self._refused(process, prediction_id, "webhook")
        if run is not None:
            # Read piece by piece: a delivery holds the run's whole logs and output so far.
            payload = await read_answer(request.stream(), answer_reader(run.process.spec))
            if payload.values is None:
                return Response(status_code=400)
            run.offer(payload.values, payload.oversized)
        # 200 for late deliveries too, so coglet does not retry them.
        return Response(status_code=200)

    async def on_upload(self, process: CogletProcess, filename: str, request: Request) -> Response:
        """coglet PUTs each output file here (``--upload-url``); the sink stores it and its URL
        goes back in ``Location``, which coglet puts in the output instead of a data URI."""
        if self.upload is None:
            return Response(status_code=404)
        prediction_id = request.headers.get("x-prediction-id", "")
        run = self._runs.get(prediction_id)
        if run is None:
            return Response(status_code=404)
        if run.process is not process:
            return self._refused(process, prediction_id, "upload")
        try:
            url = await self.upload(
                prediction_id, filename, request.headers.get("content-type"), request.stream()
            )
        except Exception as err:
            self.log.warning(
                "event=output_upload_failed prediction=%s type=%s",
                prediction_id,
                type(err).__name__,
            )
            return Response(status_code=500)
        return Response(status_code=201, headers={"Location": url})

    def _refused(self, process: CogletProcess, prediction_id: str, what: str) -> Response:
        """A process spoke for a run on another process: 404, as for an unknown run."""
        self.log.warning(
            "event=receiver_refused what=%s key=%s pid=%d prediction=%s",
            what,
            process.spec.key,
            process.pid,
            prediction_id,
        )
        return Response(status_code=404)

    async def on_weights(self, process: CogletProcess, digest: str, name: str) -> Response:
        """A fine-tune's setup() fetches its stored weights (only its own)."""
        if not self._served.of(process.spec.weights_ref, digest):
            return Response(status_code=404)
        return await self._served.serve(digest, name)

    async def on_standby(self, process: CogletProcess, token: str) -> Response:
        """A standby's setup() waits for the weights of the fine-tune that adopts it."""
        return await self._processes.standbys.on_request(process, token)

    async def on_spans(self, request: Request) -> Response:
        """A sandboxed model process exports its spans: relayed to the collector."""
        if self._spans is None:
            return Response(status_code=404)
        return await self._spans.forward(request)
