"""Trainings end to end with the official Python client: ``replicant/ngram`` is fine-tuned on
a corpus, the result is a new version of the destination model, and that version generates
text drawn from the corpus. Refusals, cancel and a killed worker are checked on the way.
"""

from __future__ import annotations

import base64
import http.server
import io
import random
import signal
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import replicate
from replicate.exceptions import ReplicateError
from replicate.training import Training

from replicant.archives import pack_model
from tests.conftest import TERMINAL, LiveStack
from tests.receiver import running_receiver

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"


def corpus(seed: int, words: int, vocabulary: int = 40) -> str:
    """Text made of words that appear nowhere in ngram's bundled corpus."""
    rng = random.Random(seed)
    vocab = [f"zq{seed}w{i}" for i in range(vocabulary)]
    sentences = []
    for _ in range(max(1, words // 8)):
        sentences.append(" ".join(rng.choice(vocab) for _ in range(8)) + ".")
    return " ".join(sentences)


def data_uri(text: str) -> str:
    return "data:text/plain;base64," + base64.b64encode(text.encode()).decode()


class CorpusServer:
    """Serves generated corpora over HTTP (too big to travel inside a request)."""

    def __init__(self) -> None:
        self.files: dict[str, bytes] = {}
        files = self.files

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                body = files.get(self.path)
                if body is None:
                    self.send_error(404)
                    return
                self.send_response(200)
                self.send_header("Content-Type", "text/plain")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: Any) -> None:
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def add(self, name: str, text: str) -> str:
        self.files[f"/{name}"] = text.encode()
        return f"http://127.0.0.1:{self.server.server_address[1]}/{name}"

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


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


def client_for(live: LiveStack, token: str) -> replicate.Client:
    return replicate.Client(api_token=token, base_url=live.url)


def ngram_version(live: LiveStack) -> str:
    with live.client() as api:
        version: str = api.get("/v1/models/replicant/ngram").json()["latest_version"]["id"]
    return version


def wait_training(training: Training, until: Any = None, timeout: float = 180) -> Training:
    """Poll with ``reload()`` until ``until`` holds (terminal by default)."""
    check = until or (lambda t: t.status in TERMINAL)
    deadline = time.monotonic() + timeout
    while not check(training) and time.monotonic() < deadline:
        time.sleep(0.2)
        training.reload()
    return training


def versions_of(live: LiveStack, token: str, model: str) -> list[str]:
    with live.client(token) as api:
        return [v["id"] for v in api.get(f"/v1/models/{model}/versions").json()["results"]]


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
