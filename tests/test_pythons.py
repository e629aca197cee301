"""Resolving a model's ``python_version``: only interpreters that run and report it count.

The interpreters here are fake: small scripts that print a version, and a pyenv-style shim
that fails the way pyenv's do for a version that is not active.
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path

import pytest

from replicant.buildchecks import check_build, gpu_devices
from replicant.cogmodel import CogConfig, CogConfigError, load_cog_config
from replicant.envs import ensure_env
from replicant.pythons import Interpreter, candidates, find_python, probe
from replicant.settings import Settings

SHIM = '#!/bin/sh\necho "pyenv: $(basename "$0"): command not found" >&2\nexit 127\n'


def fake_python(path: Path, version: str) -> Path:
    """An executable that answers Replicant's version probe with ``version``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(f"#!/bin/sh\necho {version}\n")
    path.chmod(0o755)
    return path


def pyenv_install(root: Path, version: str) -> Path:
    """A fake ``$(pyenv root)/versions/X.Y.Z`` install; the path of its ``pythonX.Y``."""
    short = ".".join(version.split(".")[:2])
    return fake_python(root / "versions" / version / "bin" / f"python{short}", version)


def shim(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(SHIM)
    path.chmod(0o755)
    return path


def search(tmp_path: Path, wanted: str) -> list[Path]:
    """The candidates for ``wanted`` among the fake installs under ``tmp_path`` only."""
    return list(
        candidates(
            wanted,
            path=str(tmp_path / "shims") + ":" + str(tmp_path / "bin"),
            pyenv=[tmp_path / "pyenv"],
            uv=[tmp_path / "uv"],
            system=[tmp_path / "usr-bin"],
        )
    )


def test_probe_reports_the_version_an_interpreter_prints(tmp_path: Path) -> None:
    assert probe(fake_python(tmp_path / "python3.12", "3.12.4")) == "3.12.4"
    assert probe(Path(sys.executable)) == ".".join(map(str, sys.version_info[:3]))


def test_a_failing_shim_or_a_missing_file_does_not_count(tmp_path: Path) -> None:
    assert probe(shim(tmp_path / "python3.12")) is None
    assert probe(tmp_path / "nothing") is None
    garbage = tmp_path / "garbage"
    garbage.write_text("#!/bin/sh\necho hello\n")
    garbage.chmod(0o755)
    assert probe(garbage) is None


def test_a_shim_on_path_is_passed_over_for_pyenvs_installed_version(tmp_path: Path) -> None:
    shim(tmp_path / "shims" / "python3.12")
    installed = fake_python(
        tmp_path / "pyenv" / "versions" / "3.12.1" / "bin" / "python3.12", "3.12.1"
    )
    found = find_python("3.12", search(tmp_path, "3.12"))
    assert found == Interpreter(installed, "3.12.1")


def test_the_search_covers_path_pyenv_uv_and_system_dirs_in_order(tmp_path: Path) -> None:
    on_path = fake_python(tmp_path / "bin" / "python3.12", "3.12.0")
    older = pyenv_install(tmp_path / "pyenv", "3.12.1")
    newer = fake_python(
        tmp_path / "pyenv" / "versions" / "3.12.10" / "bin" / "python3.12", "3.12.10"
    )
    pyenv_install(tmp_path / "pyenv", "3.13.0")
    uv = fake_python(
        tmp_path / "uv" / "cpython-3.12.7-linux-x86_64-gnu" / "bin" / "python3.12", "3.12.7"
    )
    system = fake_python(tmp_path / "usr-bin" / "python3.12", "3.12.3")
    # Newest pyenv install first; 3.13 is not a candidate for 3.12.
    assert search(tmp_path, "3.12") == [on_path, newer, older, uv, system]


def test_uv_managed_and_system_pythons_are_found(tmp_path: Path) -> None:
    uv = fake_python(
        tmp_path / "uv" / "cpython-3.12.7-linux-x86_64-gnu" / "bin" / "python3.12", "3.12.7"
    )
    assert find_python("3.12", search(tmp_path, "3.12")) == Interpreter(uv, "3.12.7")
    system = fake_python(tmp_path / "usr-bin" / "python3.10", "3.10.12")
    assert find_python("3.10", search(tmp_path, "3.10")) == Interpreter(system, "3.10.12")


def test_an_interpreter_that_reports_another_version_does_not_count(tmp_path: Path) -> None:
    # A python3.12 that is really 3.11 (a broken symlink farm) is not a 3.12.
    fake_python(tmp_path / "bin" / "python3.12", "3.11.9")
    assert find_python("3.12", search(tmp_path, "3.12")) is None


def test_an_exact_patch_level_is_preferred_when_asked_for(tmp_path: Path) -> None:
    fake_python(tmp_path / "bin" / "python3.12", "3.12.0")
    exact = fake_python(tmp_path / "usr-bin" / "python3.12", "3.12.3")
    assert find_python("3.12.3", search(tmp_path, "3.12")) == Interpreter(exact, "3.12.3")
    # Without that patch level anywhere, any 3.12 will do.
    found = find_python("3.12.9", search(tmp_path, "3.12"))
    assert found is not None and found.version == "3.12.0"


def test_pyenv_root_comes_from_the_environment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    installed = fake_python(
        tmp_path / "root" / "versions" / "3.12.1" / "bin" / "python3.12", "3.12.1"
    )
    monkeypatch.setenv("PYENV_ROOT", str(tmp_path / "root"))
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    found = list(candidates("3.12", system=[]))
    assert found == [installed]


def test_no_interpreter_of_the_version_falls_back_to_the_host_with_a_warning(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    shim(tmp_path / "shims" / "python3.98")
    monkeypatch.setenv("PATH", str(tmp_path / "shims"))
    monkeypatch.setenv("PYENV_ROOT", str(tmp_path / "pyenv"))
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    lines: list[str] = []
    config = CogConfig(predict_ref="predict.py:Predictor", python_version="3.98")
    with caplog.at_level(logging.WARNING, logger="replicant.envs"):
        assert ensure_env(config, tmp_path / "envs", lines.append) == Path(sys.executable)
    assert any("Python 3.98 is not installed here" in line for line in lines)
    assert "python_version_missing" in caplog.text


def test_build_checks_know_the_installations_gpus() -> None:
    config = CogConfig(predict_ref="predict.py:Predictor", gpu=True)
    with_gpu = Settings(gpu_devices="0,1")
    assert gpu_devices(with_gpu) == ["0", "1"]
    assert check_build(config, "gpu-t4", with_gpu) == []
    cpu_only = Settings(gpu_devices="")
    with pytest.raises(CogConfigError, match="no GPU"):
        check_build(config, "gpu-t4", cpu_only)
    assert check_build(config, "cpu", cpu_only) == []
    # A model without build.gpu on a GPU SKU runs on the CPU here: the push says so.
    cpu_model = CogConfig(predict_ref="predict.py:Predictor")
    assert check_build(cpu_model, "gpu-t4", cpu_only) == [
        "the model's hardware is gpu-t4, but this installation has no GPU: it runs on the CPU"
    ]
    assert check_build(cpu_model, "gpu-t4", with_gpu) == []


def test_build_run_commands_are_named_as_a_warning(tmp_path: Path) -> None:
    # Cog runs build.run in the image it builds; here there is none, so the push says so.
    (tmp_path / "predict.py").write_text("")
    (tmp_path / "cog.yaml").write_text(
        "build:\n  run:\n    - curl -o /usr/local/bin/pget https://x/pget\n"
        "    - command: pip install flash-attn\n      mounts: []\n"
        'predict: "predict.py:Predictor"\n'
    )
    config = load_cog_config(tmp_path)
    assert config.build_commands == [
        "curl -o /usr/local/bin/pget https://x/pget",
        "pip install flash-attn",
    ]
    assert check_build(config, "cpu", Settings()) == [
        "build.run commands are not run here (there is no image to build): "
        "curl -o /usr/local/bin/pget https://x/pget; pip install flash-attn"
        " (the model may fail where it needs what they make)"
    ]
    (tmp_path / "cog.yaml").write_text('build:\n  run: "make"\npredict: "predict.py:Predictor"\n')
    with pytest.raises(CogConfigError, match="build.run must be a list"):
        load_cog_config(tmp_path)
