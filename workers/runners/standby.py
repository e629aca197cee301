"""Fine-tune standbys: base-version processes started ahead, their setup() waiting for weights.

A fine-tune runs its base version's code in the base version's environment with its own
weights (COG_WEIGHTS). A standby is a process of that base started ahead of need, with
COG_WEIGHTS pointing at the pool's receiver: its coglet, Python and imports are up and its
setup() waits on the weights request. A fine-tune that boots adopts it and hands it its
weights, so its cold start is the weights and setup()'s own work, not a process start.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import secrets
import time
from typing import Protocol

from starlette.responses import Response

from replicant.runner import BootError, RunnerSpec
from workers.runners.process import CogletProcess
from workers.runners.weights import ServedWeights

# A standby is replaced after waiting this long, as models fetch their weights with a timeout
# (the built-in ngram: 120 s); standbys of a base are kept while its fine-tunes booted in the
# last STANDBY_KEEP seconds.
STANDBY_TTL = 90.0
STANDBY_KEEP = 900.0


class Launcher(Protocol):
    """What standbys need from the pool's processes."""

    @property
    def closed(self) -> bool:
        """Whether the pool is closed (no new processes)."""
        ...

    def new_process(
        self, spec: RunnerSpec, stop_others: bool = True
    ) -> tuple[CogletProcess, dict[str, str]]:
        """A process for ``spec``, not started yet, and its environment (``stop_others``
        False: on a GPU slot only where no process must be stopped, else BootError)."""
        ...

    def spawned(self, process: CogletProcess) -> None:
        """Note a started process, so closing the pool stops it."""
        ...

    async def wait_ready(self, process: CogletProcess) -> None:
        """Wait until coglet is READY (raises BootError)."""
        ...


def base_key(spec: RunnerSpec) -> str:
    """What a fine-tune shares with its base version's processes: all but its weights."""
    return json.dumps(
        [
            str(spec.model_dir),
            str(spec.python),
            spec.predict_ref,
            sorted(spec.env.items()),
            spec.upload_url,
            spec.memory_sku,
        ]
    )


class Standby:
    """A base version's process started ahead for a fine-tune (see ``Standbys.keep``)."""

    def __init__(self, owner: Standbys, base: str, spec: RunnerSpec) -> None:
        self.owner = owner
        self.base = base
        self.source = spec  # what a replacement is made from
        self.spec = spec.model_copy(update={"key": f"standby:{spec.key}", "weights_ref": None})
        self.token = secrets.token_urlsafe(12)
        # Never in another process's way: on a GPU slot, only room that is free.
        self.process, env = owner.launcher.new_process(self.spec, stop_others=False)
        self._ref: asyncio.Future[str | None] = asyncio.get_running_loop().create_future()
        self._spawned = asyncio.Event()
        self.asked = asyncio.Event()  # its setup() has asked for weights
        owner.by_token[self.token] = self
        env["COG_WEIGHTS"] = f"{self.process.links}standby/{self.token}"
        self._task = asyncio.create_task(self._run(env))

    async def _run(self, env: dict[str, str]) -> None:
        log = self.owner.log
        try:
            placed = await self.owner.weights.managed(self.spec.model_dir)
            self.owner.weights.place(self.process, placed)
            await self.process.spawn(env)
            self.owner.launcher.spawned(self.process)
        except BootError as err:
            log.warning("event=standby_not_started error=%r", str(err))
            self.process.retired = True
            return
        finally:
            self._spawned.set()
        log.info("event=standby_started key=%s pid=%d", self.spec.key, self.process.pid)
        # Models fetch their weights with a timeout: replace the standby well before it.
        await asyncio.sleep(STANDBY_TTL)
        if not self._ref.done():
            self.owner.expired(self)

    async def waiting(self) -> bool:
        """Whether this standby can still be handed a fine-tune's weights."""
        await self._spawned.wait()
        return self.process.alive and not self._ref.done()

    def assign(self, ref: str) -> None:
        """Hand it a fine-tune's weights: its pending weights request gets them."""
        self._ref.set_result(ref)

    async def assigned_ref(self) -> str | None:
        """The weights it was handed (None: stopped before a fine-tune took it)."""
        return await asyncio.shield(self._ref)

    def stop(self) -> None:
        """Stop an unadopted standby (its pending weights request fails)."""
        if not self._ref.done():
            self._ref.set_result(None)
            self.process.retire()
        self._task.cancel()


