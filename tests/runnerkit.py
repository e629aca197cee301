"""Tiny throwaway Cog models and helpers for the runner pool's tests against real coglet
processes (tests/test_runners.py)."""

from __future__ import annotations

import contextlib
import sys
import textwrap
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.waiting import async_wait_until
from workers.runners import CogPrediction, RunnerSpec

MODELS = {
    "hello": """
        from cog import BasePredictor

        class Predictor(BasePredictor):
            def setup(self) -> None:
                print("hello is ready")

            def predict(self, name: str = "world") -> str:
                return f"hello {name}"
    """,
    "whoami": """
        import os
        import time
        from cog import BasePredictor

        # Which process: pids repeat across sandboxes (each has its own pid namespace).
        PROCESS = os.urandom(8).hex()

        class Predictor(BasePredictor):
            def predict(self, hold: float = 0.0) -> str:
                time.sleep(hold)
                return PROCESS
    """,
    "chatty": """
        import time
        from cog import BasePredictor

        class Predictor(BasePredictor):
            def predict(self, steps: int = 5) -> str:
                for i in range(steps):
                    print(f"step {i}", flush=True)
                    time.sleep(0.2)
                return "done"
    """,
    "stream": """
        import time
        from typing import Iterator
        from cog import BasePredictor

        class Predictor(BasePredictor):
            def predict(self, steps: int = 5) -> Iterator[str]:
                for i in range(steps):
                    print(f"step {i}", flush=True)
                    yield f"part {i}"
                    time.sleep(0.2)
    """,
    "broken": """
        from cog import BasePredictor

        class Predictor(BasePredictor):
            def predict(self, x: int = 1) -> str:
                print("about to fail", flush=True)
                raise ValueError("boom: bad thing")
    """,
    "brokenstream": """
        from typing import Iterator
        from cog import BasePredictor, Input

        def check(step: int) -> None:
            if step == 2:
                raise KeyError(f"no step {step}")

        class Predictor(BasePredictor):
            def predict(self, steps: int = Input(default=4, ge=1)) -> Iterator[str]:
                for i in range(steps):
                    check(i)
                    yield f"part {i}"
    """,
    "brokenasync": """
        from cog import BasePredictor, Input

        class Predictor(BasePredictor):
            async def predict(self, word: str = Input(default="async")) -> str:
                raise RuntimeError(f"{word} went wrong")
    """,
    "brokenagen": """
        from typing import AsyncIterator
        from cog import BasePredictor

        class Predictor(BasePredictor):
            async def predict(self, n: int = 1) -> AsyncIterator[str]:
                yield "first"
                raise OSError(f"disk {n} gone")
    """,
    "badsetup": """
        from cog import BasePredictor

        print("loading the module", flush=True)

        class Predictor(BasePredictor):
            def setup(self) -> None:
                raise RuntimeError("setup exploded")

            def predict(self) -> str:
                return "never"
    """,
    "hang": """
        import time
        from cog import BasePredictor

        class Predictor(BasePredictor):
            def predict(self, seconds: float = 60) -> str:
                print("sleeping", flush=True)
                time.sleep(seconds)  # C code: coglet's cancel cannot interrupt it
                return "woke up"
    """,
}

TRAIN = """
    def train(rounds: int = 1) -> str:
        print(f"training {rounds} rounds", flush=True)
        if rounds < 0:
            raise ValueError("rounds must not be negative")
        return f"trained {rounds}"
"""


def write_models(root: Path) -> Path:
    """Each of ``MODELS`` as a model directory under ``root`` (``hello`` can also train)."""
    for name, source in MODELS.items():
        (root / name).mkdir()
        (root / name / "predict.py").write_text(textwrap.dedent(source))
        (root / name / "cog.yaml").write_text('predict: "predict.py:Predictor"\n')
    (root / "hello" / "train.py").write_text(textwrap.dedent(TRAIN))
    return root


def spec(models: Path, name: str, **fields: object) -> RunnerSpec:
    values: dict[str, object] = {
        "key": name,
        "model_dir": models / name,
        "python": Path(sys.executable),
        "predict_ref": "predict.py:Predictor",
    }
    values.update(fields)
    return RunnerSpec.model_validate(values)


def gone(pid: int) -> bool:
    """True when a process no longer runs (a zombie waiting for init counts as gone)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return True
    return stat.rsplit(")", 1)[-1].split()[0] in ("Z", "X")


def children(pid: int) -> list[int]:
    found: list[int] = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        with contextlib.suppress(OSError):
            found += [int(c) for c in (task / "children").read_text().split()]
    return found


async def eventually(check: Callable[[], bool], what: str, timeout: float = 5.0) -> None:
    """Wait until ``check()`` holds; fail naming ``what`` when it does not in time."""

    async def probe() -> bool:
        return check()

    await async_wait_until(probe, what=what, timeout=timeout, interval=0.02)


def ready_events(caplog: pytest.LogCaptureFixture) -> int:
    """How many processes the pool has reported booted."""
    return sum("event=runner_ready" in r.getMessage() for r in caplog.records)


class Recorder:
    """Collects callbacks in order, with the time they arrived."""

    def __init__(self) -> None:
        self.events: list[tuple[str, float, CogPrediction | None]] = []

    async def on_booted(self) -> None:
        self.events.append(("booted", time.monotonic(), None))

    async def on_update(self, state: CogPrediction) -> None:
        self.events.append(("update", time.monotonic(), state))

    @property
    def updates(self) -> list[CogPrediction]:
        return [s for kind, _, s in self.events if kind == "update" and s is not None]
