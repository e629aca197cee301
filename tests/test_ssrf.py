"""SSRF, end to end, on a stack of its own with private addresses refused (as in production).

Every probe that must be refused targets a loopback server that counts its requests, or an
address that is refused before any connection is attempted: nothing is ever sent to 10.x or
169.254.x, and no test depends on those addresses answering. An allowed-looking URL that
redirects to loopback is served from a second host: a network namespace at a public address
(tests/netns.py), whose server redirects every request to the loopback server.
"""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Iterator

import httpx
import pytest
from temporalio.api.enums.v1 import EventType

from replicant.contracts import prediction_workflow_id, webhook_workflow_id
from replicant.netguard import is_public_address
from replicant.temporal import connect
from tests.conftest import LiveStack, own_stack
from tests.netns import RemoteHost, remote_host
from tests.observe import failed_attempts
from tests.receiver import Receiver, running_receiver
from tests.test_files import png
from tests.test_safefetch import Origin
from tests.waiting import async_wait_until

THUMBNAIL = "/v1/models/replicant/thumbnail/predictions"
HELLO = "/v1/models/replicate/hello-world/predictions"

# {port}: the loopback server's; the others are refused before any connection.
PRIVATE_URLS = [
    "http://127.0.0.1:{port}/file",
    "http://localhost:{port}/file",
    "http://[::1]:{port}/file",
    "http://0.0.0.0:{port}/file",
    "http://10.0.0.1/file",
    "http://169.254.169.254/latest/meta-data/",
    "http://2130706433:{port}/file",
    "http://0177.0.0.1:{port}/file",
    "http://0x7f000001:{port}/file",
    "http://127.1:{port}/file",
    "http://[::ffff:127.0.0.1]:{port}/file",
    "http://[::ffff:7f00:1]:{port}/file",
]


@pytest.fixture(scope="module")
def guarded(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveStack]:
    with own_stack(tmp_path_factory, "ssrf", allow_private_urls=False) as live:
        yield live


@pytest.fixture(scope="module")
def origin() -> Iterator[Origin]:
    server = Origin()
    yield server
    server.close()


@pytest.fixture(scope="module")
def redirector(origin: Origin, tmp_path_factory: pytest.TempPathFactory) -> Iterator[RemoteHost]:
    """A public-looking host whose every answer is a redirect to the loopback ``origin``."""
    with remote_host(f"{origin.url}/file", tmp_path_factory.mktemp("netns")) as host:
        yield host


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    with running_receiver() as r:
        yield r


@pytest.mark.parametrize("template", PRIVATE_URLS)
def test_webhooks_to_private_places_are_refused_at_create(
    guarded: LiveStack, receiver: Receiver, template: str
) -> None:
    port = receiver.url.split(":")[2].split("/")[0]
    url = template.format(port=port).replace("/file", "/hook/")
    with guarded.client() as api:
        response = api.post(HELLO, json={"input": {"text": "x"}, "webhook": url})
    assert response.status_code == 422, (url, response.text)
    problem = response.json()
    assert [f["field"] for f in problem["invalid_fields"]] == ["webhook"]
    assert "private or reserved" in problem["detail"]
    assert receiver.deliveries == []


@pytest.mark.parametrize("template", PRIVATE_URLS)
def test_input_files_from_private_places_are_refused_with_a_reason(
    guarded: LiveStack, origin: Origin, template: str
) -> None:
    url = template.format(port=origin.port)
    hits = len(origin.hits)
    with guarded.client() as api:
        response = api.post(THUMBNAIL, json={"input": {"image": url}})
        assert response.status_code in (201, 422), response.text
        if response.status_code == 201:
            final = guarded.wait_for(response.json()["id"])
            assert final["status"] == "failed", final
            assert "image: the URL is not allowed" in final["error"], final["error"]
            assert "private or reserved" in final["error"], final["error"]
        else:
            problem = response.json()
            assert [f["field"] for f in problem["invalid_fields"]] == ["image"]
    assert len(origin.hits) == hits


