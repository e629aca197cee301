"""A version's boot log: why its model processes were stopped (setup failed, defunct,
unhealthy), written by the workers and shown to the model's owner on its dashboard page.

Each entry is a line ``<time> <state>: <error>`` and the tail of the process's output,
indented; the log keeps its newest ``BOOT_LOGS_LIMIT`` characters.
"""

from __future__ import annotations

from sqlalchemy.engine import Engine
from sqlmodel import Session, col, select

from replicant.catalog import account_names
from replicant.tables import Account, Model, Version
from replicant.timeutil import isoformat, utcnow

BOOT_LOGS_LIMIT = 64 * 1024
# Lines of a process's output an entry keeps.
OUTPUT_LINES = 40


def boot_log_entry(state: str, error: str, output: str) -> str:
    """One entry: when, the state and its error, then the output's last lines, indented."""
    lines = output.rstrip("\n").splitlines()[-OUTPUT_LINES:]
    tail = "".join(f"  {line}\n" for line in lines)
    return f"{isoformat(utcnow())} {state}: {error}\n{tail}"


def keep_newest(text: str, limit: int = BOOT_LOGS_LIMIT) -> str:
    """``text`` within ``limit`` characters: its newest whole lines."""
    if len(text) <= limit:
        return text
    cut = text[-limit:]
    return cut[cut.find("\n") + 1 :] if "\n" in cut else cut


def append_boot_log(engine: Engine, version_id: str, state: str, error: str, output: str) -> None:
    """Add an entry to the boot log of ``version_id`` (nothing when it is gone)."""
    entry = boot_log_entry(state, error, output)
    with Session(engine) as session:
        version = session.get(Version, version_id, with_for_update=True)
        if version is None:
            return
        version.boot_logs = keep_newest(version.boot_logs + entry)
        session.add(version)
        session.commit()


def owned_boot_logs(session: Session, account: Account, model: Model) -> dict[str, str]:
    """The boot logs of ``model``'s versions by version id (those with one), when
    ``account`` owns the model (itself or through an organization); else none."""
    if model.owner not in account_names(session, account):
        return {}
    stmt = select(Version.id, Version.boot_logs).where(
        Version.model_id == model.id, col(Version.boot_logs) != ""
    )
    return {version_id: logs for version_id, logs in session.exec(stmt).all()}
