"""The FastAPI application: Replicate's HTTP API over Temporal workflows."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from anyio import to_thread
from fastapi import Depends, FastAPI

from api import dashboard
from api.admission import Admission
from api.bodylimit import BodyLimit
from api.deadlines import AbortedForOptedInClients
from api.errors import UnexpectedErrors, install_error_handlers
from api.metrics import Metrics, RequestMetrics, metrics_router
from api.middleware import JSONBodyByDefault
from api.ratelimit import RateLimiter, rate_limit
from api.routes import (
    account,
    builds,
    collections,
    deployments,
    examples,
    files,
    health,
    models,
    prediction_data,
    predictions,
    search,
    sharing,
    streams,
    trainings,
    webhooks,
)
from api.state import AppState, pool_size
from api.textguard import RefuseLoneSurrogates
from replicant import tracing
from replicant.db import init_db, make_engine
from replicant.settings import Settings, get_settings


def create_app(settings: Settings | None = None) -> FastAPI:
    """An app for ``settings`` (the environment's when omitted)."""
    settings = settings or get_settings()
    engine = make_engine(settings.resolved_database_url, connections=pool_size(settings))
    init_db(engine)
    state = AppState(settings=settings, engine=engine)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        # Synchronous routes and Database's threads share this limiter; the pool has a
        # connection for each of them (api.state.pool_size).
        to_thread.current_default_thread_limiter().total_tokens = settings.api_threads
        yield
        if "health_watch" in state.__dict__:
            state.health_watch.stop()
        state.dispose()
        tracing.stop()

    # Every route counts against its caller's rate limit (api/ratelimit.py).
    app = FastAPI(
        title="Replicant",
        version="0.1.0",
        lifespan=lifespan,
        dependencies=[Depends(rate_limit)],
    )
    app.state.replicant = state
    app.state.rate_limiter = RateLimiter(settings)
    install_error_handlers(app)
    app.state.metrics = Metrics(engine, settings.metrics_count_interval)
    app.add_middleware(RequestMetrics, metrics=app.state.metrics)
    app.add_middleware(RefuseLoneSurrogates)
    app.add_middleware(JSONBodyByDefault)
    app.add_middleware(AbortedForOptedInClients, clients=settings.aborted_clients)
    # A saturated process refuses before doing any work for the request.
    app.add_middleware(Admission, settings=settings)
    app.add_middleware(BodyLimit, settings=settings)  # before any body is read
    app.add_middleware(UnexpectedErrors)  # last added, so outermost: catches every layer
    # Traced, FastAPI's own server span of each request (continuing an incoming
    # `traceparent`) is the root the workflow's spans hang under; off, no SDK is set up.
    tracing.start(settings, "api")
    app.include_router(health.router)
    app.include_router(predictions.router)
    app.include_router(prediction_data.router)
    app.include_router(streams.router)
    app.include_router(webhooks.router)
    app.include_router(models.router)
    app.include_router(collections.router)
    app.include_router(examples.router)
    app.include_router(search.router)
    app.include_router(builds.router)
    app.include_router(account.router)
    app.include_router(sharing.router)
    app.include_router(files.router)
    app.include_router(deployments.router)
    app.include_router(trainings.router)
    app.include_router(metrics_router)
    dashboard.install(app)  # last: the API's routes keep precedence
    logging.getLogger("replicant").setLevel(settings.log_level)
    return app


def __getattr__(name: str) -> FastAPI:
    # `uvicorn api.app:app` builds the app on first access, from the environment's settings.
    if name == "app":
        return create_app()
    raise AttributeError(name)
