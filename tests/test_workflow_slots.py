"""What a workflow slot supplier can decide, on the real Temporal dev server.

A hardware worker takes a deep queue's first workflow tasks faster than it runs them
(docs/performance.md, "Draining"). The lever that looks natural, a workflow slot supplier
that refuses reservations of non-sticky polls (``SlotReserveContext.is_sticky`` False) while
the run slots are busy, does not hold new workflows back: while the worker has no non-sticky
poll out, the server hands the queue's new workflow tasks to its sticky polls. This test
pins that fact; when it fails, such a supplier has become possible.
"""

from __future__ import annotations

import asyncio
import uuid

from temporalio import workflow
from temporalio.worker import (
    CustomSlotSupplier,
    FixedSizeSlotSupplier,
    SlotMarkUsedContext,
    SlotPermit,
    SlotReleaseContext,
    SlotReserveContext,
    UnsandboxedWorkflowRunner,
    Worker,
    WorkerTuner,
)

from replicant.temporal import connect
from tests.conftest import LiveStack

QUEUED = 12


@workflow.defn(name="SlotFactsWorkflow")
class Trivial:
    @workflow.run
    async def run(self) -> str:
        return "done"


class Permit(SlotPermit):
    def __init__(self, sticky: bool) -> None:
        self.sticky = sticky


class OneQueuePoll(CustomSlotSupplier):
    """Grants every sticky poll, and one poll of the queue itself; the next waits forever
    (until the worker shuts down). Counts the kind of task each permit carried."""

    def __init__(self) -> None:
        self.queue_polls = 0
        self.used: list[tuple[bool, bool]] = []  # (reserved for a sticky poll, sticky task)

    async def reserve_slot(self, ctx: SlotReserveContext) -> SlotPermit:
        if not ctx.is_sticky:
            self.queue_polls += 1
            if self.queue_polls > 1:
                await asyncio.Event().wait()
        return Permit(ctx.is_sticky)

    def try_reserve_slot(self, ctx: SlotReserveContext) -> SlotPermit | None:
        return None

    def mark_slot_used(self, ctx: SlotMarkUsedContext) -> None:
        assert isinstance(ctx.permit, Permit)
        self.used.append((ctx.permit.sticky, ctx.slot_info.is_sticky))

    def release_slot(self, ctx: SlotReleaseContext) -> None:
        pass


async def test_sticky_polls_take_new_workflows_when_no_queue_poll_may(live: LiveStack) -> None:
    client = await connect(live.settings)
    queue = f"slot-facts-{uuid.uuid4().hex[:8]}"
    handles = [
        await client.start_workflow(Trivial.run, id=f"{queue}-{i}", task_queue=queue)
        for i in range(QUEUED)
    ]
    supplier = OneQueuePoll()
    tuner = WorkerTuner.create_composite(
        workflow_supplier=supplier,
        activity_supplier=FixedSizeSlotSupplier(2),
        local_activity_supplier=FixedSizeSlotSupplier(2),
        nexus_supplier=FixedSizeSlotSupplier(2),
    )
    # Shutting down ends the queue poll's reservation that waits forever.
    async with Worker(
        client,
        task_queue=queue,
        workflows=[Trivial],
        tuner=tuner,
        workflow_runner=UnsandboxedWorkflowRunner(),
    ):
        results = await asyncio.wait_for(asyncio.gather(*(h.result() for h in handles)), 120)
    assert results == ["done"] * QUEUED
    assert supplier.queue_polls >= 2, "the worker never asked for a second queue poll"
    # Every workflow's only task came from the queue itself (none had run before), and at
    # most one through the one granted queue poll: the others through sticky polls.
    assert [sticky_task for _, sticky_task in supplier.used] == [False] * QUEUED
    on_sticky = sum(1 for sticky_permit, _ in supplier.used if sticky_permit)
    assert on_sticky >= QUEUED - 1, supplier.used
