"""Trainings end to end with the official Python client: ``replicant/ngram`` is fine-tuned on
a corpus, the result is a new version of the destination model, and that version generates
text drawn from the corpus. Refusals, cancel and a killed worker are checked on the way.
"""

from __future__ import annotations

import io
import signal
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from replicate.exceptions import ReplicateError

from replicant.archives import pack_model
from replicant.storage import LocalStore, open_store
from replicant.usage import run_cost
from tests.conftest import PRICES, TERMINAL, LiveStack
from tests.receiver import running_receiver
from tests.trainkit import (
    CorpusServer,
    client_for,
    corpus,
    data_uri,
    new_destination,
    ngram_version,
    train,
    versions_of,
    wait_training,
)

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"


@pytest.fixture(scope="module")
def corpora() -> Iterator[CorpusServer]:
    server = CorpusServer()
    yield server
    server.close()


@pytest.fixture(scope="module")
def owner(live: LiveStack) -> tuple[str, str]:
    """A fresh account (username, token) with a private destination model."""
    token = live.new_account("trainer")
    with live.client(token) as api:
        username = api.get("/v1/account").json()["username"]
        created = api.post(
            "/v1/models", json={"owner": username, "name": "tuned", "visibility": "private"}
        )
        assert created.status_code == 201, created.text
    return username, token


def test_training_pushes_a_version_that_generates_from_the_corpus(
    live: LiveStack, owner: tuple[str, str]
) -> None:
    username, token = owner
    client = client_for(live, token)
    base = ngram_version(live)
    text = corpus(1, 400)
    training = client.trainings.create(
        model="replicant/ngram",
        version=base,
        input={"text": data_uri(text), "order": 2},
        destination=f"{username}/tuned",
    )
    assert training.status == "starting"
    assert training.model == "replicant/ngram" and training.version == base
    training = wait_training(training)
    assert training.status == "succeeded", (training.error, training.logs)
    assert "read" in (training.logs or "") and "wrote" in (training.logs or "")
    assert training.completed_at and training.started_at
    assert training.destination == f"{username}/tuned"
    ref = training.output["version"]
    assert ref.startswith(f"{username}/tuned:")
    version_id = ref.partition(":")[2]

    # The weights URL works without a token and holds the trained model.
    weights = httpx.get(training.output["weights"], timeout=30)
    assert weights.status_code == 200
    assert weights.json()["format"] == "replicant-ngram"

    with live.client(token) as api:
        model = api.get(f"/v1/models/{username}/tuned").json()
        assert model["latest_version"]["id"] == version_id
        listed = api.get("/v1/trainings").json()["results"]
        assert training.id in [t["id"] for t in listed]
    with live.client() as api:
        schema = api.get(f"/v1/models/replicant/ngram/versions/{base}").json()["openapi_schema"]
    assert model["latest_version"]["openapi_schema"] == schema

    output = client.run(ref, input={"max_tokens": 40, "seed": 7})
    words = "".join(output).split()
    assert len(words) == 40
    assert set(words) <= set(text.split())
    # Its first prediction ran in the base version's standby process, which the training's
    # worker started when the training ended: no process boot of its own.
    assert live.stack.log_dir is not None
    log = (live.stack.log_dir / "worker.log").read_text()
    assert f"event=standby_adopted key={version_id}+weights" in log


def test_two_trainings_to_one_destination_make_two_versions(
    live: LiveStack, owner: tuple[str, str]
) -> None:
    username, token = owner
    client = client_for(live, token)
    base = ngram_version(live)
    before = set(versions_of(live, token, f"{username}/tuned"))
    texts = [corpus(2, 200), corpus(3, 200)]
    with running_receiver() as receiver:
        trainings = [
            client.trainings.create(
                model="replicant/ngram",
                version=base,
                input={"text": data_uri(text)},
                destination=f"{username}/tuned",
                webhook=receiver.url,
                webhook_events_filter=["completed"],
            )
            for text in texts
        ]
        refs = []
        for training in trainings:
            wait_training(training)
            assert training.status == "succeeded", training.error
            refs.append(training.output["version"])
            # The `completed` webhook carries the training as GET answers it.
            delivered = receiver.wait(bool, training.id)
            assert len(delivered) == 1
            body = delivered[0].json()
            assert body["status"] == "succeeded"
            assert body["output"]["version"] == training.output["version"]
            assert body["output"]["weights"]
            # It names the hardware that ran it and what that cost (docs/usage.md).
            assert body["hardware"] == "cpu"
            assert body["metrics"]["cost"] == run_cost(
                PRICES, "cpu", body["metrics"]["predict_time"]
            )
            assert delivered[0].headers["webhook-id"] == f"msg_{training.id}_completed_0"
    assert refs[0] != refs[1]
    after = set(versions_of(live, token, f"{username}/tuned"))
    assert after - before == {ref.partition(":")[2] for ref in refs}
    for ref, text in zip(refs, texts, strict=True):
        words = "".join(client.run(ref, input={"max_tokens": 20, "seed": 1})).split()
        assert set(words) <= set(text.split())


