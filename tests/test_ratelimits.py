"""Rate limits: per account, creation apart from the rest, 429 with the real wait, shared in Redis;
signed-in dashboard users keyed by account, forwarded addresses believed from trusted proxies
only, and a failing Redis handled by the configured policy.

Small limits are set on API apps of their own (in this process, or as separate processes for
Redis), served against the session stack's database and Temporal.
"""

from __future__ import annotations

import logging
import re
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import httpx
import pytest
import redis
import replicate
import uvicorn
from fastapi.routing import iter_route_contexts
from limits import parse

from api import ratelimit
from api.app import create_app
from api.ratelimit import RateLimiter, rate_limit
from replicant.accounts import create_token
from replicant.cli import proxy_options
from replicant.devstack import free_port, settings_env, wait_for_health
from replicant.settings import Settings
from tests.conftest import LiveStack
from tests.waiting import wait_until

HELLO = "replicate/hello-world"
THROTTLED = re.compile(r"^Request was throttled\. Expected available in (\d+) seconds?\.$")
REDIS_URL = "redis://127.0.0.1:6379/0"


@contextmanager
def serve(live: LiveStack, **overrides: Any) -> Iterator[str]:
    """An API app with ``overrides`` on the stack's settings, served by uvicorn in a thread."""
    port = free_port()
    settings = live.settings.model_copy(update={"api_port": port, **overrides})
    config = uvicorn.Config(
        create_app(settings),
        host="127.0.0.1",
        port=port,
        log_level="warning",
        lifespan="on",
        **proxy_options(settings),  # as `replicant api` serves it
    )
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()

    def started() -> bool:
        assert thread.is_alive(), "the API did not start"
        return bool(server.started)

    wait_until(started, what=f"the API on port {port} to start", interval=0.02)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=30)


def client(url: str, token: str | None) -> httpx.Client:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    return httpx.Client(base_url=url, headers=headers, timeout=60)


def assert_throttled(response: httpx.Response, window: int) -> int:
    """A 429 in Replicate's words, whose wait agrees with ``Retry-After``; returns the wait."""
    assert response.status_code == 429, response.text
    body = response.json()
    assert body["status"] == 429
    match = THROTTLED.match(body["detail"])
    assert match, body["detail"]
    wait = int(match.group(1))
    assert response.headers["Retry-After"] == str(wait)
    assert 1 <= wait <= window
    return wait


def create(api: httpx.Client, route: str = "model") -> httpx.Response:
    if route == "model":
        return api.post(f"/v1/models/{HELLO}/predictions", json={"input": {"text": "x"}})
    return api.post("/v1/predictions", json={"version": HELLO, "input": {"text": "x"}})


def test_defaults_are_600_creates_and_3000_other_requests_a_minute() -> None:
    defaults = Settings()
    assert defaults.rate_limit_create == "600/minute"
    assert defaults.rate_limit_default == "3000/minute"
    assert defaults.redis_url is None
    limiter = RateLimiter(defaults)
    assert (limiter.create.amount, limiter.create.get_expiry()) == (600, 60)
    assert (limiter.default.amount, limiter.default.get_expiry()) == (3000, 60)


