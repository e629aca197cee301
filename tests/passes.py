"""Runs test passes side by side (``make test``): ``python tests/passes.py NAME=COMMAND ...``.

Most of the suite waits on timers (retention, heartbeats, idle deployments), so two pytest
processes at once take little longer than one. Every line a pass prints is shown as it comes,
after the pass's name, and a summary ends the output; the exit status is 1 when a pass fails.
"""

from __future__ import annotations

import contextlib
import shlex
import subprocess
import sys
import threading
import time
from dataclasses import dataclass


@dataclass
class Pass:
    name: str
    command: list[str]
    code: int | None = None
    minutes: float = 0.0


def run(step: Pass, width: int, started: float, lock: threading.Lock) -> None:
    """Run one pass, relaying its output line by line under its name."""
    proc = subprocess.Popen(step.command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    assert proc.stdout is not None
    label = f"[{step.name}]".ljust(width + 2)
    for raw in proc.stdout:
        line = raw.decode("utf-8", "replace").rstrip("\n")
        with lock:
            sys.stdout.write(f"{label} {line}\n")
            sys.stdout.flush()
    step.code = proc.wait()
    step.minutes = (time.monotonic() - started) / 60


def main(args: list[str]) -> int:
    pairs = [arg.split("=", 1) for arg in args]
    if not pairs or any(len(pair) != 2 for pair in pairs):
        print(__doc__, file=sys.stderr)
        return 2
    steps = [Pass(name, shlex.split(command)) for name, command in pairs]
    width = max(len(step.name) for step in steps)
    started = time.monotonic()
    lock = threading.Lock()
    threads = [
        threading.Thread(target=run, args=(step, width, started, lock), daemon=True)
        for step in steps
    ]
    for thread in threads:
        thread.start()
    # Ctrl-C reaches the passes as well (one process group): wait while they tear down.
    for thread in threads:
        while thread.is_alive():
            with contextlib.suppress(KeyboardInterrupt):
                thread.join()
    for step in steps:
        outcome = "passed" if step.code == 0 else f"FAILED (exit status {step.code})"
        print(f"{step.name}: {outcome} in {step.minutes:.1f} min", flush=True)
    return 0 if all(step.code == 0 for step in steps) else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
