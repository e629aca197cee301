"""The embedded Temporal dev server keeps a bounded number of workflows in memory."""

from __future__ import annotations

from replicant.devstack import TEMPORAL_HISTORY_CACHE_SIZE
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
