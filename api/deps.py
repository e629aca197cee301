"""Request dependencies as ``Annotated`` aliases: the app state, the database (a session for
synchronous routes, ``Database`` for async ones) and the caller's account."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Annotated

import anyio
import anyio.to_thread
from fastapi import Depends, Request
from sqlmodel import Session, col, select

from api.errors import ProblemError
from api.state import AppState, Database
from replicant.db import cacheable
from replicant.ids import hash_token
from replicant.tables import Account, ApiToken


def get_state(request: Request) -> AppState:
    state: AppState = request.app.state.replicant
    return state


async def _state(request: Request) -> AppState:
    # async: FastAPI calls a plain function dependency in its thread pool, a hop per request
    return get_state(request)


StateDep = Annotated[AppState, Depends(_state)]


async def get_session(state: StateDep) -> AsyncIterator[Session]:
    """A database session for one request, closed after it (objects stay readable); the
    synchronous routes that use it query in FastAPI's thread pool. Async routes (the hot
    paths: creating and reading predictions) take ``DatabaseDep``.

    A session keeps its connection until the request's answer is built, after its thread is
    done: at most ``api_threads`` are open at once (others wait for a place on the event
    loop, not for the pool in a thread), so the pool always has a connection for each, and
    the closing runs in threads of its own.
    """
    async with state.sessions:
        session = Session(state.engine, expire_on_commit=False)
        try:
            yield session
        finally:
            with anyio.CancelScope(shield=True):
                await anyio.to_thread.run_sync(session.close, limiter=state.session_closers)


SessionDep = Annotated[Session, Depends(get_session)]


async def get_database(state: StateDep) -> Database:
    """The database for an async route: it runs functions of a session, reads inline on
    SQLite and in a thread elsewhere, so the route opens no session itself."""
    return state.db


DatabaseDep = Annotated[Database, Depends(get_database)]


# The dashboard calls the API's routes in-process for a signed-in session, naming the
# session's API token by its id in the ASGI scope's state, which no HTTP client can set.
SESSION_TOKEN = "dashboard_token_id"


def _session_token_id(request: Request) -> int | None:
    value = request.scope.get("state", {}).get(SESSION_TOKEN)
    return value if isinstance(value, int) else None


def _token_from(request: Request) -> str | None:
    header = request.headers.get("authorization", "")
    scheme, _, value = header.partition(" ")
    if scheme.lower() in ("bearer", "token") and value.strip():
        return value.strip()
    return None


@cacheable(key=lambda token_hash: token_hash)
def _account_for(session: Session, token_hash: str) -> Account | None:
    stmt = (
        select(Account)
        .join(ApiToken, col(ApiToken.account_id) == col(Account.id))
        .where(ApiToken.token_hash == token_hash)
        .where(col(ApiToken.revoked_at).is_(None))
    )
    return session.exec(stmt).first()


@cacheable(key=lambda token_id: token_id)
def _account_for_token_id(session: Session, token_id: int) -> Account | None:
    stmt = (
        select(Account)
        .join(ApiToken, col(ApiToken.account_id) == col(Account.id))
        .where(ApiToken.id == token_id)
        .where(col(ApiToken.revoked_at).is_(None))
    )
    return session.exec(stmt).first()


async def token_account(request: Request, state: AppState) -> Account | None:
    """The account of the request's token, None without a valid one.

    Looked up once per request (the rate limiter and the route share the answer), and
    reused across requests for ``lookup_cache_ttl``: a token revoked by this process fails on
    its next request, one revoked elsewhere within that time.
    """
    if hasattr(request.state, "token_account"):
        cached: Account | None = request.state.token_account
        return cached
    token = _token_from(request)
    token_id = _session_token_id(request)
    account = None
    if token is not None:
        account = await state.db.read(_account_for, hash_token(token))
    elif token_id is not None:
        account = await state.db.read(_account_for_token_id, token_id)
    request.state.token_account = account
    return account


async def current_account(request: Request, state: StateDep) -> Account:
    """The account of the request's API token; 401 otherwise."""
    if _token_from(request) is None and _session_token_id(request) is None:
        raise ProblemError(
            401,
            "You did not pass an authentication token",
            headers={"WWW-Authenticate": "Bearer"},
        )
    account = await token_account(request, state)
    if account is None:
        raise ProblemError(
            401,
            "You did not pass a valid authentication token",
            headers={"WWW-Authenticate": "Bearer"},
        )
    request.state.account = account
    return account


CurrentAccount = Annotated[Account, Depends(current_account)]
