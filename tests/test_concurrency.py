"""Many clients at once: every kind of route answers each of 64 concurrent requests (2xx,
or 429 when rate limited) within the client's timeout, while ``/health`` keeps answering.

A read that waited for a pooled connection on the event loop, while synchronous routes'
sessions held the pool and waited for the loop, stalled the whole process at 16 clients:
these bursts are what caught it.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import Awaitable, Callable
from typing import Any

import httpx

from tests.conftest import LiveStack

CLIENTS = 64
# Generous: the machine running the suite may be busy; a stalled process never answers.
CLIENT_TIMEOUT = 120.0

Request = Callable[[httpx.AsyncClient], Awaitable[httpx.Response]]


async def _health_while(done: asyncio.Event, url: str) -> list[int]:
    """``/health``'s answers, asked one after the other until ``done``; a probe that gets no
    answer within the client's timeout fails the test."""
    answers: list[int] = []
    async with httpx.AsyncClient(base_url=url, timeout=CLIENT_TIMEOUT) as client:
        while not done.is_set():
            answers.append((await client.get("/health")).status_code)
            await asyncio.sleep(0.2)
    return answers


async def _burst(live: LiveStack, request: Request, **client: Any) -> tuple[list[Any], list[int]]:
    """``request`` sent by ``CLIENTS`` clients at once; each one's status (or the exception
    it met), and ``/health``'s answers meanwhile."""
    done = asyncio.Event()
    health = asyncio.create_task(_health_while(done, live.url))
    limits = httpx.Limits(max_connections=CLIENTS, max_keepalive_connections=CLIENTS)
    async with httpx.AsyncClient(
        base_url=live.url, timeout=CLIENT_TIMEOUT, limits=limits, **client
    ) as http:

        async def one() -> int:
            return (await request(http)).status_code

        results = await asyncio.gather(*(one() for _ in range(CLIENTS)), return_exceptions=True)
    done.set()
    return results, await health


def _assert_all_answered(results: list[Any], health: list[int]) -> None:
    unanswered = [r for r in results if not isinstance(r, int)]
    assert not unanswered, f"{len(unanswered)} requests got no answer: {unanswered[:3]!r}"
    refused = [r for r in results if not (200 <= r < 300 or r == 429)]
    assert not refused, f"statuses other than 2xx/429: {sorted(set(refused))}"
    assert health, "/health was never asked"
    assert set(health) == {200}, f"/health answered {health}"


def _bearer(live: LiveStack) -> dict[str, Any]:
    return {"headers": {"Authorization": f"Bearer {live.token}"}}


def test_a_synchronous_route_answers_64_clients_at_once(live: LiveStack) -> None:
    # GET /v1/models is a synchronous route: its session is opened in the thread pool.
    async def models(http: httpx.AsyncClient) -> httpx.Response:
        return await http.get("/v1/models")

    _assert_all_answered(*asyncio.run(_burst(live, models, **_bearer(live))))


def test_an_async_route_answers_64_clients_at_once(live: LiveStack, api: httpx.Client) -> None:
    created = api.post(
        "/v1/models/replicate/hello-world/predictions", json={"input": {"text": "many"}}
    )
    assert created.status_code == 201, created.text
    prediction_id = created.json()["id"]

    async def prediction(http: httpx.AsyncClient) -> httpx.Response:
        return await http.get(f"/v1/predictions/{prediction_id}")

    _assert_all_answered(*asyncio.run(_burst(live, prediction, **_bearer(live))))


def test_a_mix_of_synchronous_and_async_routes_answers_64_clients_at_once(
    live: LiveStack, api: httpx.Client
) -> None:
    created = api.post(
        "/v1/models/replicate/hello-world/predictions", json={"input": {"text": "mix"}}
    )
    assert created.status_code == 201, created.text
    paths = ["/v1/models", f"/v1/predictions/{created.json()['id']}", "/v1/account"]
    sent = iter(range(CLIENTS))

    async def mixed(http: httpx.AsyncClient) -> httpx.Response:
        return await http.get(paths[next(sent) % len(paths)])

    _assert_all_answered(*asyncio.run(_burst(live, mixed, **_bearer(live))))


def _signed_in_cookies(live: LiveStack) -> httpx.Cookies:
    """The dashboard's session cookie for the stack's token, signed in through its form."""
    with httpx.Client(base_url=live.url, timeout=CLIENT_TIMEOUT) as browser:
        form = browser.get("/signin")
        found = re.search(r'name="csrf" value="([^"]+)"', form.text)
        assert found, form.text
        # The dashboard's forms are posted as multipart.
        fields = {"csrf": found.group(1), "token": live.token, "next": "/"}
        signed = browser.post("/signin", files={k: (None, v) for k, v in fields.items()})
        assert signed.status_code in (302, 303), signed.text
        return browser.cookies


def test_a_dashboard_page_answers_64_clients_at_once(live: LiveStack) -> None:
    # The models page calls the API's own (synchronous) list route in-process.
    cookies = _signed_in_cookies(live)

    async def page(http: httpx.AsyncClient) -> httpx.Response:
        answer = await http.get("/")
        assert "Models" in answer.text, answer.text[:500]
        return answer

    _assert_all_answered(*asyncio.run(_burst(live, page, cookies=cookies)))


def test_a_stream_answers_64_clients_at_once(
    live: LiveStack, api: httpx.Client, slowstream: str
) -> None:
    created = api.post(
        f"/v1/models/{slowstream}/predictions", json={"input": {"tokens": 4, "interval": 0.5}}
    ).json()
    stream_url = created["urls"]["stream"]

    async def stream(http: httpx.AsyncClient) -> httpx.Response:
        headers = {"Accept": "text/event-stream"}
        async with http.stream("GET", stream_url, headers=headers) as answer:
            text = "".join([chunk async for chunk in answer.aiter_text()])
        if answer.status_code == 200:
            assert "event: done" in text, text[-500:]
        return answer

    _assert_all_answered(*asyncio.run(_burst(live, stream)))
    assert live.wait_for(created["id"])["status"] == "succeeded"
