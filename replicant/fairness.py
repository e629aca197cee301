"""Fair hardware queues: who waits behind whom when a queue has a backlog.

Every prediction and training carries a Temporal ``Priority`` on its workflow: the fairness
key is the account that created it (slots go to the waiting accounts in turn, in proportion
to their weights) and a deployment may set a priority key (lower goes first). Activities
inherit the workflow's priority, so the run activity that waits for a hardware slot is
ordered by it on any worker, after any restart.

The Temporal server honours fairness only with the dynamic config in
``SERVER_DYNAMIC_CONFIG`` (docs/fairness.md); without it the same tasks are served first
come, first served.
"""

from __future__ import annotations

import hashlib

from temporalio.common import Priority

# Temporal's priority keys run from 1 (first) to 5 (last); unset means the middle, 3.
PRIORITY_MIN = 1
PRIORITY_MAX = 5
DEFAULT_PRIORITY = 3
# The server clamps weights to this range; refusing outside it keeps the stored value honest.
WEIGHT_MIN = 0.001
WEIGHT_MAX = 1000.0
DEFAULT_WEIGHT = 1.0
# A fairness key is at most 64 bytes.
MAX_KEY_BYTES = 64

# The server settings that make matching honour priority and fairness keys. One partition
# per task queue: fairness is kept per partition, and a hardware queue's few pollers would
# otherwise drain the partitions unevenly.
SERVER_DYNAMIC_CONFIG = [
    "matching.useNewMatcher=true",
    "matching.enableFairness=true",
    "matching.numTaskqueueReadPartitions=1",
    "matching.numTaskqueueWritePartitions=1",
]


class FairnessError(ValueError):
    """A weight outside what Temporal accepts."""


def check_weight(weight: float) -> float:
    """``weight`` if Temporal would use it unchanged, else FairnessError."""
    if not WEIGHT_MIN <= weight <= WEIGHT_MAX:
        raise FairnessError(f"weight must be between {WEIGHT_MIN} and {WEIGHT_MAX:g}")
    return weight


def fairness_key(account: str) -> str:
    """The account's fairness key: its name, or a digest of a name too long for a key."""
    if len(account.encode()) <= MAX_KEY_BYTES:
        return account
    return "sha256:" + hashlib.sha256(account.encode()).hexdigest()[:32]


def task_priority(account: str, weight: float | None, priority: int | None = None) -> Priority:
    """The Temporal priority of a prediction or training created by ``account``."""
    return Priority(
        priority_key=priority,
        fairness_key=fairness_key(account),
        fairness_weight=weight if weight is not None else DEFAULT_WEIGHT,
    )