def test_a_process_counts_its_own_limits_over_a_moving_window(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    now = [1000.0]
    monkeypatch.setattr(ratelimit.time, "time", lambda: now[0])
    windows = ratelimit.LocalWindows()
    item = parse("3 per 10 seconds")
    for _ in range(3):
        assert windows.hit(item, "a") is None
        now[0] += 1
    # Spent at 1003: a place frees when the first hit (1000) leaves the window, at 1010.
    assert windows.hit(item, "a") == 1010
    assert windows.hit(item, "b") is None  # every key has its own window
    assert windows.hit(parse("5 per 10 seconds"), "a") is None  # and every limit
    now[0] = 1010.5  # the first hit has left the window, the other two have not
    assert windows.hit(item, "a") is None
    assert windows.hit(item, "a") == 1011
    # Keys with no hit left in their window are forgotten at the next sweep.
    now[0] += ratelimit.SWEEP_EVERY
    assert windows.hit(item, "c") is None
    assert [name[2] for name in windows.hits] == ["c"]


def test_limits_are_settings_checked_at_start() -> None:
    with pytest.raises(ValueError, match="rate limit"):
        Settings(rate_limit_create="lots")
    limiter = RateLimiter(Settings(rate_limit_create="5 per 10 seconds"))
    assert (limiter.create.amount, limiter.create.get_expiry()) == (5, 10)


def test_every_route_counts_against_a_limit(live: LiveStack) -> None:
    for route in iter_route_contexts(create_app(live.settings).routes):
        dependant = getattr(route, "dependant", None)
        if dependant is None:
            continue  # FastAPI's own docs pages
        calls = [d.call for d in dependant.dependencies]
        assert rate_limit in calls, f"{route.path_format} is not rate limited"


def test_creating_predictions_is_limited_per_account(live: LiveStack) -> None:
    token = live.new_account("creator")
    other = live.new_account("bystander")
    with serve(live, rate_limit_create="5 per 4 seconds") as url, client(url, token) as api:
        # The three create routes share one budget: model route and version route here.
        for route in ("model", "model", "model", "version", "version"):
            assert create(api, route).status_code == 201
        wait = assert_throttled(create(api, "model"), window=4)
        assert_throttled(create(api, "version"), window=4)
        # Other requests have their own budget, and so has every other account.
        assert api.get("/v1/account").status_code == 200
        assert api.get("/v1/predictions").status_code == 200
        with client(url, other) as bystander:
            assert create(bystander).status_code == 201
        # A throttled request is not counted: after the announced wait, it goes through.
        time.sleep(wait)
        assert create(api).status_code == 201


def test_all_tokens_of_an_account_share_its_limit(live: LiveStack) -> None:
    token = live.new_account("twotokens")
    with client(live.url, token) as api:
        username = api.get("/v1/account").json()["username"]
    _, second = create_token(live.engine, username, "second")
    with serve(live, rate_limit_default="4 per 30 seconds") as url:
        for i in range(4):
            with client(url, token if i % 2 else second) as api:
                assert api.get("/v1/account").status_code == 200
        with client(url, second) as api:
            assert_throttled(api.get("/v1/account"), window=30)
        with client(url, token) as api:
            assert_throttled(api.get("/v1/account"), window=30)
            # Cancel is not a create: it draws from the same (spent) budget as the rest.
            assert api.post("/v1/predictions/nope/cancel").status_code == 429


def test_requests_without_an_account_are_limited_by_address(live: LiveStack) -> None:
    token = live.new_account("addressed")
    with serve(live, rate_limit_default="3 per 30 seconds") as url:
        with client(url, None) as anonymous:
            for _ in range(3):
                assert anonymous.get("/p/nothing-here").status_code == 404
            assert_throttled(anonymous.get("/p/nothing-here"), window=30)
            # A wrong token is no account either: the same address budget, spent.
            assert_throttled(
                anonymous.get("/v1/account", headers={"Authorization": "Bearer r8_wrong"}),
                window=30,
            )
        # An account's budget is its own, whatever the address.
        with client(url, token) as api:
            assert api.get("/v1/account").status_code == 200


class CountingTransport(httpx.HTTPTransport):
    """A real transport that remembers the status of every response it received."""

    def __init__(self) -> None:
        super().__init__()
        self.statuses: list[int] = []

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        response = super().handle_request(request)
        self.statuses.append(response.status_code)
        return response


def test_official_client_waits_out_a_429_and_succeeds(live: LiveStack) -> None:
    token = live.new_account("patient")
    with serve(live, rate_limit_default="3 per 3 seconds") as url:
        with client(url, token) as api:
            for _ in range(3):
                assert api.get("/v1/account").status_code == 200
            assert_throttled(api.get("/v1/account"), window=3)
        transport = CountingTransport()
        official = replicate.Client(api_token=token, base_url=url, transport=transport)
        # The client honours Retry-After on GET: a 429 first, then the answer.
        account = official.accounts.current()
        assert account.username.startswith("patient-")
        assert transport.statuses[0] == 429
        assert transport.statuses[-1] == 200


@contextmanager
def api_process(live: LiveStack, **overrides: Any) -> Iterator[str]:
    """``replicant api`` as its own process, with ``overrides`` on the stack's settings."""
    port = free_port()
    settings = live.settings.model_copy(update={"api_port": port, **overrides})
    proc = subprocess.Popen(
        [sys.executable, "-m", "replicant.cli", "api"],
        env=settings_env(settings),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        url = f"http://127.0.0.1:{port}"
        wait_for_health(url)
        yield url
    finally:
        proc.terminate()
        proc.wait(timeout=30)


@pytest.fixture
def redis_prefix() -> Iterator[str]:
    """A key prefix of this test run alone; its keys are removed afterwards."""
    prefix = f"replicant-test-{uuid.uuid4().hex}"
    yield prefix
    store = redis.Redis.from_url(REDIS_URL)
    for key in store.scan_iter(f"{prefix}*"):
        store.delete(key)
    store.close()


def test_two_api_processes_share_one_limit_through_redis(
    live: LiveStack, redis_prefix: str
) -> None:
    token = live.new_account("shared")
    limits = {
        "redis_url": REDIS_URL,
        "rate_limit_prefix": redis_prefix,
        "rate_limit_default": "6/minute",
        "rate_limit_create": "2/minute",
    }
    with api_process(live, **limits) as first, api_process(live, **limits) as second:
        apis = [client(first, token), client(second, token)]
        # Six requests alternate between the processes; the seventh fails on either.
        for i in range(6):
            assert apis[i % 2].get("/v1/account").status_code == 200, i
        for api in apis:
            assert_throttled(api.get("/v1/account"), window=60)
        assert create(apis[0]).status_code == 201
        assert create(apis[1]).status_code == 201
        for api in apis:
            assert_throttled(create(api), window=60)
            api.close()
    # The counters are in Redis, under the configured prefix.
    store = redis.Redis.from_url(REDIS_URL)
    assert any(True for _ in store.scan_iter(f"{redis_prefix}*"))
    store.close()


def store_errors(url: str) -> float:
    """``replicant_rate_limit_store_errors_total`` of the API at ``url``."""
    text = httpx.get(f"{url}/metrics", timeout=30).text
    found = re.search(r"^replicant_rate_limit_store_errors_total (\S+)$", text, re.M)
    assert found, "the store-error counter is not exported"
    return float(found.group(1))


def test_an_unreachable_redis_lets_requests_through_and_says_so(
    live: LiveStack, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="replicant.api")
    token = live.new_account("failopen")
    unreachable = f"redis://127.0.0.1:{free_port()}/0"
    limits = {"redis_url": unreachable, "rate_limit_default": "1/minute"}
    assert Settings().rate_limit_store_failure == "open"
    with serve(live, **limits) as url, client(url, token) as api:
        for _ in range(3):
            assert api.get("/v1/account").status_code == 200
        # The /metrics scrape itself is a request that could not be counted either.
        assert store_errors(url) >= 3
    warnings = [
        r.getMessage() for r in caplog.records if "rate_limit_unavailable" in r.getMessage()
    ]
    assert len(warnings) >= 3
    assert all("policy=open" in w for w in warnings)


def test_an_unreachable_redis_refuses_requests_when_the_policy_is_closed(live: LiveStack) -> None:
    token = live.new_account("failclosed")
    unreachable = f"redis://127.0.0.1:{free_port()}/0"
    limits = {"redis_url": unreachable, "rate_limit_store_failure": "closed"}
    with serve(live, **limits) as url, client(url, token) as api:
        refused = api.get("/v1/account")
        assert refused.status_code == 503, refused.text
        assert refused.headers["content-type"] == "application/problem+json"
        assert int(refused.headers["Retry-After"]) >= 1
        assert create(api).status_code == 503


@contextmanager
def dashboard_user(url: str, token: str) -> Iterator[httpx.Client]:
    """A browser-like client signed in to the dashboard with ``token`` (cookies, no token)."""
    with httpx.Client(base_url=url, timeout=60) as browser:
        form = browser.get("/signin")
        csrf = re.search(r'name="csrf" value="([^"]+)"', form.text)
        assert csrf, form.text
        fields = {"csrf": csrf.group(1), "token": token, "next": "/"}
        signed_in = browser.post("/signin", files={k: (None, v) for k, v in fields.items()})
        assert signed_in.status_code == 303, signed_in.text
        assert "authorization" not in browser.headers
        yield browser


def test_signed_in_dashboard_users_behind_one_address_have_limits_of_their_own(
    live: LiveStack,
) -> None:
    first, second = live.new_account("dashfirst"), live.new_account("dashsecond")
    with (
        serve(live, rate_limit_default="12 per 30 seconds") as url,
        dashboard_user(url, first) as alice,
        dashboard_user(url, second) as bob,
    ):
        # Every page (and the API calls it makes for its user) counts against its user.
        statuses = [alice.get("/account").status_code for _ in range(12)]
        assert statuses[0] == 200 and 429 in statuses, statuses
        # Same address, another account: its own budget; and so has the address itself.
        assert bob.get("/account").status_code == 200
        with httpx.Client(base_url=url, timeout=60) as anonymous:
            assert anonymous.get("/signin").status_code == 200


def test_forwarded_addresses_are_believed_from_trusted_proxies_only(live: LiveStack) -> None:
    def answers(url: str, forwarded_for: list[str]) -> list[int]:
        with client(url, None) as anonymous:
            return [
                anonymous.get("/p/nothing-here", headers={"X-Forwarded-For": ip}).status_code
                for ip in forwarded_for
            ]

    spoofed = ["203.0.113.1", "203.0.113.2", "203.0.113.3", "203.0.113.4"]
    # By default nobody is a proxy, loopback included: one address, one budget (which the
    # start-up's health checks, from the same address, have begun to spend).
    with api_process(live, rate_limit_default="3 per 30 seconds") as url:
        assert answers(url, spoofed)[-2:] == [429, 429]
    # Behind a trusted proxy, each client address it forwards has its own budget.
    trusted = {"rate_limit_default": "3 per 30 seconds", "trusted_proxies": ["127.0.0.1"]}
    with api_process(live, **trusted) as url:
        assert answers(url, spoofed) == [404, 404, 404, 404]
        assert answers(url, ["198.51.100.7"] * 4) == [404, 404, 404, 429]


def test_trusted_proxies_are_addresses_or_networks() -> None:
    assert Settings(trusted_proxies=["10.0.0.0/8", "172.28.0.2", "::1"]).trusted_proxies
    with pytest.raises(ValueError, match="trusted proxy"):
        Settings(trusted_proxies=["proxy.example.com"])
    assert proxy_options(Settings()) == {"proxy_headers": False, "forwarded_allow_ips": ""}
