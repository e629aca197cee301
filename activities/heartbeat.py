"""The heartbeat of a long activity (a model run, a training)."""

from __future__ import annotations

import asyncio

from temporalio import activity

HEARTBEAT_INTERVAL = 1.0


async def heartbeat_forever() -> None:
    """Heartbeat every ``HEARTBEAT_INTERVAL`` until cancelled (run it as a task)."""
    # Heartbeats deliver cancellation and let Temporal notice a dead worker within seconds.
    # The first waits an interval: a run shorter than that costs no heartbeat round trip.
    while True:
        await asyncio.sleep(HEARTBEAT_INTERVAL)
        activity.heartbeat()
