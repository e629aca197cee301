"""A backlog on a one-slot hardware queue, for the tests of fair queues and deployment
priority: a stack whose predictions may run long, a sleep model on its one-slot ``gpu-t4``
queue, and the steps of a backlog (hold the slot, queue, release, read the start order).
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from temporalio.client import Client

from replicant.accounts import create_account, set_weight
from replicant.temporal import connect
from replicant.versions import create_version, ensure_model
from tests.conftest import LiveStack, own_stack
from tests.observe import run_activity
from tests.waiting import async_wait_until

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"
QUEUED_WAIT = 180.0  # seconds for every run activity of a backlog to reach the queue


def long_run_live(name: str) -> Any:
    """A module's ``live`` fixture: the embedded stack (fairness on, as `make dev` runs it)
    with a long prediction timeout, so one prediction can hold the slot while a backlog is
    queued. Use it as ``live = long_run_live("name")``."""

    @pytest.fixture(scope="module", name="live")
    def fixture(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveStack]:
        with own_stack(tmp_path_factory, name, prediction_timeout=600.0) as stack:
            yield stack

    return fixture


def sleep_model_on_one_slot(live: LiveStack, prefix: str) -> str:
    """A new public sleep model on gpu-t4, the stack's one-slot hardware queue."""
    name = f"{prefix}-{os.urandom(3).hex()}"
    model = ensure_model(live.engine, "replicant", name, hardware="gpu-t4")
    create_version(live.settings, live.engine, model, EXAMPLES / "sleep")
    return f"replicant/{name}"


def account(live: LiveStack, prefix: str, weight: float | None = None) -> tuple[str, str]:
    """A fresh account (username, token), with ``weight`` when given."""
    username = f"{prefix}-{os.urandom(3).hex()}"
    _, token = create_account(live.engine, username)
    if weight is not None:
        set_weight(live.engine, username, weight)
    return username, token


def created(response: httpx.Response) -> str:
    """The id of a prediction just created (201)."""
    assert response.status_code == 201, response.text
    prediction_id: str = response.json()["id"]
    return prediction_id


def predict(client: httpx.Client, model: str, seconds: float) -> str:
    """Create a prediction of the sleep model ``model``; its id."""
    path = f"/v1/models/{model}/predictions"
    return created(client.post(path, json={"input": {"seconds": seconds}}))


async def wait_until_queued(temporal: Client, prediction_ids: list[str]) -> None:
    """Until every prediction's run activity is scheduled (waiting for the slot)."""
    waiting = set(prediction_ids)

    async def all_queued() -> set[str]:
        for prediction_id in list(waiting):
            if await run_activity(temporal, prediction_id) is not None:
                waiting.discard(prediction_id)
        return waiting

    await async_wait_until(
        all_queued,
        lambda left: not left,
        what=f"{len(prediction_ids)} predictions to reach the queue",
        timeout=QUEUED_WAIT,
        interval=0.2,
    )


async def serve_backlog(
    live: LiveStack,
    blocker: tuple[httpx.Client, str],
    backlog: dict[str, list[str]],
    tokens: dict[str, str],
) -> list[str]:
    """Release the slot held by ``blocker`` once the whole backlog is queued; the owners of
    the backlog's predictions (keys of ``backlog`` and ``tokens``) in the order they started."""
    ids = [prediction_id for owned in backlog.values() for prediction_id in owned]
    temporal = await connect(live.settings)
    await wait_until_queued(temporal, ids)
    client, blocker_id = blocker
    assert client.post(f"/v1/predictions/{blocker_id}/cancel").status_code == 200
    owner_of = {p: owner for owner, owned in backlog.items() for p in owned}
    token_of = {p: tokens[owner] for p, owner in owner_of.items()}
    finished: list[dict[str, Any]] = []
    for prediction_id in ids:
        final = await asyncio.to_thread(
            live.wait_for, prediction_id, timeout=300, token=token_of[prediction_id]
        )
        assert final["status"] == "succeeded", final
        finished.append(final)
    finished.sort(key=lambda p: p["started_at"])
    return [owner_of[p["id"]] for p in finished]


async def hold_the_slot(live: LiveStack, token: str, client: httpx.Client, model: str) -> str:
    """A long prediction that is running (so the slot is taken)."""
    blocker = predict(client, model, 300)
    running = await asyncio.to_thread(
        live.wait_for, blocker, lambda p: p["status"] != "starting", 120, token
    )
    assert running["status"] == "processing", running
    return blocker
