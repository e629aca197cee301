"""Files on an S3 stack (moto_server): data URI inputs stored before the workflow starts (no
file bytes through Temporal), presigned S3 output URLs, the scheduled removal of expired
uploads; and predictions refused when their model's hardware is not offered.
"""

from __future__ import annotations

import asyncio
import base64
import io
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import httpx
import pytest
from minio import Minio
from PIL import Image
from sqlalchemy import update
from sqlalchemy.engine import Engine
from sqlmodel import Session, col, select

from activities.files import Stager, materialized_input
from replicant.contracts import PredictionRequest, StagedFile
from replicant.db import make_engine
from replicant.devstack import Stack
from replicant.settings import Settings
from replicant.tables import Model, Prediction, StoredFile
from replicant.temporal import connect
from replicant.timeutil import utcnow
from tests.conftest import TERMINAL, schemas_derived_once, stack_settings, suite_database
from tests.test_safefetch import stager  # noqa: F401  (a Stager on a local store)
from tests.test_storage import moto_url  # noqa: F401  (the S3 endpoint fixture)
from tests.waiting import wait_until
from tests.workflow_runs import run_histories
from workers.schedules import FILE_EXPIRY_SCHEDULE

MAX_FILE = 4 * 1024 * 1024
FILE_EXPIRY = 5.0


@dataclass
class S3Stack:
    settings: Settings
    url: str
    token: str
    engine: Engine
    s3_url: str

    def client(self) -> httpx.Client:
        return httpx.Client(
            base_url=self.url, headers={"Authorization": f"Bearer {self.token}"}, timeout=90
        )

    def s3(self) -> Minio:
        return Minio(self.settings.s3_endpoint, "testing", "testing", secure=False)

    def keys(self, prefix: str) -> list[str]:
        objects = self.s3().list_objects(self.settings.s3_bucket, prefix, recursive=True)
        return [str(o.object_name) for o in objects]

    def wait_for(self, prediction_id: str) -> dict[str, Any]:
        """Poll a prediction until it ends; fail when it does not in time."""
        with self.client() as api:

            def fetch() -> dict[str, Any]:
                body: dict[str, Any] = api.get(f"/v1/predictions/{prediction_id}").json()
                return body

            return wait_until(
                fetch,
                lambda p: p["status"] in TERMINAL,
                what=f"prediction {prediction_id} to end",
            )


@pytest.fixture(scope="module")
def s3stack(tmp_path_factory: pytest.TempPathFactory, moto_url: str) -> Iterator[S3Stack]:  # noqa: F811
    data_dir = tmp_path_factory.mktemp("files-s3")
    with suite_database() as database:
        settings = stack_settings(
            data_dir,
            storage="s3",
            s3_endpoint=moto_url.removeprefix("http://"),
            s3_bucket=f"lifecycle-{os.urandom(4).hex()}",
            s3_access_key="testing",
            s3_secret_key="testing",
            # Clients reach the store here; presigned URLs are signed for this host.
            s3_public_url=moto_url,
            max_file_size=MAX_FILE,
            file_expiry=FILE_EXPIRY,
            file_sweep_interval=1.0,
            # A test here changes a model's hardware behind the API's back (as an operator
            # would): the API looks it up on every create rather than within its lookup TTL.
            lookup_cache_ttl=0,
            **database,
        )
        stack = Stack(settings, ui=False, log_dir=data_dir / "logs")
        try:
            with schemas_derived_once():
                token = stack.start()
            engine = make_engine(settings.resolved_database_url)
            yield S3Stack(settings, settings.resolved_public_url, token, engine, moto_url)
            engine.dispose()
        finally:
            stack.stop()


def noise_png(side: int) -> bytes:
    """A PNG that does not compress: about 3 bytes per pixel."""
    buf = io.BytesIO()
    Image.frombytes("RGB", (side, side), os.urandom(side * side * 3)).save(buf, format="PNG")
    return buf.getvalue()


def data_uri(data: bytes) -> str:
    return "data:image/png;base64," + base64.b64encode(data).decode()


def started_input_size(settings: Settings, prediction_id: str) -> int:
    """Bytes of the workflow's input as Temporal holds it (its first history event)."""

    async def size() -> int:
        client = await connect(settings)
        first = (await run_histories(client, f"prediction-{prediction_id}"))[0]
        started = first.events[0].workflow_execution_started_event_attributes
        return sum(len(p.data) for p in started.input.payloads)

    return asyncio.run(size())


def test_a_3mb_data_uri_input_is_stored_and_never_crosses_temporal(s3stack: S3Stack) -> None:
    image = noise_png(1024)
    assert len(image) > 3 * 1024 * 1024
    uri = data_uri(image)
    with s3stack.client() as api:
        response = api.post(
            "/v1/models/replicant/thumbnail/predictions",
            json={"input": {"image": uri, "width": 32}},
            headers={"Prefer": "wait"},
        )
    assert response.status_code == 201, response.text
    prediction = s3stack.wait_for(response.json()["id"])
    assert prediction["status"] == "succeeded", prediction["error"]
    # The prediction shows the input as it was sent...
    assert prediction["input"]["image"] == uri
    # ...while the workflow's input carried a reference to the stored bytes.
    assert started_input_size(s3stack.settings, prediction["id"]) < 10_000
    inputs = s3stack.keys(f"predictions/{prediction['id']}/inputs/")
    assert [key.rsplit("/", 1)[-1] for key in inputs] == ["file.png"]
    output = httpx.get(prediction["output"], timeout=30)
    assert output.status_code == 200
    with Image.open(io.BytesIO(output.content)) as thumb:
        assert thumb.size == (32, 32)


