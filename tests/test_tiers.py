"""Every test has one tier by rule, and a unit test cannot reach a service."""

from __future__ import annotations

import socket
import subprocess
import sys

import psycopg
import pytest
from temporalio.client import Client

from replicant.devstack import temporal_binary
from replicant.settings import Settings
from tests.tiers import COLLECTED, ServiceInUnitTest, check_address, check_command, tier_of


def test_the_fixtures_a_test_uses_decide_its_tier() -> None:
    assert tier_of(["tmp_path", "monkeypatch"], []) == "unit"
    assert tier_of(["tmp_path", "moto_url"], []) == "integration"
    assert tier_of(["owner", "live", "moto_url"], []) == "e2e"
    assert tier_of(["node_client"], ["parametrize"]) == "e2e"


def test_an_explicit_tier_wins_and_a_test_has_only_one() -> None:
    assert tier_of(["tmp_path"], ["integration"]) == "integration"
    assert tier_of(["live"], ["integration", "timeout"]) == "integration"
    with pytest.raises(ValueError, match="one tier"):
        tier_of([], ["unit", "e2e"])


def test_service_commands_and_ports_are_recognised() -> None:
    with pytest.raises(ServiceInUnitTest):
        check_command(["/x/.venv/bin/temporal", "server", "start-dev", "--port", "7233"])
    with pytest.raises(ServiceInUnitTest):
        check_command([sys.executable, "-c", "import runpy; runpy.run_module('cog.server.http')"])
    with pytest.raises(ServiceInUnitTest):
        check_command([sys.executable, "-m", "replicant.cli", "worker"])
    with pytest.raises(ServiceInUnitTest):
        check_address(("127.0.0.1", 5432))
    check_command(["hadolint", "Dockerfile"])  # a tool, not a service
    check_command("git status")
    check_address(("127.0.0.1", 8000))
    check_address("/tmp/some.sock")


def test_this_unit_test_cannot_reach_postgres_redis_or_temporal(
    request: pytest.FixtureRequest,
) -> None:
    assert request.node.get_closest_marker("unit") is not None
    with pytest.raises(ServiceInUnitTest):
        socket.create_connection(("127.0.0.1", 6379), timeout=1)
    with pytest.raises(ServiceInUnitTest):
        psycopg.connect("postgresql://postgres@127.0.0.1:5432/test")
    with pytest.raises(ServiceInUnitTest):
        subprocess.Popen([temporal_binary(Settings()), "server", "start-dev"])


async def test_this_unit_test_cannot_connect_to_temporal() -> None:
    with pytest.raises(ServiceInUnitTest):
        await Client.connect("127.0.0.1:7233")


def test_every_collected_test_has_exactly_one_tier(request: pytest.FixtureRequest) -> None:
    collected = request.config.stash[COLLECTED]  # the whole collection, before `-m` selects
    assert request.node.nodeid in collected
    wrong = {nodeid: tiers for nodeid, tiers in collected.items() if len(tiers) != 1}
    assert not wrong, f"tests without exactly one tier: {wrong}"