def test_refusals_happen_before_anything_runs(live: LiveStack, owner: tuple[str, str]) -> None:
    username, token = owner
    client = client_for(live, token)
    base = ngram_version(live)
    text = data_uri(corpus(4, 50))
    with live.client(token) as api:
        count = len(api.get("/v1/trainings").json()["results"])

    def refused(**kwargs: Any) -> ReplicateError:
        with pytest.raises(ReplicateError) as caught:
            client.trainings.create(**kwargs)
        return caught.value

    # Someone else's model (public: its existence is no secret) -> 403.
    err = refused(
        model="replicant/ngram", version=base, input={"text": text}, destination="replicant/ngram"
    )
    assert err.status == 403 and "replicant/ngram" in (err.detail or "")
    # A destination that does not exist -> 404.
    err = refused(
        model="replicant/ngram",
        version=base,
        input={"text": text},
        destination=f"{username}/missing",
    )
    assert err.status == 404 and "create it first" in (err.detail or "")
    # Another account's private model is as good as missing -> 404.
    other = live.new_account("other")
    with live.client(other) as api:
        other_name = api.get("/v1/account").json()["username"]
        api.post("/v1/models", json={"owner": other_name, "name": "p", "visibility": "private"})
    err = refused(
        model="replicant/ngram", version=base, input={"text": text}, destination=f"{other_name}/p"
    )
    assert err.status == 404
    # A version without train() -> 422.
    with live.client() as api:
        hello = api.get("/v1/models/replicate/hello-world").json()["latest_version"]["id"]
    err = refused(
        model="replicate/hello-world",
        version=hello,
        input={"text": "x"},
        destination=f"{username}/tuned",
    )
    assert err.status == 422 and "cannot be trained" in (err.detail or "")
    # Invalid input -> 422 naming the fields.
    with live.client(token) as api:
        response = api.post(
            f"/v1/models/replicant/ngram/versions/{base}/trainings",
            json={"destination": f"{username}/tuned", "input": {"order": 9}},
        )
        assert response.status_code == 422
        fields = {f["field"] for f in response.json()["invalid_fields"]}
        assert fields == {"text", "order"}
        assert response.headers["content-type"].startswith("application/problem+json")
        # Nothing was recorded for any of them.
        assert len(api.get("/v1/trainings").json()["results"]) == count


def test_trainings_are_private_to_their_creator(live: LiveStack, owner: tuple[str, str]) -> None:
    username, token = owner
    with live.client(token) as api:
        ids = [t["id"] for t in api.get("/v1/trainings").json()["results"]]
    assert ids
    stranger = live.new_account("stranger")
    with live.client(stranger) as api:
        assert api.get(f"/v1/trainings/{ids[0]}").status_code == 404
        assert api.post(f"/v1/trainings/{ids[0]}/cancel").status_code == 404
        assert api.get("/v1/trainings").json()["results"] == []


def test_cancel_mid_training_leaves_no_version(
    live: LiveStack, owner: tuple[str, str], corpora: CorpusServer
) -> None:
    username, token = owner
    client = client_for(live, token)
    before = versions_of(live, token, f"{username}/tuned")
    # A million words with order 4 keep train() busy well beyond the cancel.
    url = corpora.add("big.txt", corpus(5, 1_000_000, vocabulary=30))
    training = client.trainings.create(
        model="replicant/ngram",
        version=ngram_version(live),
        input={"text": url, "order": 4},
        destination=f"{username}/tuned",
    )
    wait_training(training, until=lambda t: "read" in (t.logs or "") or t.status in TERMINAL)
    assert training.status == "processing", training.error
    training.cancel()
    wait_training(training)
    assert training.status == "canceled"
    assert training.output is None
    assert versions_of(live, token, f"{username}/tuned") == before


