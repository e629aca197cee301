"""The start reconciler settles builds too: a build's row is written before its workflow
starts, and only its workflow ends it, so a build whose workflow never started or ended
without ending it (terminated) is failed with the reason and its pushed archive removed; a
build whose workflow runs is left alone."""

from __future__ import annotations

from datetime import timedelta

from sqlmodel import Session
from temporalio.testing import ActivityEnvironment

from activities.reconcile import ReconcileActivities
from replicant.contracts import ExpireFiles, ReconcileStarts
from replicant.ids import new_id
from replicant.objectkeys import build_archive
from replicant.storage import ObjectStore, open_store
from replicant.tables import Build
from replicant.temporal import connect
from replicant.timeutil import utcnow
from tests.conftest import LiveStack
from workflows.sweeps import FileExpiryWorkflow

# Longer ago than any start grace: the reconciler may settle these rows.
LONG_AGO = timedelta(hours=1)
# No worker serves this queue: a workflow started on it stays running, untouched.
NOBODYS_QUEUE = "replicant-test-nobody"


def pushed_build(live: LiveStack, store: ObjectStore, status: str) -> str:
    """A build row as a push leaves it, from long ago, with its archive in the store."""
    build_id = new_id()
    upload = store.new_upload()
    upload.write(b"not really a model")
    store.commit(upload, build_archive(build_id), "application/octet-stream")
    row = Build(
        id=build_id,
        owner=live.settings.default_account,
        model=f"{live.settings.default_account}/orphan",
        status=status,
        created_at=utcnow() - LONG_AGO,
    )
    with Session(live.engine) as session:
        session.add(row)
        session.commit()
    return build_id


def build_row(live: LiveStack, build_id: str) -> Build:
    with Session(live.engine, expire_on_commit=False) as session:
        row = session.get(Build, build_id)
    assert row is not None
    return row


def has_archive(store: ObjectStore, build_id: str) -> bool:
    try:
        return store.stat(build_archive(build_id)) is not None
    except ValueError:
        return False


async def test_builds_whose_workflow_never_started_or_was_terminated_are_failed_with_the_reason(
    live: LiveStack,
) -> None:
    store = open_store(live.settings)
    client = await connect(live.settings)
    never_started = pushed_build(live, store, "starting")
    terminated = pushed_build(live, store, "processing")
    running = pushed_build(live, store, "processing")
    # Any workflow type will do under a build's id: what counts is whether it runs.
    for build_id in (terminated, running):
        await client.start_workflow(
            FileExpiryWorkflow.run, ExpireFiles(), id=f"build-{build_id}", task_queue=NOBODYS_QUEUE
        )
    await client.get_workflow_handle(f"build-{terminated}").terminate("stuck")
    try:
        activities = ReconcileActivities(live.engine, client, store)
        await ActivityEnvironment().run(activities.reconcile_starts, ReconcileStarts(grace=60))

        first = build_row(live, never_started)
        assert first.status == "failed", first
        assert first.error is not None and first.error["status"] == 500
        assert "never started" in first.error["detail"]
        second = build_row(live, terminated)
        assert second.status == "failed", second
        assert second.error is not None and "ended (terminated)" in second.error["detail"]
        assert not has_archive(store, never_started)
        assert not has_archive(store, terminated)

        third = build_row(live, running)
        assert third.status == "processing" and third.error is None, third
        assert has_archive(store, running)
    finally:
        await client.get_workflow_handle(f"build-{running}").terminate("test over")
