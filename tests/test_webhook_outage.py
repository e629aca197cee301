"""A webhook receiver that refuses connections for minutes, then comes back: every
`completed` webhook still arrives, signed, with the prediction's final body.

The predictions are created through an API process of their own on the shared stack, whose
settings retry a `completed` webhook for 10 minutes, at most ``MAX_INTERVAL`` seconds apart,
and keep the predictions' data past the outage. The test waits on the refused attempts in
each prediction's history, never on a clock: the receiver comes back once every prediction
has seen its deliveries refused for ``OUTAGE`` seconds.
"""

from __future__ import annotations

import asyncio
import json
from datetime import datetime

import httpx
from replicate.webhook import Webhooks, WebhookSigningSecret

from replicant.devstack import free_port
from replicant.temporal import connect
from tests.conftest import LiveStack
from tests.observe import failed_attempts
from tests.receiver import refusing_receiver
from tests.waiting import async_wait_until

SLEEP = "/v1/models/replicant/sleep/predictions"
REFUSED = "webhook receiver unreachable: ConnectError"
# Seconds every prediction's deliveries are refused before the receiver comes back.
OUTAGE = 120.0
MAX_INTERVAL = 10.0
OUTAGE_SETTINGS = {
    "REPLICANT_WEBHOOK_RETRY_PERIOD": str(OUTAGE * 5),
    "REPLICANT_WEBHOOK_RETRY_MAX_INTERVAL": str(MAX_INTERVAL),
    "REPLICANT_PREDICTION_RETENTION": str(OUTAGE * 3),
}


async def refused_attempts(live: LiveStack, prediction_id: str) -> list[datetime]:
    """When each `completed` delivery of the prediction failed on a refused connection."""
    failed = await failed_attempts(await connect(live.settings), prediction_id)
    return [when for when, message in failed if message == REFUSED]


async def test_completed_webhooks_arrive_once_a_receiver_refusing_for_minutes_comes_back(
    live: LiveStack, api: httpx.Client
) -> None:
    url = live.stack.start_api("api-webhook-outage", free_port(), env=OUTAGE_SETTINGS)
    headers = {"Authorization": f"Bearer {live.token}"}
    try:
        with refusing_receiver() as (receiver, come_back):
            body = {"webhook": receiver.url, "webhook_events_filter": ["completed"]}
            created = []
            with httpx.Client(base_url=url, headers=headers, timeout=60) as outage_api:
                for n in range(3):
                    response = outage_api.post(SLEEP, json={"input": {"seconds": 0.2 * n}, **body})
                    assert response.status_code == 201, response.text
                    created.append(response.json()["id"])

            async def shortest_outage() -> float:
                spans = []
                for prediction_id in created:
                    refused = await refused_attempts(live, prediction_id)
                    spans.append((refused[-1] - refused[0]).total_seconds() if refused else 0)
                return min(spans)

            await async_wait_until(
                shortest_outage,
                lambda span: span >= OUTAGE,
                what=f"every prediction's webhook to be refused for {OUTAGE:g} s",
                timeout=OUTAGE + 60,
                interval=2,
            )
            assert receiver.deliveries == []
            come_back()
            secret = WebhookSigningSecret(**api.get("/v1/webhooks/default/secret").json())
            for prediction_id in created:
                final = api.get(f"/v1/predictions/{prediction_id}").json()
                assert final["status"] == "succeeded", final
                [delivery] = await asyncio.to_thread(
                    receiver.wait, lambda found: bool(found), prediction_id, MAX_INTERVAL + 30
                )
                # Verified as the official client does; the timestamp is the late attempt's.
                Webhooks.validate(
                    headers=delivery.headers,
                    body=delivery.body.decode(),
                    secret=secret,
                    tolerance=int(OUTAGE / 2),
                )
                assert delivery.headers["webhook-id"] == f"msg_{prediction_id}_completed_0"
                assert json.loads(delivery.body) == final
                refused = await refused_attempts(live, prediction_id)
                assert len(refused) >= int(OUTAGE / MAX_INTERVAL)
    finally:
        live.stack.stop("api-webhook-outage")
