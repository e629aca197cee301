"""Checks of a model's ``cog.yaml`` against this installation, made when it is pushed.

Cog builds an image with the system packages and the GPU a model asks for; Replicant runs
models on the host, so it tells the pusher what the host lacks instead.
"""

from __future__ import annotations

import shutil
import subprocess

from replicant.cogmodel import CogConfig, CogConfigError
from replicant.devices import discover_devices
from replicant.settings import Settings

CHECK_TIMEOUT = 30.0


def gpu_devices(settings: Settings) -> list[str]:
    """This installation's GPUs: ``gpu_devices`` when set, else what ``nvidia-smi -L`` lists."""
    return discover_devices(settings.gpu_devices)


def missing_system_packages(packages: list[str]) -> list[str] | None:
    """The packages ``dpkg -s`` does not report installed; None when there is no dpkg."""
    dpkg = shutil.which("dpkg")
    if dpkg is None:
        return None
    missing = []
    for package in packages:
        try:
            proc = subprocess.run(
                [dpkg, "-s", package],
                capture_output=True,
                text=True,
                timeout=CHECK_TIMEOUT,
                check=False,
            )
        except (OSError, subprocess.SubprocessError):
            missing.append(package)
            continue
        if proc.returncode != 0 or "Status: install ok installed" not in proc.stdout:
            missing.append(package)
    return missing


def check_build(config: CogConfig, hardware: str, settings: Settings) -> list[str]:
    """Warnings for the push output; raises ``CogConfigError`` for a model that cannot run.

    ``build.gpu: true`` needs a GPU unless the model runs on the ``cpu`` hardware; any other
    model on a GPU SKU of an installation without GPUs runs on the CPU, and is told so.
    """
    no_gpu = hardware != "cpu" and not gpu_devices(settings)
    if config.gpu and no_gpu:
        raise CogConfigError(
            f"build.gpu is true and the model's hardware is {hardware!r}, but this "
            "installation has no GPU; set the model's hardware to cpu to run it on the CPU"
        )
    warnings = []
    if no_gpu and hardware.startswith("gpu"):
        warnings.append(
            f"the model's hardware is {hardware}, but this installation has no GPU: "
            "it runs on the CPU"
        )
    warnings += _system_package_warnings(config.system_packages)
    if config.build_commands:
        warnings.append(
            "build.run commands are not run here (there is no image to build): "
            + "; ".join(config.build_commands)
            + " (the model may fail where it needs what they make)"
        )
    return warnings


def _system_package_warnings(packages: list[str]) -> list[str]:
    if not packages:
        return []
    missing = missing_system_packages(packages)
    if missing is None:
        return ["cannot check build.system_packages on this host (no dpkg): " + ", ".join(packages)]
    if not missing:
        return []
    return [
        "build.system_packages not installed on this host: "
        + ", ".join(missing)
        + " (the model may fail where it needs them; install them with apt-get)"
    ]
