"""What the Temporal UI shows of a workflow at a glance: its ``static_summary`` (one line, in
the list of workflows and atop its page) and ``static_details`` (a few lines of Markdown on
its page). Secret inputs are sealed before a workflow starts: the details show them as
``••••``, never their sealed text; the input is cut to its first characters.
"""

from __future__ import annotations

import json
from typing import Any

from replicant.sealing import SEALED_PREFIX

INPUT_CHARS = 200
HIDDEN = "••••"


def _shown(value: Any) -> Any:
    if isinstance(value, str):
        return HIDDEN if value.startswith(SEALED_PREFIX) else value
    if isinstance(value, dict):
        return {k: _shown(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_shown(v) for v in value]
    return value


def input_preview(payload: dict[str, Any]) -> str:
    """The input's first ``INPUT_CHARS`` characters, Secret values hidden."""
    text = json.dumps(_shown(payload), ensure_ascii=False, default=str)
    return text if len(text) <= INPUT_CHARS else text[: INPUT_CHARS - 1] + "…"


def run_summary(kind: str, model: str, hardware: str, owner: str) -> str:
    """e.g. ``prediction of replicate/hello-world on cpu, by alice``."""
    return f"{kind} of {model} on {hardware}, by {owner}"


def run_details(
    kind: str, run_id: str, model: str, version: str, hardware: str, owner: str, payload: Any
) -> str:
    """The Markdown a run's workflow page shows."""
    lines = [
        f"**{kind.capitalize()}** `{run_id}`",
        f"- model: `{model}`",
        f"- version: `{version}`",
        f"- hardware: `{hardware}`",
        f"- created by: `{owner}`",
    ]
    if isinstance(payload, dict):
        lines.append(f"- input: `{input_preview(payload)}`")
    return "\n".join(lines)


def build_summary(model: str, version: str, owner: str) -> str:
    return f"build of {model} version {version[:12]}, by {owner}"
