"""Test tiers: every test is `unit`, `integration` or `e2e`, decided by a rule, not by hand.

- e2e: the test uses a whole stack (API, worker, Temporal) through HTTP or the official
  clients: one of ``E2E_FIXTURES`` (directly or through a fixture of its own).
- integration: the test starts or reaches one real service (Temporal, PostgreSQL, Redis, an
  S3 server, coglet model processes): one of ``INTEGRATION_FIXTURES``.
- unit: everything else; it must run without any service, and ``service_guard`` makes it
  fail when it reaches one anyway.

A test that starts a service in its own body (not through a fixture) says so with an
explicit ``pytest.mark.integration`` or ``pytest.mark.e2e``, which wins over the rule.
"""

from __future__ import annotations

import os
import shlex
import socket
import subprocess
from collections.abc import Iterable, Iterator
from typing import Any

import pytest

TIERS = ("unit", "integration", "e2e")

# Fixtures that start a whole stack: the session's `live` one, or a module's own.
E2E_FIXTURES = frozenset(
    {
        "live",
        "node_client",
        "replicate2",
        "s3stack",
        "tls",
        "cluster",
        "stack",
        "crashy",
        "guarded",
        "faulty",
        "limited",
        "traced",
    }
)
# Fixtures that start or reach one real service.
INTEGRATION_FIXTURES = frozenset(
    {"pool", "standby_pool", "moto_url", "redis_prefix", "database_url", "redirector"}
)

# What a unit test may not reach: PostgreSQL and Redis ports, and the service programs.
SERVICE_PORTS = frozenset({5432, 6379})
SERVICE_COMMANDS = (
    "cog.server",  # a coglet model process
    "start-dev",  # the Temporal dev server
    "moto_server",
    "replicant.cli api",
    "replicant.cli worker",
    "replicant.cli dev",
)
SERVICE_PROGRAMS = frozenset({"temporal", "node", "npm", "moto_server", "redis-server"})


def tier_of(fixturenames: Iterable[str], marked: Iterable[str]) -> str:
    """The tier of a test from its explicit tier markers, else from the fixtures it uses."""
    explicit = [name for name in marked if name in TIERS]
    if len(explicit) > 1:
        raise ValueError(f"a test has one tier, this one is marked {explicit}")
    if explicit:
        return explicit[0]
    used = set(fixturenames)
    if used & E2E_FIXTURES:
        return "e2e"
    if used & INTEGRATION_FIXTURES:
        return "integration"
    return "unit"


# Every collected test (before `-m` deselects any) and its tier markers, for tests/test_tiers.py.
COLLECTED = pytest.StashKey[dict[str, list[str]]]()


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Give every collected test its tier marker (conftest hooks run before `-m` selects)."""
    for item in items:
        marked = [mark.name for mark in item.iter_markers()]
        tier = tier_of(getattr(item, "fixturenames", ()), marked)
        if tier not in marked:
            item.add_marker(tier)
    config.stash[COLLECTED] = {
        item.nodeid: [mark.name for mark in item.iter_markers() if mark.name in TIERS]
        for item in items
    }


class ServiceInUnitTest(AssertionError):
    """A test of the unit tier reached a service: mark it, or use a service fixture."""


def _refuse(what: str) -> None:
    raise ServiceInUnitTest(
        f"a unit test reached {what}: use a service fixture or mark it integration/e2e"
    )


def check_command(args: Any) -> None:
    """Refuse a command line that starts a service (used inside unit tests)."""
    argv = shlex.split(args) if isinstance(args, str) else [os.fspath(a) for a in args]
    line = " ".join(argv)
    program = os.path.basename(argv[0]) if argv else ""
    if program in SERVICE_PROGRAMS or any(marker in line for marker in SERVICE_COMMANDS):
        _refuse(f"a service process ({program})")


def check_address(address: Any) -> None:
    """Refuse a connection to PostgreSQL's or Redis's port (used inside unit tests)."""
    if isinstance(address, tuple) and len(address) >= 2 and address[1] in SERVICE_PORTS:
        _refuse(f"port {address[1]}")


@pytest.fixture(autouse=True)
def service_guard(
    request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch
) -> Iterator[None]:
    """In unit tests: fail on starting a service process and on connecting to PostgreSQL,
    Redis or Temporal."""
    if request.node.get_closest_marker("unit") is None:
        yield
        return
    popen_init = subprocess.Popen.__init__
    connect = socket.socket.connect
    connect_ex = socket.socket.connect_ex

    def guarded_popen(self: Any, args: Any, *rest: Any, **kwargs: Any) -> None:
        check_command(args)
        popen_init(self, args, *rest, **kwargs)

    def guarded_connect(self: socket.socket, address: Any) -> None:
        check_address(address)
        connect(self, address)

    def guarded_connect_ex(self: socket.socket, address: Any) -> int:
        check_address(address)
        return connect_ex(self, address)

    async def no_temporal(*args: Any, **kwargs: Any) -> Any:
        _refuse("Temporal")

    def no_postgres(*args: Any, **kwargs: Any) -> Any:
        _refuse("PostgreSQL")  # libpq opens its sockets in C, past the socket guard

    import psycopg
    from temporalio.client import Client

    monkeypatch.setattr(subprocess.Popen, "__init__", guarded_popen)
    monkeypatch.setattr(socket.socket, "connect", guarded_connect)
    monkeypatch.setattr(socket.socket, "connect_ex", guarded_connect_ex)
    monkeypatch.setattr(Client, "connect", no_temporal)
    monkeypatch.setattr(psycopg.Connection, "connect", no_postgres)
    monkeypatch.setattr(psycopg, "connect", no_postgres)  # SQLAlchemy calls this alias
    yield
