"""The sweep of managed weights' objects against a push of the same object at that very moment
(replicant/managedweights.py): the push waits for the sweep's removal, then finds the object
gone and stores it again, so it never ends referring to a missing object.

PostgreSQL (the production database), where the two serialize on an advisory lock that the
test can see a push wait for.
"""

from __future__ import annotations

import hashlib
import threading
from collections.abc import Callable, Iterator
from datetime import timedelta
from pathlib import Path

import pytest
from sqlalchemy import text
from sqlalchemy.engine import Engine
from sqlmodel import Session, select

from replicant.cogmodel import ManagedWeight, WeightSource
from replicant.db import init_db, make_engine
from replicant.managedweights import FILES_SCHEME, Resolver, remove_unreferenced
from replicant.objectkeys import managed_weight_file
from replicant.settings import Settings
from replicant.storage import LocalStore
from replicant.tables import ManagedWeightRef, StoredFile
from replicant.timeutil import utcnow
from tests.pgdb import fresh_postgres_database
from tests.waiting import wait_until

pytestmark = pytest.mark.integration

PUSHER = "pusher"
DATA = b"the weights of a model pushed twice"


@pytest.fixture
def engine() -> Iterator[Engine]:
    with fresh_postgres_database("replicant_weights") as url:
        engine = make_engine(url)
        init_db(engine)
        yield engine
        engine.dispose()


def lock_waits(engine: Engine) -> int:
    """Transactions of this database waiting for an advisory lock."""
    with engine.connect() as conn:
        found = conn.execute(
            text(
                "SELECT count(*) FROM pg_locks l JOIN pg_database d ON d.oid = l.database "
                "WHERE l.locktype = 'advisory' AND NOT l.granted "
                "AND d.datname = current_database()"
            )
        ).scalar_one()
    return int(found)


class RacedStore(LocalStore):
    """A real store whose sweep, as it is about to remove the object ``key``, lets a push
    of that same object run as far as it can: to its end, or until it waits for the sweep."""

    def __init__(self, root: Path, engine: Engine, key: str) -> None:
        super().__init__(root, "http://127.0.0.1/files", "secret")
        self.engine, self.key = engine, key
        self.push: Callable[[], None] = lambda: None
        self.pushing: threading.Thread | None = None

    def delete(self, key: str) -> None:
        if key == self.key and self.pushing is None:
            pushing = self.pushing = threading.Thread(target=self.push)
            pushing.start()
            wait_until(
                lambda: not pushing.is_alive() or lock_waits(self.engine) > 0,
                what="the push to end or to wait for the sweep",
            )
        super().delete(key)


def test_a_push_holding_an_object_the_sweep_is_removing_stores_it_again(
    engine: Engine, tmp_path: Path
) -> None:
    sha256 = hashlib.sha256(DATA).hexdigest()
    key = managed_weight_file(sha256)
    store = RacedStore(tmp_path / "store", engine, key)
    store.put_bytes(DATA, "files/uploaded", "application/octet-stream")
    store.copy("files/uploaded", key)
    now = utcnow()
    with Session(engine) as session:
        session.add(
            StoredFile(
                id="uploaded",
                owner=PUSHER,
                name="w.bin",
                content_type="application/octet-stream",
                size=len(DATA),
                sha256=sha256,
                etag=sha256,
                object_key="files/uploaded",
                expires_at=now + timedelta(hours=1),
            )
        )
        # The first push's version is deleted: the sweep is to remove its object.
        session.add(
            ManagedWeightRef(
                version_id="deleted-version", object_key=key, created_at=now - timedelta(hours=1)
            )
        )
        session.commit()

    resolved: list[dict[str, object]] = []
    resolver = Resolver(
        Settings(data_dir=tmp_path / "data"),
        store=store,
        engine=engine,
        pusher=PUSHER,
        version="new-version",
    )
    weight = ManagedWeight(
        name="w", target="/src/w", sources=[WeightSource(uri=f"{FILES_SCHEME}uploaded")]
    )
    model_dir = tmp_path / "model"
    model_dir.mkdir()
    store.push = lambda: resolved.extend(resolver.resolve(model_dir, [weight]))

    assert remove_unreferenced(engine, store, grace=60, limit=10) == 1
    assert store.pushing is not None
    store.pushing.join()
    [entry] = resolved
    assert [f["key"] for f in entry["files"]] == [key]  # type: ignore[attr-defined]
    assert store.stat(key) is not None  # the push's object is there
    with Session(engine) as session:
        refs = session.exec(select(ManagedWeightRef.version_id)).all()
    assert refs == ["new-version"]