def test_worker_killed_mid_training_ends_truthfully(
    live: LiveStack, owner: tuple[str, str], corpora: CorpusServer
) -> None:
    username, token = owner
    client = client_for(live, token)
    before = set(versions_of(live, token, f"{username}/tuned"))
    text = corpus(6, 200_000, vocabulary=30)
    url = corpora.add("medium.txt", text)
    training = client.trainings.create(
        model="replicant/ngram",
        version=ngram_version(live),
        input={"text": url, "order": 3},
        destination=f"{username}/tuned",
    )
    wait_training(training, until=lambda t: "read" in (t.logs or "") or t.status in TERMINAL)
    assert training.status == "processing", training.error
    live.stack.stop("worker", sig=signal.SIGKILL)
    try:
        training.reload()
        assert training.status == "processing"
    finally:
        live.stack.start_worker()
    # The heartbeat stops, the run is retried on the new worker and completes.
    wait_training(training, timeout=300)
    assert training.status == "succeeded", training.error
    version_id = training.output["version"].partition(":")[2]
    assert set(versions_of(live, token, f"{username}/tuned")) - before == {version_id}
    words = "".join(client.run(training.output["version"], input={"max_tokens": 10})).split()
    assert set(words) <= set(text.split())


def test_base_version_of_a_finetune_cannot_be_deleted(
    live: LiveStack, owner: tuple[str, str]
) -> None:
    username, token = owner
    buffer = io.BytesIO()
    pack_model(EXAMPLES / "ngram", buffer)
    headers = {"Authorization": f"Bearer {token}", "Content-Type": "application/gzip"}
    pushed = httpx.post(
        f"{live.url}/v1/models/{username}/mybase/versions",
        params={"create": "true", "visibility": "private", "hardware": "gpu-t4"},
        content=buffer.getvalue(),
        headers=headers,
        timeout=300,
    )
    assert pushed.status_code == 201, pushed.text
    base = pushed.json()["id"]
    client = client_for(live, token)
    training = client.trainings.create(
        model=f"{username}/mybase",
        version=base,
        input={"text": data_uri(corpus(7, 100))},
        destination=f"{username}/tuned",
    )
    wait_training(training)
    assert training.status == "succeeded", training.error
    finetune = training.output["version"].partition(":")[2]
    # The fine-tune runs on its base model's hardware (gpu-t4), not on the destination's.
    prediction = client.predictions.create(version=finetune, input={"max_tokens": 2})
    with live.engine.connect() as conn:
        from sqlalchemy import text as sql

        hardware = conn.execute(
            sql("SELECT hardware FROM prediction WHERE id = :id"), {"id": prediction.id}
        ).scalar_one()
    assert hardware == "gpu-t4"
    prediction.wait()
    assert prediction.status == "succeeded"
    with live.client(token) as api:
        refused = api.delete(f"/v1/models/{username}/mybase/versions/{base}")
        assert refused.status_code == 409
        assert "fine-tune" in refused.json()["detail"]


