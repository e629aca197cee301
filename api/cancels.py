"""Canceling a run (a prediction or a training): its workflow is told, and it records the end.

When Temporal answers that there is no such workflow (it ended, or never started), the read
model is all there is: ``canceled`` is recorded there (a guarded write: a run that ended keeps
its end). When Temporal cannot be reached, nothing is recorded and the request fails with 503
and ``Retry-After``: the run may well still be running.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from datetime import timedelta
from typing import Literal

from api.errors import ProblemError
from api.startguard import RETRY_AFTER
from api.state import AppState
from replicant import readmodel, trainings
from replicant.contracts import workflow_id
from replicant.temporal import is_not_found
from replicant.timeutil import utcnow

log = logging.getLogger("replicant.api")

RunKindName = Literal["prediction", "training"]
# A cancel gives up on an unreachable Temporal after about this long (the client retries).
SIGNAL_TIMEOUT = timedelta(seconds=5)


async def signal_cancel(state: AppState, kind: RunKindName, run_id: str) -> bool:
    """Tell the run's workflow to cancel (True); when Temporal has no such workflow, record
    ``canceled`` in the read model (False). 503 when Temporal cannot be reached."""
    try:
        client = await state.temporal()
        handle = client.get_workflow_handle(workflow_id(kind, run_id))
        # A cancel request: the workflow records `canceled` and closes as Canceled.
        await handle.cancel(rpc_timeout=SIGNAL_TIMEOUT)
        # Workflows started before they closed at the run's end act on the signal (both
        # name it "cancel"); the new ones have closed or acted on the request already.
        with contextlib.suppress(Exception):
            await handle.signal("cancel", rpc_timeout=SIGNAL_TIMEOUT)
    except Exception as err:
        if not is_not_found(err):
            log.error("event=cancel_failed %s=%s type=%s", kind, run_id, type(err).__name__)
            raise ProblemError(
                503,
                f"The {kind} could not be canceled: the workflow service is unreachable; try again",
                headers={"Retry-After": RETRY_AFTER},
            ) from err
        finish = readmodel.finish_prediction if kind == "prediction" else trainings.finish_training
        await asyncio.to_thread(
            finish,
            state.engine,
            run_id,
            status="canceled",
            completed_at=utcnow(),
            prices=state.settings.hardware_prices,
        )
        return False
    return True
