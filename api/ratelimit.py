"""Per-account rate limits, as Replicate's: creating predictions and trainings, and the rest.

Counted over a moving window, in memory for one API process (``LocalWindows``) or in Redis
(``REPLICANT_REDIS_URL``, with the ``limits`` library) so that every API replica shares one
limit. A request that
acts for an account (a valid token, or a signed-in dashboard session: ``caller_account_id``)
counts against that account; the others against their client address, which is the peer's
unless the peer is a trusted proxy (``REPLICANT_TRUSTED_PROXIES``; uvicorn applies it, see
``replicant.cli.proxy_options``). When the counter store fails,
``REPLICANT_RATE_LIMIT_STORE_FAILURE`` decides: let the request in with a warning, or refuse
it with 503; either way it is counted in ``replicant_rate_limit_store_errors_total``.
"""

from __future__ import annotations

import logging
import math
import time
from collections import deque

from fastapi import Request
from fastapi.routing import APIRoute
from limits import RateLimitItem, parse
from limits.aio.storage import RedisStorage
from limits.aio.strategies import MovingWindowRateLimiter
from limits.errors import StorageError

from api.dashboard.session import session_account_id
from api.deps import StateDep, token_account
from api.errors import ProblemError
from api.state import AppState
from replicant.settings import Settings

log = logging.getLogger("replicant.api")

# Route patterns (POST) that create work: every predictions and trainings create route.
CREATE_SUFFIXES = ("/predictions", "/trainings")


def _redis(redis_url: str, prefix: str) -> RedisStorage:
    scheme, sep, rest = redis_url.partition("://")
    return RedisStorage(
        f"async+{scheme}{sep}{rest}",
        implementation="redispy",
        key_prefix=prefix,
        wrap_exceptions=True,
    )


# Seconds between two sweeps of ``LocalWindows``' idle keys.
SWEEP_EVERY = 60.0


class LocalWindows:
    """Moving windows counted in this process, on the event loop: each key's hits within its
    window, oldest first. (``limits``' in-memory store hands every key to a thread on each
    of its expiry passes, which run as often as requests come, holding the key's lock
    meanwhile: two thread hops on every request.)"""

    def __init__(self) -> None:
        self.hits: dict[tuple[int, int, str], deque[float]] = {}
        self.swept = time.time()

    def hit(self, item: RateLimitItem, key: str) -> float | None:
        """Count one hit of ``key`` against ``item``: None, or (the limit spent, nothing
        counted) the time (``time.time()``) a place in the window frees."""
        now = time.time()
        window = item.get_expiry()
        name = (item.amount, window, key)
        hits = self.hits.get(name)
        if hits is None:
            hits = self.hits[name] = deque()
        cutoff = now - window
        while hits and hits[0] < cutoff:
            hits.popleft()
        if len(hits) >= item.amount:
            return hits[0] + window
        hits.append(now)
        if now - self.swept >= SWEEP_EVERY:
            self._sweep(now)
        return None

    def _sweep(self, now: float) -> None:
        """Forget the keys with no hit left in their window."""
        self.swept = now
        idle = [name for name, hits in self.hits.items() if not hits or hits[-1] < now - name[1]]
        for name in idle:
            del self.hits[name]


class StoreUnavailable(Exception):
    """The counter store (Redis) failed; the message names the error's type only."""


class RateLimiter:
    """The two limits of an API process and where their counters live."""

    def __init__(self, settings: Settings) -> None:
        self.create: RateLimitItem = parse(settings.rate_limit_create)
        self.default: RateLimitItem = parse(settings.rate_limit_default)
        self.local = None if settings.redis_url else LocalWindows()
        self.shared = (
            MovingWindowRateLimiter(_redis(settings.redis_url, settings.rate_limit_prefix))
            if settings.redis_url
            else None
        )
        self.fail_closed = settings.rate_limit_store_failure == "closed"

    async def hit(self, item: RateLimitItem, key: str) -> None:
        """Count one request under ``key``; 429 with the real wait when the limit is spent,
        ``StoreUnavailable`` when the counters cannot be reached."""
        if self.local is not None:
            reset_at = self.local.hit(item, key)
            if reset_at is None:
                return
        else:
            assert self.shared is not None
            try:
                if await self.shared.hit(item, key):
                    return
                reset_at, _ = await self.shared.get_window_stats(item, key)
            except StorageError as err:
                raise StoreUnavailable(type(err.storage_error).__name__) from None
        wait = max(1, math.ceil(reset_at - time.time()))
        unit = "second" if wait == 1 else "seconds"
        raise ProblemError(
            429,
            f"Request was throttled. Expected available in {wait} {unit}.",
            headers={"Retry-After": str(wait)},
        )


async def caller_account_id(request: Request, state: AppState) -> int | None:
    """The account a request acts for: its token's, else its signed-in dashboard session's
    (``session_account_id``, the one place the limiter asks the session who is calling)."""
    account = await token_account(request, state)
    return account.id if account is not None else await session_account_id(request)


def is_create(request: Request) -> bool:
    """Whether the request creates a prediction or a training (by its route's pattern)."""
    route = request.scope.get("route")
    path = route.path_format if isinstance(route, APIRoute) else request.url.path
    return request.method == "POST" and path.rstrip("/").endswith(CREATE_SUFFIXES)


async def rate_limit(request: Request, state: StateDep) -> None:
    """App-wide dependency: every API route counts against its caller's limit."""
    limiter: RateLimiter = request.app.state.rate_limiter
    account_id = await caller_account_id(request, state)
    if account_id is not None:
        key = f"account:{account_id}"
    else:
        key = f"ip:{request.client.host if request.client else 'unknown'}"
    item, kind = (limiter.create, "create") if is_create(request) else (limiter.default, "default")
    try:
        await limiter.hit(item, f"{kind}:{key}")
    except StoreUnavailable as err:
        request.app.state.metrics.rate_limit_store_errors.inc()
        if limiter.fail_closed:
            log.error("event=rate_limit_unavailable type=%s policy=closed", err)
            raise ProblemError(
                503,
                "Rate limits cannot be checked right now; try again shortly",
                headers={"Retry-After": "5"},
            ) from None
        # The operator chose availability: the request goes in unlimited, and says so.
        log.warning("event=rate_limit_unavailable type=%s policy=open", err)