async def test_a_webhook_name_that_resolves_to_loopback_is_refused_once_and_costs_nothing(
    guarded: LiveStack, receiver: Receiver
) -> None:
    """A name passes create (it is resolved at delivery); delivery refuses it for good: the
    prediction succeeds, the receiver hears nothing, and no attempt is repeated."""
    name = socket.gethostname()
    addresses = {info[4][0] for info in socket.getaddrinfo(name, 80, type=socket.SOCK_STREAM)}
    assert addresses and not any(is_public_address(str(a)) for a in addresses), addresses
    port = receiver.url.split(":")[2].split("/")[0]
    with guarded.client() as api:
        response = api.post(
            HELLO, json={"input": {"text": "x"}, "webhook": f"http://{name}:{port}/hook/"}
        )
    assert response.status_code == 201, response.text
    final = guarded.wait_for(response.json()["id"])
    assert final["status"] == "succeeded", final
    client = await connect(guarded.settings)
    sends: list[int] = []
    failures: list[str] = []
    # The run's own workflow, and the one that delivers its `completed` webhook.
    for workflow_id in (prediction_workflow_id(final["id"]), webhook_workflow_id(final["id"])):
        handle = client.get_workflow_handle(workflow_id)
        await asyncio.wait_for(handle.result(), 60)
        async for event in handle.fetch_history_events():
            if event.event_type == EventType.EVENT_TYPE_ACTIVITY_TASK_STARTED:
                sends.append(event.activity_task_started_event_attributes.attempt)
            if event.event_type == EventType.EVENT_TYPE_ACTIVITY_TASK_FAILED:
                failures.append(event.activity_task_failed_event_attributes.failure.message)
    assert failures == [f"webhook URL refused: {name} resolves to a private or reserved address"]
    assert all(attempt == 1 for attempt in sends)
    assert receiver.deliveries == []


def test_replicants_own_file_urls_still_work(guarded: LiveStack) -> None:
    """Refusing private places never refuses the installation's own uploaded files."""
    with guarded.client() as api:
        upload = httpx.post(  # multipart: past the conformance hook, which reads bodies
            f"{guarded.url}/v1/files",
            files={"content": ("dot.png", png(), "image/png")},
            headers={"Authorization": f"Bearer {guarded.token}"},
        )
        assert upload.status_code == 201, upload.text
        url = upload.json()["urls"]["get"]
        response = api.post(THUMBNAIL, json={"input": {"image": url, "width": 4}})
        assert response.status_code == 201, response.text
    final = guarded.wait_for(response.json()["id"])
    assert final["status"] == "succeeded", final


def test_an_input_file_url_that_redirects_to_loopback_is_refused(
    guarded: LiveStack, origin: Origin, redirector: RemoteHost
) -> None:
    assert is_public_address(redirector.address)
    hits = len(origin.hits)
    with guarded.client() as api:
        response = api.post(THUMBNAIL, json={"input": {"image": redirector.url("/image.png")}})
    assert response.status_code == 201, response.text
    final = guarded.wait_for(response.json()["id"])
    assert final["status"] == "failed", final
    assert final["error"] == (
        "Input file error: image: the URL is not allowed: "
        "127.0.0.1 resolves to a private or reserved address"
    ), final["error"]
    # The public host was asked (and redirected); the loopback target never was.
    assert redirector.hits() and set(redirector.hits()) == {"GET /image.png"}
    assert len(origin.hits) == hits


async def test_a_webhook_url_that_redirects_to_loopback_is_not_followed(
    guarded: LiveStack, origin: Origin, redirector: RemoteHost
) -> None:
    hits = len(origin.hits)
    with guarded.client() as api:
        response = api.post(
            HELLO,
            json={
                "input": {"text": "x"},
                "webhook": redirector.url("/hook"),
                "webhook_events_filter": ["completed"],
            },
        )
    assert response.status_code == 201, response.text
    prediction_id = response.json()["id"]
    assert guarded.wait_for(prediction_id)["status"] == "succeeded"
    temporal = await connect(guarded.settings)
    # The attempt reaches the public host, gets its redirect, and stops there, for good.
    failed = await async_wait_until(
        lambda: failed_attempts(temporal, prediction_id),
        lambda attempts: len(attempts) >= 1,
        what=f"the refused delivery of {prediction_id}'s webhook",
    )
    assert {message for _, message in failed} == {
        "webhook receiver redirect (not followed, not retried): HTTP 302"
    }
    assert "POST /hook" in redirector.hits()
    assert len(origin.hits) == hits
