"""Per-version Python environments: Replicant's own Python for the examples, a fallback for
a Python the host lacks, a clear error for a requirement pip cannot find, and one build per
environment that sees cog.

Everything here runs the real cog 0.23.1 SDK and pip; nothing about them is mocked.
"""

from __future__ import annotations

import base64
import hashlib
import logging
import subprocess
import sys
import threading
import zipfile
from pathlib import Path

import pytest

from replicant.cogmodel import (
    CogConfig,
    load_cog_config,
)
from replicant.envs import EnvBuildError, ensure_env

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"
PYTHON = Path(sys.executable)
NAMES = ["hello-world", "sleep", "thumbnail", "ngram"]


@pytest.mark.parametrize("name", NAMES)
def test_examples_run_in_replicants_own_python(tmp_path: Path, name: str) -> None:
    assert ensure_env(load_cog_config(EXAMPLES / name), tmp_path) == PYTHON
    assert list(tmp_path.iterdir()) == []


def fallback_lines(
    version: str, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> tuple[list[str], str]:
    """The build lines and warning log of an env asking for ``version``, which must come out
    as Replicant's own Python with nothing built."""
    lines: list[str] = []
    config = CogConfig(predict_ref="predict.py:Predictor", python_version=version)
    with caplog.at_level(logging.WARNING, logger="replicant.envs"):
        assert ensure_env(config, tmp_path, lines.append) == PYTHON
    assert list(tmp_path.iterdir()) == []
    return lines, caplog.text


def test_a_python_version_the_host_lacks_falls_back_with_a_warning(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    lines, logged = fallback_lines("3.99", tmp_path, caplog)
    assert any("3.99" in line for line in lines)
    assert "python_version_missing" in logged


def test_a_python_older_than_coglet_supports_falls_back_with_a_warning(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    # Older Cog examples ask for 3.8 or 3.9 (installed or not): coglet needs 3.10 or later.
    lines, logged = fallback_lines("3.9", tmp_path, caplog)
    host = f"{sys.version_info.major}.{sys.version_info.minor}"
    assert lines == [f"Python 3.9 is not one coglet runs on (>=3.10); using Python {host} instead"]
    assert "python_version_unsupported" in logged


@pytest.mark.integration  # builds a Python environment with pip
def test_a_requirement_pip_cannot_find_is_an_env_build_error(tmp_path: Path) -> None:
    config = CogConfig(
        predict_ref="predict.py:Predictor",
        python_packages=["replicant-no-such-package-xyz==1.0"],
    )
    with pytest.raises(EnvBuildError, match="replicant-no-such-package-xyz"):
        ensure_env(config, tmp_path)
    # Nothing half-built is left that could pass for a ready env.
    assert [p for p in tmp_path.iterdir() if p.is_dir()] == []


def make_wheel(directory: Path, name: str = "replicant_test_pkg", version: str = "0.1") -> Path:
    """A minimal pure-Python wheel, so building an env needs no network."""
    info = f"{name}-{version}.dist-info"
    files = {
        f"{name}.py": "VALUE = 42\n",
        f"{info}/METADATA": f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n",
        f"{info}/WHEEL": "Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: true\n"
        "Tag: py3-none-any\n",
    }
    record = []
    for path, text in files.items():
        digest = hashlib.sha256(text.encode()).digest()
        encoded = base64.urlsafe_b64encode(digest).rstrip(b"=").decode()
        record.append(f"{path},sha256={encoded},{len(text.encode())}")
    files[f"{info}/RECORD"] = "\n".join([*record, f"{info}/RECORD,,"]) + "\n"
    wheel = directory / f"{name}-{version}-py3-none-any.whl"
    with zipfile.ZipFile(wheel, "w") as archive:
        for path, text in files.items():
            archive.writestr(path, text)
    return wheel


@pytest.mark.integration  # builds a Python environment with pip
def test_an_env_is_built_once_and_sees_cog(tmp_path: Path) -> None:
    wheel = make_wheel(tmp_path)
    config = CogConfig(predict_ref="predict.py:Predictor", python_packages=[str(wheel)])
    envs = tmp_path / "envs"
    lines: list[str] = []
    results: list[Path] = []

    def build() -> None:
        results.append(ensure_env(config, envs, lines.append))

    threads = [threading.Thread(target=build) for _ in range(3)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(results) == 3 and len(set(results)) == 1
    python = results[0]
    assert python != PYTHON and python.parent.parent.parent == envs
    assert sum(line.startswith("building") for line in lines) == 1
    probe = subprocess.run(
        [str(python), "-c", "import cog, replicant_test_pkg as p; print(cog.__version__, p.VALUE)"],
        capture_output=True,
        text=True,
        check=True,
    )
    assert probe.stdout.split() == ["0.23.1", "42"]
    # The same requirements later: the finished env, without building.
    lines.clear()
    assert ensure_env(config, envs, lines.append) == python and lines == []
