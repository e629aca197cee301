"""How long each version's runs take, as one API process sees them answered: whether a new
prediction of the version is expected to be short enough to run in its workflow's own task
(``local_run_seconds``, workflows/steps.py ``start_run``).

A version counts as fast once the process has seen ``SEEN`` of its runs succeed and each of
the last ``RECENT`` took less than ``local_run_seconds`` (the model's ``predict_time``). A
slower run, one that ended otherwise (failed, canceled) or one seen still processing after
that time makes it slow again until fast runs follow. A hint only: a run of either kind
reaches the same end.
"""

from __future__ import annotations

import collections
from datetime import datetime

from cachetools import LRUCache

from replicant.tables import Prediction
from replicant.timeutil import as_utc, utcnow

# Runs of a version seen succeed before it may count as fast; of which the last this many
# decide.
SEEN = 3
RECENT = 5
# Versions remembered (the least recently seen are forgotten first).
VERSIONS = 4096


class RunTimes:
    """The recent run times of each version this process answered runs of."""

    def __init__(self, fast_below: float) -> None:
        self.fast_below = fast_below
        self._recent: LRUCache[str, collections.deque[float]] = LRUCache(maxsize=VERSIONS)

    def observe(self, row: Prediction) -> None:
        """Learn from a prediction as an answer shows it."""
        if self.fast_below <= 0 or row.status == "starting":
            return
        seconds = (row.metrics or {}).get("predict_time")
        if row.status == "succeeded" and isinstance(seconds, int | float):
            recent = self._recent.get(row.version)
            if recent is None:
                recent = self._recent[row.version] = collections.deque(maxlen=RECENT)
            recent.append(float(seconds))
        elif row.status != "processing" or _running_for(row.started_at) >= self.fast_below:
            self._recent.pop(row.version, None)  # not known to be fast: count again

    def fast(self, version: str) -> bool:
        """Whether a run of ``version`` is expected to take less than ``fast_below``."""
        recent = self._recent.get(version)
        return recent is not None and len(recent) >= SEEN and max(recent) < self.fast_below


def _running_for(started_at: datetime | None) -> float:
    if started_at is None:
        return 0.0
    return (utcnow() - as_utc(started_at)).total_seconds()