def test_a_data_uri_over_the_size_limit_is_refused_naming_the_field(s3stack: S3Stack) -> None:
    too_big = b"\x89PNG" + b"\0" * MAX_FILE
    with s3stack.client() as api:
        before = api.get("/v1/predictions").json()["results"]
        response = api.post(
            "/v1/models/replicant/thumbnail/predictions",
            json={"input": {"image": data_uri(too_big)}},
        )
        assert response.status_code == 422
        assert response.headers["content-type"] == "application/problem+json"
        (field,) = response.json()["invalid_fields"]
        assert field["field"] == "image"
        assert str(MAX_FILE) in field["message"]
        assert api.get("/v1/predictions").json()["results"] == before


def test_output_urls_are_presigned_urls_of_the_s3_store(s3stack: S3Stack) -> None:
    with s3stack.client() as api:
        response = api.post(
            "/v1/models/replicant/thumbnail/predictions",
            json={"input": {"image": data_uri(noise_png(40)), "width": 10}},
            headers={"Prefer": "wait"},
        )
    prediction = s3stack.wait_for(response.json()["id"])
    assert prediction["status"] == "succeeded", prediction["error"]
    url = prediction["output"]
    bucket = s3stack.settings.s3_bucket
    assert url.startswith(f"{s3stack.s3_url}/{bucket}/predictions/{prediction['id']}/outputs/")
    query = parse_qs(urlsplit(url).query)
    assert query["X-Amz-Algorithm"] == ["AWS4-HMAC-SHA256"]
    assert 3500 <= int(query["X-Amz-Expires"][0]) <= 3600  # an hour, as the API's own URLs
    download = httpx.get(url, timeout=30)  # no API token: the signature is the credential
    assert download.status_code == 200
    with Image.open(io.BytesIO(download.content)) as thumb:
        assert thumb.size == (10, 10)


def test_expired_uploads_are_removed_by_the_scheduled_sweep(s3stack: S3Stack) -> None:
    with s3stack.client() as api:
        ids = [
            api.post("/v1/files", files={"content": (f"{n}.txt", b"bytes", "text/plain")}).json()[
                "id"
            ]
            for n in ("expiring", "kept")
        ]
    expiring, kept = ids
    with Session(s3stack.engine) as session:
        keys = {
            row.id: row.object_key
            for row in session.exec(select(StoredFile).where(col(StoredFile.id).in_(ids)))
        }
    # One file gets a long life; the other expires FILE_EXPIRY seconds after its upload.
    with s3stack.engine.begin() as conn:
        conn.execute(
            update(StoredFile)
            .where(col(StoredFile.id) == kept)
            .values(expires_at=utcnow().replace(year=utcnow().year + 1))
        )
    assert s3stack.keys(keys[expiring]) == [keys[expiring]]

    def expired() -> bool:
        with Session(s3stack.engine) as session:
            return session.get(StoredFile, expiring) is None

    wait_until(expired, what=f"file {expiring} to expire", interval=0.2)
    with Session(s3stack.engine) as session:
        assert session.get(StoredFile, expiring) is None
        assert session.get(StoredFile, kept) is not None
    assert s3stack.keys(keys[expiring]) == []
    assert s3stack.keys(keys[kept]) == [keys[kept]]

    async def schedule_interval() -> float:
        client = await connect(s3stack.settings)
        described = await client.get_schedule_handle(FILE_EXPIRY_SCHEDULE).describe()
        (interval,) = described.schedule.spec.intervals
        return interval.every.total_seconds()

    assert asyncio.run(schedule_interval()) == 1.0


def test_a_model_on_hardware_no_longer_offered_is_refused(s3stack: S3Stack) -> None:
    def set_hardware(sku: str) -> None:
        with s3stack.engine.begin() as conn:
            conn.execute(
                update(Model)
                .where(col(Model.owner) == "replicate")
                .where(col(Model.name) == "hello-world")
                .values(hardware=sku)
            )

    def count() -> int:
        with Session(s3stack.engine) as session:
            return len(session.exec(select(Prediction.id)).all())

    set_hardware("gpu-h100")  # once offered, then removed from REPLICANT_HARDWARE
    try:
        before = count()
        with s3stack.client() as api:
            response = api.post(
                "/v1/models/replicate/hello-world/predictions", json={"input": {"text": "x"}}
            )
        assert response.status_code == 503
        assert response.headers["content-type"] == "application/problem+json"
        detail = response.json()["detail"]
        assert "'gpu-h100'" in detail and "replicate/hello-world" in detail
        assert count() == before  # nothing recorded, nothing queued
    finally:
        set_hardware("cpu")
    with s3stack.client() as api:
        response = api.post(
            "/v1/models/replicate/hello-world/predictions",
            json={"input": {"text": "x"}},
            headers={"Prefer": "wait"},
        )
    assert response.json()["status"] == "succeeded"


async def test_stage_inputs_keeps_the_files_stored_at_create_and_stages_the_rest(
    stager: Stager,  # noqa: F811
) -> None:
    store = stager.store
    key = "predictions/p1/inputs/data-0/file.png"
    upload = store.new_upload()
    upload.write(b"stored by the API")
    store.commit(upload, key, "image/png")
    req = PredictionRequest(
        id="p1",
        owner="alice",
        model="alice/m",
        version="v1",
        input={"image": key, "extra": ["data:,x"]},
        staged_files=[StagedFile(path=["image"], key=key, filename="file.png")],
    )
    staged = await stager.stage(req)
    assert [(f.path, f.key) for f in staged.files] == [
        (["image"], key),
        (["extra", 0], "predictions/p1/inputs/0/file.txt"),
    ]
    ready = req.model_copy(update={"staged_files": staged.files})
    async with materialized_input(store, ready) as model_input:
        assert Path(model_input["image"]).read_bytes() == b"stored by the API"
        assert Path(model_input["extra"][0]).read_bytes() == b"x"
