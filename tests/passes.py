"""Runs test passes side by side (``make test``): ``python tests/passes.py NAME=COMMAND ...``.

Most of the suite waits on timers (retention, heartbeats, idle deployments), so pytest
processes side by side take little longer than one. Every line a pass prints is shown as it comes,
after the pass's name, and a summary ends the output; the exit status is 1 when a pass fails.
"""

from __future__ import annotations

import shlex
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field


@dataclass
class Pass:
    name: str
    proc: subprocess.Popen[bytes]
    started: float = field(default_factory=time.monotonic)
    minutes: float = 0.0


def relay(step: Pass, label: str, lock: threading.Lock) -> None:
    """Copy the pass's output line by line under its label, until the pass closes it."""
    assert step.proc.stdout is not None
    for raw in step.proc.stdout:
        line = raw.decode("utf-8", "replace").rstrip("\n")
        with lock:
            sys.stdout.write(f"{label} {line}\n")
            sys.stdout.flush()
    step.minutes = (time.monotonic() - step.started) / 60


def wait(proc: subprocess.Popen[bytes]) -> int:
    # Ctrl-C reaches the passes as well (one process group): wait while they tear down.
    while True:
        try:
            return proc.wait()
        except KeyboardInterrupt:
            continue


def main(args: list[str]) -> int:
    pairs = [arg.split("=", 1) for arg in args]
    if not pairs or any(len(pair) != 2 for pair in pairs):
        print(__doc__, file=sys.stderr)
        return 2
    width = max(len(name) for name, _ in pairs) + 2
    lock = threading.Lock()
    steps: list[Pass] = []
    threads: list[threading.Thread] = []
    for name, command in pairs:
        proc = subprocess.Popen(
            shlex.split(command), stdout=subprocess.PIPE, stderr=subprocess.STDOUT
        )
        steps.append(Pass(name, proc))
        label = f"[{name}]".ljust(width)
        threads.append(threading.Thread(target=relay, args=(steps[-1], label, lock), daemon=True))
        threads[-1].start()
    codes = [wait(step.proc) for step in steps]
    for thread in threads:
        thread.join(timeout=10)  # the rest of the output, unless a leftover child holds it
    for step, code in zip(steps, codes, strict=True):
        outcome = "passed" if code == 0 else f"FAILED (exit status {code})"
        print(f"{step.name}: {outcome} in {step.minutes:.1f} min", flush=True)
    return 0 if all(code == 0 for code in codes) else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
