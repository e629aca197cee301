"""TEST ONLY: the API process with a fault in its Temporal client, to reach the crash windows
of a create (tests/test_crash_windows.py): ``python -m tests.faultyapi kill|lose|stall-wake``.

``kill``: the process SIGKILLs itself at its first workflow start, so the row is written and
no workflow started. ``lose``: every start is made, then its answer is lost (a timeout), as
if Temporal took it but the API never heard so. ``stall-wake``: a deployment's wake (the
start of its controller with a ``wake`` signal, after a prediction's start) never answers,
as with a Temporal that takes it and then goes silent.
"""

from __future__ import annotations

import asyncio
import os
import signal
import sys
from typing import Any

from temporalio.client import (
    Interceptor,
    OutboundInterceptor,
    StartWorkflowInput,
    StartWorkflowUpdateWithStartInput,
    WorkflowHandle,
    WorkflowUpdateHandle,
)

from replicant import cli, temporal


class _Fault(OutboundInterceptor):
    def __init__(self, next: OutboundInterceptor, fault: str) -> None:
        super().__init__(next)
        self.fault = fault

    def _before(self) -> None:
        if self.fault == "kill":
            os.kill(os.getpid(), signal.SIGKILL)

    def _after(self) -> None:
        if self.fault == "lose":
            raise TimeoutError("injected: the start's answer was lost")

    async def start_workflow(self, input: StartWorkflowInput) -> WorkflowHandle[Any, Any]:
        if self.fault == "stall-wake" and input.start_signal == "wake":
            await asyncio.Event().wait()  # never set: the call never answers
        self._before()
        handle = await super().start_workflow(input)
        self._after()
        return handle

    async def start_update_with_start_workflow(
        self, input: StartWorkflowUpdateWithStartInput
    ) -> WorkflowUpdateHandle[Any]:
        self._before()
        handle = await super().start_update_with_start_workflow(input)
        self._after()
        return handle


class FaultInterceptor(Interceptor):
    """Injects ``fault`` (``kill``, ``lose``, ``stall-wake``) into the client's workflow starts."""

    def __init__(self, fault: str) -> None:
        if fault not in ("kill", "lose", "stall-wake"):
            raise SystemExit(f"unknown fault {fault!r}: kill, lose or stall-wake")
        self.fault = fault

    def intercept_client(self, next: OutboundInterceptor) -> OutboundInterceptor:
        return _Fault(next, self.fault)


def command(fault: str) -> list[str]:
    """The command that runs an API process with ``fault``."""
    return [sys.executable, "-m", "tests.faultyapi", fault]


if __name__ == "__main__":
    temporal.CLIENT_INTERCEPTORS.append(FaultInterceptor(sys.argv[1]))
    cli.api()
