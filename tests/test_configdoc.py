"""docs/configuration.md is generated from the settings class and names only real settings."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from replicant import configdoc
from replicant.settings import Settings

ROOT = Path(__file__).resolve().parent.parent
# A family written as `REPLICANT_S3_*` names no one setting.
REPLICANT_VARIABLE = re.compile(r"\bREPLICANT_[A-Z0-9_]+\b(?!\*)")
# Variables the docs name that are not settings: the test suite's own switch.
# Names of the environment that are not settings: the test database switch, and what a model
# process is told (its thread share).
NOT_SETTINGS = frozenset({"REPLICANT_TEST_DATABASE", "REPLICANT_CPU_THREADS"})


def test_configuration_doc_is_what_the_generator_writes() -> None:
    current = configdoc.DOC.read_text()
    assert configdoc.render(current) == current, (
        "docs/configuration.md differs from the settings: run `python -m replicant.configdoc`"
    )
    assert configdoc.main(["--check"]) == 0


def test_every_setting_has_a_description_and_a_row() -> None:
    table = configdoc.render_table()
    for name, field in Settings.model_fields.items():
        assert field.description, f"Settings.{name} has no description"
        assert f"| `REPLICANT_{name.upper()}` |" in table


def test_a_stale_table_is_rewritten() -> None:
    current = configdoc.DOC.read_text()
    stale = current.replace("| `REPLICANT_MAX_WAIT` |", "| `REPLICANT_MAX_WAITING` |")
    assert stale != current
    assert configdoc.render(stale) == current


def test_a_document_without_the_markers_is_refused() -> None:
    with pytest.raises(ValueError, match="markers"):
        configdoc.render("# Configuration\n")


def test_the_table_renders_types_and_defaults_as_written_in_the_environment() -> None:
    table = configdoc.render_table()
    assert "| `REPLICANT_STORAGE` | `local` or `s3` | `local` |" in table
    assert "| `REPLICANT_DATABASE_URL` | str or None | unset |" in table
    assert "| `REPLICANT_ALLOW_PRIVATE_URLS` | bool | `false` |" in table
    assert '| `REPLICANT_HARDWARE` | dict[str, int] | `{"cpu": 2,' in table


def test_readme_and_docs_name_only_real_settings() -> None:
    settings = {f"REPLICANT_{name.upper()}" for name in Settings.model_fields}
    for path in [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]:
        unknown = set(REPLICANT_VARIABLE.findall(path.read_text())) - settings - NOT_SETTINGS
        assert not unknown, f"{path.name} names settings that do not exist: {sorted(unknown)}"
