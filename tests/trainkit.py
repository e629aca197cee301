"""Training helpers shared by the tests that need a fine-tune of ``replicant/ngram``: corpora
made of words ngram's bundled corpus lacks, a server for big corpora, the official client,
and ``finetune`` (train a destination, return the new version's ``owner/name:id``).
"""

from __future__ import annotations

import base64
import http.server
import random
import threading
from typing import Any

import replicate
from replicate.training import Training

from tests.conftest import TERMINAL, LiveStack
from tests.waiting import wait_until


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
    """Serves generated corpora over HTTP (too big to travel inside a request). A ``held``
    server keeps every request waiting until ``release()``: a training fetching its corpus
    from it stays unfinished until then."""

    def __init__(self, held: bool = False) -> None:
        self.files: dict[str, bytes] = {}
        self.released = threading.Event()
        if not held:
            self.released.set()
        files, released = self.files, self.released

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                if not released.wait(timeout=120):
                    self.send_error(503, "never released")
                    return
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

    def release(self) -> None:
        self.released.set()

    def close(self) -> None:
        self.released.set()
        self.server.shutdown()
        self.server.server_close()


def client_for(live: LiveStack, token: str) -> replicate.Client:
    return replicate.Client(api_token=token, base_url=live.url)


def ngram_version(live: LiveStack) -> str:
    with live.client() as api:
        version: str = api.get("/v1/models/replicant/ngram").json()["latest_version"]["id"]
    return version


def wait_training(training: Training, until: Any = None, timeout: float = 180) -> Training:
    """Poll with ``reload()`` until ``until`` holds (terminal by default); fail when it never
    does."""
    check = until or (lambda t: t.status in TERMINAL)

    def reloaded() -> Training:
        training.reload()
        return training

    if not check(training):
        wait_until(
            reloaded,
            check,
            what=f"training {training.id} to reach the awaited state",
            timeout=timeout,
            interval=0.2,
        )
    return training


def versions_of(live: LiveStack, token: str, model: str) -> list[str]:
    with live.client(token) as api:
        return [v["id"] for v in api.get(f"/v1/models/{model}/versions").json()["results"]]


def new_destination(live: LiveStack, token: str, name: str) -> str:
    """A private model of the token's account to push fine-tunes to; its ``owner/name``."""
    with live.client(token) as api:
        username = api.get("/v1/account").json()["username"]
        created = api.post(
            "/v1/models", json={"owner": username, "name": name, "visibility": "private"}
        )
        assert created.status_code == 201, created.text
    return f"{username}/{name}"


def train(live: LiveStack, token: str, destination: str, text: str) -> Training:
    """Train ``replicant/ngram`` on ``text`` into ``destination``; the succeeded training."""
    client = client_for(live, token)
    training = client.trainings.create(
        model="replicant/ngram",
        version=ngram_version(live),
        input={"text": data_uri(text)},
        destination=destination,
    )
    wait_training(training)
    assert training.status == "succeeded", (training.error, training.logs)
    return training


def finetune(live: LiveStack, token: str, destination: str, text: str) -> str:
    """Train ``replicant/ngram`` on ``text`` into ``destination``; the new version's ref."""
    ref: str = train(live, token, destination, text).output["version"]
    return ref
