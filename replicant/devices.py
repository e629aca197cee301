"""The GPU devices of this machine, as the setting names them or ``nvidia-smi`` lists them."""

from __future__ import annotations

import re
import shutil
import subprocess

_GPU_LINE = re.compile(r"^GPU (\d+):", re.MULTILINE)


def discover_devices(configured: str | None) -> list[str]:
    """The worker's GPU devices: ``configured`` (comma-separated ids), else the ones
    ``nvidia-smi -L`` lists, else none."""
    if configured is not None:
        return [d.strip() for d in configured.split(",") if d.strip()]
    smi = shutil.which("nvidia-smi")
    if smi is None:
        return []
    try:
        listing = subprocess.run(
            [smi, "-L"], capture_output=True, text=True, timeout=10, check=True
        ).stdout
    except (OSError, subprocess.SubprocessError):
        return []
    return _GPU_LINE.findall(listing)
