"""Per-account rate limits, as Replicate's: creating predictions and trainings, and the rest.

Counted with the ``limits`` library over a moving window, in memory for one API process or
in Redis (``REPLICANT_REDIS_URL``) so that every API replica shares one limit. Requests
with a valid token count against their account; the others against their client address.
"""

from __future__ import annotations

import logging
import math
import time

from fastapi import Request
from fastapi.routing import APIRoute
from limits import RateLimitItem, parse
from limits.aio.storage import MemoryStorage, RedisStorage, Storage
from limits.aio.strategies import MovingWindowRateLimiter
from limits.errors import StorageError

from api.deps import StateDep, token_account
from api.errors import ProblemError
from replicant.settings import Settings

log = logging.getLogger("replicant.api")

# Route patterns (POST) that create work: every predictions and trainings create route.
CREATE_SUFFIXES = ("/predictions", "/trainings")


def _storage(settings: Settings) -> Storage:
    if not settings.redis_url:
        return MemoryStorage()
    scheme, sep, rest = settings.redis_url.partition("://")
    return RedisStorage(
        f"async+{scheme}{sep}{rest}",
        implementation="redispy",
        key_prefix=settings.rate_limit_prefix,
        wrap_exceptions=True,
    )


class RateLimiter:
    """The two limits of an API process and where their counters live."""

    def __init__(self, settings: Settings) -> None:
        self.create: RateLimitItem = parse(settings.rate_limit_create)
        self.default: RateLimitItem = parse(settings.rate_limit_default)
        self.strategy = MovingWindowRateLimiter(_storage(settings))

    async def hit(self, item: RateLimitItem, key: str) -> None:
        """Count one request under ``key``; 429 with the real wait when the limit is spent."""
        try:
            if await self.strategy.hit(item, key):
                return
            reset_at, _ = await self.strategy.get_window_stats(item, key)
        except StorageError as err:
            # An unreachable counter store must not take the API down: let the request in.
            log.warning("event=rate_limit_unavailable type=%s", type(err.storage_error).__name__)
            return
        wait = max(1, math.ceil(reset_at - time.time()))
        unit = "second" if wait == 1 else "seconds"
        raise ProblemError(
            429,
            f"Request was throttled. Expected available in {wait} {unit}.",
            headers={"Retry-After": str(wait)},
        )


def is_create(request: Request) -> bool:
    """Whether the request creates a prediction or a training (by its route's pattern)."""
    route = request.scope.get("route")
    path = route.path_format if isinstance(route, APIRoute) else request.url.path
    return request.method == "POST" and path.rstrip("/").endswith(CREATE_SUFFIXES)


async def rate_limit(request: Request, state: StateDep) -> None:
    """App-wide dependency: every API route counts against its caller's limit."""
    limiter: RateLimiter = request.app.state.rate_limiter
    account = await token_account(request, state)
    if account is not None:
        key = f"account:{account.id}"
    else:
        key = f"ip:{request.client.host if request.client else 'unknown'}"
    if is_create(request):
        await limiter.hit(limiter.create, f"create:{key}")
    else:
        await limiter.hit(limiter.default, f"default:{key}")
