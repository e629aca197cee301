"""A webhook receiver that refuses connections for a while, then comes back: every
`completed` webhook still arrives, signed, with the prediction's final body."""

from __future__ import annotations

import asyncio
import time

import httpx
from standardwebhooks import Webhook
from temporalio.api.enums.v1 import EventType

from replicant.devstack import free_port
from replicant.temporal import connect
from tests.conftest import LiveStack
from tests.receiver import running_receiver

SLEEP = "/v1/models/replicant/sleep/predictions"
# Refused attempts each prediction's history must show before the receiver comes back.
REFUSED = 4


async def refused_attempts(live: LiveStack, prediction_id: str) -> int:
    client = await connect(live.settings)
    handle = client.get_workflow_handle(f"prediction-{prediction_id}")
    count = 0
    async for event in handle.fetch_history_events():
        if event.event_type == EventType.EVENT_TYPE_ACTIVITY_TASK_FAILED:
            message = event.activity_task_failed_event_attributes.failure.message
            count += message.startswith("webhook receiver unreachable")
    return count


async def test_completed_webhooks_arrive_once_a_refusing_receiver_comes_back(
    live: LiveStack, api: httpx.Client
) -> None:
    port = free_port()  # nothing listens here yet: every connection is refused
    url = f"http://127.0.0.1:{port}/hook/"
    body = {"webhook": url, "webhook_events_filter": ["completed"]}
    created = []
    for n in range(3):
        response = api.post(SLEEP, json={"input": {"seconds": 0.2 * n}, **body})
        assert response.status_code == 201, response.text
        created.append(response.json()["id"])
    deadline = time.monotonic() + 90
    for prediction_id in created:
        while await refused_attempts(live, prediction_id) < REFUSED:
            assert time.monotonic() < deadline, "the deliveries were not attempted"
            await asyncio.sleep(0.5)
    secret = api.get("/v1/webhooks/default/secret").json()["key"]
    with running_receiver(port) as receiver:
        for prediction_id in created:
            final = api.get(f"/v1/predictions/{prediction_id}").json()
            assert final["status"] == "succeeded"
            deliveries = await asyncio.to_thread(
                receiver.wait, lambda found: bool(found), prediction_id, 120
            )
            assert len(deliveries) == 1, deliveries
            delivered = Webhook(secret).verify(deliveries[0].body, deliveries[0].headers)
            assert deliveries[0].headers["webhook-id"].endswith("_completed_0")
            assert delivered["status"] == "succeeded"
            assert delivered["output"] == final["output"]
            assert delivered["completed_at"] == final["completed_at"]
