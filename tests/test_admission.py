"""Bounded admission (api/admission.py), on the app itself with deliberately low bounds: past
its bound a kind of request is answered at once with 503 problem+json and ``Retry-After``,
the other kind still gets in, exempt paths always answer, and a freed place admits again.
Also what keeps the event loop from waiting: the pool's size, and a read of the loop that
meets a locked SQLite database.

Requests are held in flight by request bodies that do not end until the test says so.
No service is reached: the app runs in-process on a SQLite file.
"""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
from sqlmodel import Session, select

from api.admission import is_exempt, is_held
from api.app import create_app
from api.queueboard import QUEUE_THREADS
from api.state import HEALTH_THREADS, AppState, executor_threads, pool_size
from replicant.accounts import create_account
from replicant.settings import Settings
from replicant.tables import Account
from tests.waiting import async_wait_until

BOUND = 2


async def _held_body(inside: asyncio.Queue[None], release: asyncio.Event) -> AsyncIterator[bytes]:
    yield b'{"input": '
    inside.put_nowait(None)  # the app asks for more: the request is in, past admission
    await release.wait()
    yield b"{}}"


async def _all_inside(inside: asyncio.Queue[None], count: int) -> None:
    for _ in range(count):
        await inside.get()


async def _saturate(tmp_path: Path) -> dict[str, Any]:
    settings = Settings(
        data_dir=tmp_path, api_max_requests=BOUND, api_max_held=BOUND, api_retry_after=3
    )
    app = create_app(settings)
    _, token = create_account(app.state.replicant.engine, "saturated")
    transport = httpx.ASGITransport(app=app)
    seen: dict[str, Any] = {}
    release = asyncio.Event()
    inside: asyncio.Queue[None] = asyncio.Queue()
    headers = {"Authorization": f"Bearer {token}", "Content-Type": "application/json"}
    async with httpx.AsyncClient(transport=transport, base_url="http://api") as http:

        def held_create(prefer: str | None) -> asyncio.Task[httpx.Response]:
            extra = {"Prefer": prefer} if prefer else {}
            return asyncio.create_task(
                http.post(
                    "/v1/models/nobody/nothing/predictions",
                    content=_held_body(inside, release),
                    headers={**headers, **extra},
                )
            )

        short = [held_create(None) for _ in range(BOUND)]
        await _all_inside(inside, BOUND)
        seen["short_refused"] = await http.get("/v1/account", headers=headers)
        seen["metrics"] = await http.get("/metrics")
        held = [held_create("wait=60") for _ in range(BOUND)]
        await _all_inside(inside, BOUND)
        seen["held_refused"] = await http.post(
            "/v1/models/nobody/nothing/predictions",
            json={"input": {}},
            headers={**headers, "Prefer": "wait"},
        )
        release.set()
        seen["released"] = [r.status_code for r in await asyncio.gather(*short, *held)]
        seen["admitted_again"] = await http.get("/v1/account", headers=headers)
    return seen


def test_a_saturated_api_answers_503_with_retry_after_and_admits_again(tmp_path: Path) -> None:
    seen = asyncio.run(_saturate(tmp_path))
    for kind in ("short_refused", "held_refused"):
        refused: httpx.Response = seen[kind]
        assert refused.status_code == 503, (kind, refused.text)
        assert refused.headers["retry-after"] == "3"
        assert refused.headers["content-type"] == "application/problem+json"
        assert refused.json()["status"] == 503
        assert "retry in 3 seconds" in refused.json()["detail"]
    # /metrics is exempt; the held requests' bound is apart from the short ones'.
    assert seen["metrics"].status_code == 200
    assert 503 not in seen["released"], seen["released"]
    assert seen["admitted_again"].status_code == 200


def _scope(path: str, method: str = "GET", **headers: str) -> dict[str, Any]:
    raw = [(k.lower().replace("_", "-").encode(), v.encode()) for k, v in headers.items()]
    return {"type": "http", "path": path, "method": method, "headers": raw}


def test_waits_streams_and_followed_builds_are_held_the_rest_short() -> None:
    assert is_held(_scope("/v1/predictions", "POST", Prefer="wait=60"))
    assert is_held(_scope("/v1/predictions/abc/stream"))
    assert is_held(_scope("/v1/builds/abc", Accept="application/x-ndjson"))
    assert not is_held(_scope("/v1/predictions", "POST"))
    assert not is_held(_scope("/v1/predictions/abc", Prefer="wait"))
    assert is_exempt(_scope("/health"))
    assert is_exempt({**_scope("/v1/models"), "state": {"prediction_source": "web"}})
    assert not is_exempt(_scope("/v1/models"))


def test_the_pool_has_a_connection_for_every_thread_that_may_hold_one(tmp_path: Path) -> None:
    settings = Settings(data_dir=tmp_path, api_threads=7)
    engine = create_app(settings).state.replicant.engine
    threads = 2 * 7 + executor_threads() + HEALTH_THREADS + QUEUE_THREADS
    assert engine.pool.size() == pool_size(settings) == threads
    assert engine.pool._max_overflow == 0  # type: ignore[attr-defined]


def _count_accounts(session: Session) -> int:
    return len(session.exec(select(Account)).all())


async def _read_while_locked(state: AppState, path: str) -> tuple[int, int]:
    """A read of the loop while another connection holds SQLite's lock; how many times
    another coroutine ran meanwhile."""
    ran = 0
    stop = asyncio.Event()

    async def other() -> None:
        nonlocal ran
        while not stop.is_set():
            ran += 1
            await asyncio.sleep(0.01)

    ticking = asyncio.create_task(other())
    holder = sqlite3.connect(path, isolation_level=None)
    holder.execute("PRAGMA locking_mode=EXCLUSIVE")
    holder.execute("BEGIN EXCLUSIVE")
    holder.execute("UPDATE account SET name = name")
    read = asyncio.create_task(state.db.read(_count_accounts))
    await async_wait_until(lambda: _value(ran), lambda n: n >= 3, what="the loop to run on")
    assert not read.done()  # waiting for the lock, in a thread
    holder.close()  # which unlocks
    count = await read
    stop.set()
    await ticking
    return count, ran


async def _value(n: int) -> int:
    return n


def test_a_read_of_the_loop_on_a_locked_sqlite_database_waits_in_a_thread(
    tmp_path: Path,
) -> None:
    app = create_app(Settings(data_dir=tmp_path))
    state: AppState = app.state.replicant
    create_account(state.engine, "locked")
    state.engine.dispose()  # an exclusive lock needs every other connection closed
    database = state.engine.url.database
    assert database is not None
    count, ran = asyncio.run(_read_while_locked(state, database))
    assert count >= 1
    assert ran >= 3
