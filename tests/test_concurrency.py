"""Many clients at once: every kind of route answers each of 64 concurrent requests (2xx,
or 429 when rate limited) within the client's timeout, while ``/health`` keeps answering.

A read that waited for a pooled connection on the event loop, while synchronous routes'
sessions held the pool and waited for the loop, stalled the whole process at 16 clients:
these bursts are what caught it.
"""

from __future__ import annotations

import asyncio
import functools
import re
from collections.abc import Awaitable, Callable
from typing import Any

import httpx

from replicant.accounts import list_tokens, revoke_token
from replicant.devstack import free_port
from tests.conftest import LiveStack
from tests.waiting import wait_until

CLIENTS = 64
# Generous: the machine running the suite may be busy; a stalled process never answers.
CLIENT_TIMEOUT = 120.0
# Seconds a run whose stream the test holds may last: until the test cancels it.
HELD_RUN_TIMEOUT = 600

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


def _streaming(api: httpx.Client, model: str, tokens: int) -> dict[str, Any]:
    """A new prediction of ``replicant/slowstream`` (``model``) yielding ``tokens`` tokens."""
    created = api.post(
        f"/v1/models/{model}/predictions", json={"input": {"tokens": tokens, "interval": 0.5}}
    )
    assert created.status_code == 201, created.text
    body: dict[str, Any] = created.json()
    return body


def test_a_stream_answers_64_clients_at_once(
    live: LiveStack, api: httpx.Client, slowstream: str
) -> None:
    created = _streaming(api, slowstream, 4)
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


async def _short_gets_while_streams_are_held(
    live: LiveStack, stream_url: str, prediction_id: str
) -> tuple[list[Any], list[int]]:
    opened: asyncio.Queue[int] = asyncio.Queue()
    limits = httpx.Limits(max_connections=CLIENTS, max_keepalive_connections=CLIENTS)
    async with httpx.AsyncClient(base_url=live.url, timeout=CLIENT_TIMEOUT, limits=limits) as h:

        async def held() -> int:
            headers = {"Accept": "text/event-stream"}
            async with h.stream("GET", stream_url, headers=headers) as answer:
                opened.put_nowait(answer.status_code)
                async for _ in answer.aiter_bytes():
                    pass
            return answer.status_code

        streams = [asyncio.create_task(held()) for _ in range(CLIENTS)]
        statuses = [await opened.get() for _ in range(CLIENTS)]  # every stream is open

        async def models(http: httpx.AsyncClient) -> httpx.Response:
            return await http.get("/v1/models")

        results, health = await _burst(live, models, **_bearer(live))
        async with httpx.AsyncClient(base_url=live.url, **_bearer(live)) as api:
            canceled = await api.post(f"/v1/predictions/{prediction_id}/cancel")
            assert canceled.status_code == 200, canceled.text
        ended = await asyncio.gather(*streams)
    assert set(statuses) == {200} and set(ended) == {200}, (statuses, ended)
    return results, health


def _patient_prediction(live: LiveStack, model: str, tokens: int) -> dict[str, Any]:
    """``_streaming``, created through an API process of its own whose runs may last
    ``HELD_RUN_TIMEOUT`` seconds: on the shared stack a run times out after ``TIMEOUT``
    seconds, which a busy machine's burst outlasts (the run then ends ``failed``, before the
    test's cancel)."""
    env = {"REPLICANT_PREDICTION_TIMEOUT": str(HELD_RUN_TIMEOUT)}
    patient = live.stack.start_api("api-patient", port=free_port(), env=env)
    try:
        with httpx.Client(base_url=patient, timeout=CLIENT_TIMEOUT, **_bearer(live)) as api:
            return _streaming(api, model, tokens)
    finally:
        live.stack.stop("api-patient")


def test_short_requests_are_answered_while_64_streams_are_held(
    live: LiveStack, slowstream: str
) -> None:
    created = _patient_prediction(live, slowstream, 200)
    assert created["status"] == "starting"
    # The streams are held on the stack's own API process, as the short requests are sent.
    stream = httpx.URL(created["urls"]["stream"]).raw_path.decode()
    results, health = asyncio.run(_short_gets_while_streams_are_held(live, stream, created["id"]))
    _assert_all_answered(results, health)
    assert live.wait_for(created["id"])["status"] == "canceled"


def _account_status(url: str, token: str) -> int:
    answer = httpx.get(f"{url}/v1/account", headers={"Authorization": f"Bearer {token}"})
    return answer.status_code


def test_a_revoked_token_stops_working_in_every_api_process(live: LiveStack) -> None:
    # Two API processes that both reuse the token's account (lookup_cache_ttl), and the
    # revocation made by a third process (this one, as the CLI does).
    token = live.new_account("revoked")
    username = httpx.get(f"{live.url}/v1/account", headers={"Authorization": f"Bearer {token}"})
    second = live.stack.start_api("api-revocation", port=free_port())
    try:
        urls = [live.url, second]
        assert [_account_status(url, token) for url in urls for _ in range(3)] == [200] * 6
        tokens = list_tokens(live.engine, username.json()["username"])
        revoke_token(live.engine, tokens[0].id or 0)
        for url in urls:
            status = wait_until(
                functools.partial(_account_status, url, token),
                lambda status: status != 200,
                what=f"{url} to refuse the revoked token",
            )
            assert status == 401
        # The stack's own token still works everywhere.
        assert [_account_status(url, live.token) for url in urls] == [200, 200]
    finally:
        live.stack.stop("api-revocation")