def test_uploaded_file_input_is_staged_and_webhooks_report_start_and_logs(
    live: LiveStack, owner: tuple[str, str], tmp_path: Path
) -> None:
    """An open file handed to ``trainings.create`` is uploaded by the client (a ``/v1/files``
    URL that needs a token): the training stages it and the trainer reads it. Its webhook
    gets ``start``, throttled ``logs`` and ``completed``; a filter keeps to what it names."""
    username, token = owner
    client = client_for(live, token)
    base = ngram_version(live)
    texts = [corpus(8, 300), corpus(9, 300)]
    paths = []
    for index, text in enumerate(texts):
        paths.append(tmp_path / f"corpus-{index}.txt")
        paths[-1].write_text(text)
    with running_receiver() as receiver, paths[0].open("rb") as f0, paths[1].open("rb") as f1:
        everything = client.trainings.create(
            model="replicant/ngram",
            version=base,
            input={"text": f0},
            destination=f"{username}/tuned",
            webhook=receiver.url,
        )
        filtered = client.trainings.create(
            model="replicant/ngram",
            version=base,
            input={"text": f1},
            destination=f"{username}/tuned",
            webhook=receiver.url,
            webhook_events_filter=["start", "completed"],
        )
        for training, text in ((everything, texts[0]), (filtered, texts[1])):
            assert training.input["text"].startswith(f"{live.url}/v1/files/")
            wait_training(training)
            assert training.status == "succeeded", (training.error, training.logs)
            assert f"read {len(text)} characters" in (training.logs or "")
            words = "".join(client.run(training.output["version"], input={"max_tokens": 20}))
            assert set(words.split()) <= set(text.split())

        def events(training_id: str) -> list[str]:
            found = receiver.wait(
                lambda ds: any(d.headers["webhook-id"].endswith("_completed_0") for d in ds),
                training_id,
            )
            return [d.headers["webhook-id"].split("_")[2] for d in found]

        seen = events(everything.id)
        assert seen[0] == "start" and seen[-1] == "completed", seen
        assert "logs" in seen and seen.count("start") == 1 and seen.count("completed") == 1
        assert set(seen) == {"start", "logs", "completed"}
        start = receiver.for_prediction(everything.id)[0].json()
        assert start["status"] == "processing" and start["started_at"]
        logged = [d.json() for d in receiver.for_prediction(everything.id)]
        assert any("read" in body["logs"] for body in logged if body["status"] == "processing")
        assert events(filtered.id) == ["start", "completed"]

    # The staged copies of the inputs go once the training has succeeded; the weights stay.
    store = open_store(live.settings)
    assert isinstance(store, LocalStore)
    for training in (everything, filtered):
        kept = store.path(f"trainings/{training.id}/weights.json")
        assert kept.is_file()
        assert [p.name for p in kept.parent.rglob("*") if p.is_file()] == ["weights.json"]


def test_input_file_of_another_account_fails_the_training(
    live: LiveStack, owner: tuple[str, str]
) -> None:
    """An uploaded file is staged only for its owner: another account's file URL fails the
    training with a clear error, and no version is made."""
    username, token = owner
    stranger = client_for(live, live.new_account("lender"))
    upload = stranger.files.create(io.BytesIO(b"private words."), filename="secret.txt")
    before = versions_of(live, token, f"{username}/tuned")
    training = client_for(live, token).trainings.create(
        model="replicant/ngram",
        version=ngram_version(live),
        input={"text": upload.urls["get"]},
        destination=f"{username}/tuned",
    )
    wait_training(training)
    assert training.status == "failed"
    assert "Input file error" in (training.error or "")
    assert "text" in (training.error or "")
    assert versions_of(live, token, f"{username}/tuned") == before


def test_training_web_url_is_a_page_for_its_owner_only(
    live: LiveStack, owner: tuple[str, str]
) -> None:
    username, token = owner
    training = client_for(live, token).trainings.create(
        model="replicant/ngram",
        version=ngram_version(live),
        input={"text": data_uri(corpus(10, 50))},
        destination=f"{username}/tuned",
    )
    web = training.urls["web"]
    assert web == f"{live.url}/t/{training.id}"
    wait_training(training)
    owner_headers = {"Authorization": f"Bearer {token}"}
    page = httpx.get(web, headers=owner_headers)
    assert page.status_code == 200
    assert page.json()["id"] == training.id and page.json()["status"] == "succeeded"
    html = httpx.get(web, headers={**owner_headers, "Accept": "text/html"})
    assert html.status_code == 200 and html.headers["content-type"].startswith("text/html")
    assert training.id in html.text and "succeeded" in html.text
    stranger = {"Authorization": f"Bearer {live.new_account('peeker')}"}
    assert httpx.get(web, headers=stranger).status_code == 404
    assert httpx.get(web).status_code == 401


async def test_large_data_uri_corpus_never_crosses_temporal(
    live: LiveStack, owner: tuple[str, str]
) -> None:
    from replicant.temporal import connect

    _, token = owner
    destination = new_destination(live, token, "big-corpus")
    text = corpus(seed=77, words=400_000)  # ~3.6 MB: beyond Temporal's payload limit
    assert len(text) > 3_000_000
    training = train(live, token, destination, text)
    temporal = await connect(live.settings)
    history = await temporal.get_workflow_handle(f"training-{training.id}").fetch_history()
    started = history.events[0].workflow_execution_started_event_attributes
    assert sum(len(p.data) for p in started.input.payloads) < 10_000
