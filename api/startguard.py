"""Crash safety of creates: settling a workflow start whose outcome is unknown.

The API writes a row, then starts its workflow. When the start call fails, Temporal may
still have accepted it (a timeout after the server took it), so the row is never deleted:
Temporal is asked about the workflow id, and the start is tried once more under the same id
(a duplicate id is refused, so the model never runs twice). A row still without a workflow
is settled by the reconciler (``activities/reconcile.py``) once ``start_grace`` has passed.
"""

from __future__ import annotations

import logging
import os
import signal
from collections.abc import Awaitable, Callable
from datetime import timedelta

from temporalio.client import Client
from temporalio.exceptions import WorkflowAlreadyStartedError

from replicant.settings import Settings
from replicant.temporal import workflow_exists

log = logging.getLogger("replicant.api")

# A start call gives up after this long; ``start_grace`` must be longer, so the reconciler
# never settles a row whose start may still land.
START_RPC_TIMEOUT = timedelta(seconds=10)


async def settle_start(
    client: Client, workflow_id: str, start: Callable[[], Awaitable[object]]
) -> bool:
    """After a failed start call: True when the workflow exists now (it was accepted after
    all, or the second try started it); False when Temporal cannot say or refused again."""
    try:
        if await workflow_exists(client, workflow_id):
            log.info("event=start_settled workflow=%s outcome=existed", workflow_id)
            return True
        await start()
    except WorkflowAlreadyStartedError:
        pass  # the first call's start landed in between
    except Exception as err:
        log.error("event=start_unsettled workflow=%s type=%s", workflow_id, type(err).__name__)
        return False
    log.info("event=start_settled workflow=%s outcome=started", workflow_id)
    return True


def crash_point(settings: Settings) -> None:
    """TEST ONLY: die by SIGKILL between writing a row and starting its workflow when
    ``fault_kill_before_start`` is set (production never sets it)."""
    if settings.fault_kill_before_start:
        os.kill(os.getpid(), signal.SIGKILL)


def lost_answer_point(settings: Settings) -> None:
    """TEST ONLY: raise as if the answer to a start Temporal took were lost, when
    ``fault_lose_start_answer`` is set (production never sets it)."""
    if settings.fault_lose_start_answer:
        raise TimeoutError("injected: the start's answer was lost")