class Standbys:
    """One standby per base version, kept while that base's fine-tunes boot."""

    def __init__(
        self, enabled: bool, launcher: Launcher, weights: ServedWeights, log: logging.Logger
    ) -> None:
        self.enabled = enabled
        self.launcher = launcher
        self.weights = weights
        self.log = log
        self.by_base: dict[str, Standby] = {}
        self.by_token: dict[str, Standby] = {}
        self._wanted: dict[str, float] = {}

    def keep(self, spec: RunnerSpec) -> None:
        """Keep a standby for the base of fine-tune ``spec`` (started in the background);
        one per base, replaced when adopted or stale, for ``STANDBY_KEEP`` seconds."""
        if not self.enabled or self.launcher.closed or spec.mode != "predict":
            return
        base = base_key(spec)
        self._wanted[base] = time.monotonic()
        current = self.by_base.get(base)
        if current is None or not current.process.alive:
            self._start(base, spec)

    def _start(self, base: str, spec: RunnerSpec) -> None:
        """A standby for ``base``, unless there is no room for one (every GPU slot taken)."""
        try:
            self.by_base[base] = Standby(self, base, spec)
        except BootError as err:
            self.by_base.pop(base, None)
            self.log.info("event=standby_not_started key=%s reason=%r", spec.key, str(err))

    def pid(self, spec: RunnerSpec) -> int | None:
        """The process id of the standby for ``spec``'s base (None: there is none)."""
        standby = self.by_base.get(base_key(spec))
        return standby.process.pid if standby is not None and standby.process.pid else None

    def processes(self) -> list[CogletProcess]:
        """The processes of the current standbys."""
        return [standby.process for standby in self.by_base.values()]

    async def ready(self, spec: RunnerSpec, within: float = 60.0) -> bool:
        """Wait until the standby for ``spec``'s base waits for its weights; False when there
        is none or it did not get there in time."""
        standby = self.by_base.get(base_key(spec))
        if standby is None:
            return False
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(within):
                await standby.asked.wait()
        return standby.asked.is_set() and await standby.waiting()

    async def adopt(self, spec: RunnerSpec, upload_spec: RunnerSpec) -> CogletProcess | None:
        """The standby of ``spec``'s base, handed its weights and READY (running as
        ``upload_spec``); None when there is none to adopt (or it failed: the caller boots a
        process the usual way)."""
        standby = self.by_base.get(base_key(spec))
        if standby is None or not await standby.waiting():
            return None
        assert spec.weights_ref is not None
        self.weights.path(spec.weights_ref)  # a bad reference fails here, standby kept
        await self.weights.fetch(spec.weights_ref)
        if self.by_base.get(standby.base) is not standby or not await standby.waiting():
            return None  # taken by another fine-tune meanwhile
        del self.by_base[standby.base]
        process = standby.process
        process.spec = upload_spec
        try:
            standby.assign(spec.weights_ref)
            await self.launcher.wait_ready(process)
        except BootError as err:
            self.log.warning("event=standby_failed key=%s error=%r", spec.key, str(err))
            process.retire()
            return None
        finally:
            self.keep(spec)
        self.log.info("event=standby_adopted key=%s pid=%d", spec.key, process.pid)
        return process

    def drop(self, standby: Standby) -> None:
        """Forget and stop a standby."""
        if self.by_base.get(standby.base) is standby:
            del self.by_base[standby.base]
        standby.stop()

    def discard(self, process: CogletProcess) -> None:
        """Stop the standby of ``process``, if it is one (its slot is needed)."""
        for standby in list(self.by_base.values()):
            if standby.process is process:
                self.drop(standby)

    def close(self) -> None:
        """Stop every standby."""
        for standby in list(self.by_base.values()):
            self.drop(standby)

    def expired(self, standby: Standby) -> None:
        """A standby waited ``STANDBY_TTL``: replace it while its base is still in use."""
        self.drop(standby)
        wanted = self._wanted.get(standby.base, 0.0)
        if time.monotonic() - wanted < STANDBY_KEEP and not self.launcher.closed:
            self._start(standby.base, standby.source)
        else:
            self._wanted.pop(standby.base, None)

    async def on_request(self, process: CogletProcess, token: str) -> Response:
        """A standby's setup() asks for its weights: answer once a fine-tune adopts it (only
        to the standby's own process)."""
        standby = self.by_token.get(token)
        if standby is None or standby.process is not process:
            return Response(status_code=404)
        standby.asked.set()
        ref = await standby.assigned_ref()
        self.by_token.pop(standby.token, None)
        if ref is None:  # stopped before any fine-tune took it: its setup() fails
            return Response(status_code=410)
        return await self.weights.serve_ref(ref)
