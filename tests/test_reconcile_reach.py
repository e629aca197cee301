"""The start reconciler reaches every row, however deep the queue: each pass goes on from
the row where the last pass stopped and wraps around to the lowest id.

A stack of its own whose Schedule runs a pass every second with a small budget (30 questions
to Temporal and 40 rows of each kind a pass), below more waiting rows of each kind
(predictions, trainings, builds) than a page of the reconciler: an orphan placed after all of
them, beyond a pass's reach, is failed within a few passes, and so is one placed before them
once the passes have gone past it.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from datetime import timedelta
from typing import Any

import pytest
from sqlmodel import Session, col, select

from activities.reconcile import CHUNK, NEVER_STARTED
from replicant.contracts import ExpireFiles
from replicant.ids import new_id
from replicant.tables import Build, Prediction, Training
from replicant.temporal import connect
from replicant.timeutil import utcnow
from tests.conftest import LiveStack, own_stack
from tests.waiting import wait_until
from workflows.sweeps import FileExpiryWorkflow

# Its own stack (the fixture below): a whole stack, so an end-to-end test.
pytestmark = pytest.mark.e2e

ASKS = 30
ROWS = 40
# More waiting rows of each kind than a page the reconciler reads at once.
WAITING = CHUNK + 5
# Longer ago than the start grace: the reconciler may settle these rows.
LONG_AGO = timedelta(hours=1)
# No worker serves this queue: a workflow started on it stays running, untouched.
NOBODYS_QUEUE = "replicant-test-nobody"
# Passes enough for a full round at the budget, with room for a loaded machine.
DEADLINE = 180.0


@pytest.fixture(scope="module")
def reach(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveStack]:
    with own_stack(
        tmp_path_factory, "reach", reconcile_interval=1.0, reconcile_asks=ASKS, reconcile_rows=ROWS
    ) as live:
        yield live


def kinds(live: LiveStack) -> dict[str, Any]:
    """A row of each kind the reconciler goes over, by kind: ``starting`` and from long ago."""
    owner = live.settings.default_account
    model = f"{owner}/reach"
    created_at = utcnow() - LONG_AGO

    def prediction(row_id: str) -> Prediction:
        return Prediction(id=row_id, owner=owner, model=model, version="v", created_at=created_at)

    def training(row_id: str) -> Training:
        return Training(
            id=row_id,
            owner=owner,
            model=model,
            version="v",
            destination=model,
            created_at=created_at,
        )

    def build(row_id: str) -> Build:
        return Build(id=row_id, owner=owner, model=model, created_at=created_at)

    return {"prediction": prediction, "training": training, "build": build}


def insert(live: LiveStack, rows: list[Any]) -> None:
    with Session(live.engine, expire_on_commit=False) as session:
        session.add_all(rows)
        session.commit()


def failed_in_time(live: LiveStack, rows: list[Any]) -> list[Any]:
    """``rows`` as the database holds them once each has left ``starting``."""

    def now() -> list[Any]:
        with Session(live.engine, expire_on_commit=False) as session:
            return [session.get(type(row), row.id) for row in rows]

    def settled(found: list[Any]) -> bool:
        return all(row is not None and row.status != "starting" for row in found)

    return wait_until(
        now, settled, what="the orphans to leave starting", timeout=DEADLINE, interval=0.5
    )


async def test_an_orphan_beyond_a_pass_is_reached_and_one_behind_the_passes_after_a_wrap(
    reach: LiveStack,
) -> None:
    makers = kinds(reach)
    client = await connect(reach.settings)
    # Ids sort in this order: "2..." < "m..." < "z..." (ids are lowercase base32).
    waiting = {
        kind: [make(f"m{new_id()[1:]}") for _ in range(WAITING)] for kind, make in makers.items()
    }
    for kind, rows in waiting.items():
        # Any workflow type will do under a row's id: what counts is that it exists. Started
        # before the rows are written, so no pass can find a row without its workflow.
        await asyncio.gather(
            *(
                client.start_workflow(
                    FileExpiryWorkflow.run,
                    ExpireFiles(),
                    id=f"{kind}-{row.id}",
                    task_queue=NOBODYS_QUEUE,
                )
                for row in rows
            )
        )
        insert(reach, rows)
    last = [make(f"z{new_id()[1:]}") for make in makers.values()]
    insert(reach, last)

    prediction, training, build = failed_in_time(reach, last)
    assert [row.status for row in (prediction, training, build)] == ["failed"] * 3
    assert prediction.error == NEVER_STARTED.format(kind="prediction")
    assert training.error == NEVER_STARTED.format(kind="training")
    assert build.error is not None

    # The passes are past the lowest ids now: an orphan there is reached after a wrap.
    first = [make(f"2{new_id()[1:]}") for make in makers.values()]
    insert(reach, first)
    assert [row.status for row in failed_in_time(reach, first)] == ["failed"] * 3

    # The rows whose workflow exists were left as they were.
    with Session(reach.engine) as session:
        for kind, rows in waiting.items():
            table = type(rows[0])
            ids = [row.id for row in rows]
            statuses = session.exec(select(table.status).where(col(table.id).in_(ids))).all()
            assert set(statuses) == {"starting"}, kind
    await asyncio.gather(
        *(
            client.get_workflow_handle(f"{kind}-{row.id}").terminate("test over")
            for kind, rows in waiting.items()
            for row in rows
        )
    )
