"""Crash safety of creates: settling a workflow start whose outcome is unknown.

The API writes a row, then starts its workflow. When the start call fails, Temporal may
still have accepted it (a timeout after the server took it), so the row is never deleted:
Temporal is asked about the workflow id, and the start is tried once more under the same id
(a duplicate id is refused, so the model never runs twice). A row still without a workflow
is settled by the reconciler (``activities/reconcile.py``) once ``start_grace`` has passed.

Every start of a recorded row (the create's own, its second try, an Idempotency-Key retry's)
is made only while it must land before ``start_grace`` ends (``start_deadline``); after that
the row is the reconciler's alone, so it never fails a row whose start is still in flight.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from datetime import datetime, timedelta

from temporalio.client import Client
from temporalio.exceptions import WorkflowAlreadyStartedError

from api.errors import ProblemError
from replicant.temporal import workflow_exists
from replicant.timeutil import as_utc, utcnow

log = logging.getLogger("replicant.api")

# Seconds a client waits before trying again after a 503 of the create path.
RETRY_AFTER = "5"
# A start call gives up after this long; ``start_grace`` must be longer, so the reconciler
# never settles a row whose start may still land.
START_RPC_TIMEOUT = timedelta(seconds=10)


def start_deadline(created_at: datetime, grace: float) -> datetime:
    """The last moment a start of a row created at ``created_at`` may be made: one made
    later could land after the reconciler found no workflow and failed the row."""
    return as_utc(created_at) + timedelta(seconds=grace) - START_RPC_TIMEOUT


async def settle_start(
    client: Client,
    workflow_id: str,
    start: Callable[[], Awaitable[object]],
    retry_before: datetime | None = None,
) -> bool:
    """After a failed start call: True when the workflow exists now (it was accepted after
    all, or the second try started it); False when Temporal cannot say, refused again, or
    ``retry_before`` has passed with no workflow (the reconciler settles the row)."""
    try:
        if await workflow_exists(client, workflow_id):
            log.info("event=start_settled workflow=%s outcome=existed", workflow_id)
            return True
        if retry_before is not None and utcnow() >= retry_before:
            log.error("event=start_unsettled workflow=%s reason=grace_ending", workflow_id)
            return False
        await start()
    except WorkflowAlreadyStartedError:
        pass  # the first call's start landed in between
    except Exception as err:
        log.error("event=start_unsettled workflow=%s type=%s", workflow_id, type(err).__name__)
        return False
    log.info("event=start_settled workflow=%s outcome=started", workflow_id)
    return True


def start_failed(kind: str, run_id: str, err: BaseException) -> ProblemError:
    """Log a failed start of run ``run_id`` (a ``kind``: prediction, training) and return the
    503 its create answers when the start cannot be settled: its row (and key) stay for a
    retry or the reconciler."""
    log.error("event=start_failed %s=%s type=%s", kind, run_id, type(err).__name__)
    return ProblemError(
        503,
        f"The {kind} could not be scheduled; try again",
        headers={"Retry-After": RETRY_AFTER},
    )
