"""The embedded Temporal dev server keeps a bounded number of workflows in memory, and its
Go runtime a bounded heap."""

from __future__ import annotations

import psutil

from replicant.devstack import TEMPORAL_GOGC, TEMPORAL_HISTORY_CACHE_SIZE, temporal_environment
from replicant.settings import Settings
from tests.conftest import LiveStack


def test_dev_server_bounds_its_workflow_cache(live: LiveStack) -> None:
    # The bound is a dynamic-config key the server silently ignores when misnamed (as
    # `history.cacheMaxSize` is in server 1.32): read back what the server itself reports.
    before = live.stack.temporal_cache()
    assert before is not None, "the dev server's /metrics has no mutable-state cache"
    assert before[1] == TEMPORAL_HISTORY_CACHE_SIZE
    prediction = live.predict("replicate/hello-world", {"text": "cache"})
    assert prediction["status"] == "succeeded"
    after = live.stack.temporal_cache()
    assert after is not None
    # The run's workflow went through the cache, which kept to its bound.
    assert 0 < after[0] <= TEMPORAL_HISTORY_CACHE_SIZE
    assert after[1] == TEMPORAL_HISTORY_CACHE_SIZE


def test_dev_server_runs_with_its_memory_limit(live: LiveStack) -> None:
    # Go reads GOMEMLIMIT and GOGC from its environment at start: read back the environment
    # the running server process has (what `make dev` gives it), not what the stack meant to.
    proc = live.stack.procs["temporal"]
    environ = psutil.Process(proc.pid).environ()
    limit = live.settings.temporal_memory_limit
    assert limit == 256 * 2**20
    assert environ.get("GOMEMLIMIT") == str(limit)
    assert environ.get("GOGC") == str(TEMPORAL_GOGC)


def test_a_memory_limit_of_zero_leaves_go_its_defaults() -> None:
    assert temporal_environment(Settings(temporal_memory_limit="0")) == {}
    assert temporal_environment(Settings(temporal_memory_limit="1GiB")) == {
        "GOMEMLIMIT": str(2**30),
        "GOGC": str(TEMPORAL_GOGC),
    }
