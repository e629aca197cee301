"""The mixed load of ``bench/load/run.py``: closed-loop clients (each sends its next request
when its last is answered), each doing, by weight, one of: a sync create (``Prefer: wait=50``,
so that an expired wait is an answer within the 60 s client timeout),
an async create then polling it to its end, a get, a filtered list, a create then its cancel,
a streaming create followed over SSE, a file upload, a create with a webhook to the run's
receiver. A 503 counts as a failure (the admission bound sits above what the clients need).

Configured by the environment that ``run.py`` sets: ``LOAD_TOKEN``, ``LOAD_WEBHOOK``,
``LOAD_IDS`` (the file that gets every created prediction's id at the end).
"""

from __future__ import annotations

import os
import random
import time
from pathlib import Path
from typing import Any

from locust import FastHttpUser, constant, events, task
from locust.env import Environment

HELLO = "replicate/hello-world"
SLEEP = "replicant/sleep"
STREAMING = "replicant/ngram"
TERMINAL = {"succeeded", "failed", "canceled", "aborted"}
TIMEOUT = 60.0  # the client's timeout, as the goal states it
CREATED: list[str] = []


@events.test_stop.add_listener
def _write_ids(environment: Environment, **_: Any) -> None:
    Path(os.environ["LOAD_IDS"]).write_text("\n".join(CREATED) + "\n")


class Client(FastHttpUser):
    wait_time = constant(0)
    network_timeout = TIMEOUT
    connection_timeout = TIMEOUT

    def on_start(self) -> None:
        self.headers = {"Authorization": f"Bearer {os.environ['LOAD_TOKEN']}"}
        self.mine: list[str] = []

    def _create(self, model: str, body: dict[str, Any], name: str, **headers: str) -> Any:
        with self.client.post(
            f"/v1/models/{model}/predictions",
            json=body,
            headers={**self.headers, **headers},
            name=name,
            catch_response=True,
        ) as answer:
            if answer.status_code not in (200, 201):
                answer.failure(f"{answer.status_code}: {(answer.text or '')[:200]}")
                return None
            created = answer.json()
            CREATED.append(created["id"])
            self.mine = (self.mine + [created["id"]])[-20:]
            return created

    @task(3)
    def sync_create(self) -> None:
        created = self._create(
            HELLO, {"input": {"text": "load"}}, "create (Prefer: wait)", Prefer="wait=50"
        )
        if created is not None and created["status"] != "succeeded":
            self._poll(created["id"])

    @task(2)
    def async_create_and_poll(self) -> None:
        created = self._create(HELLO, {"input": {"text": "poll"}}, "create (async)")
        if created is not None:
            self._poll(created["id"])

    def _poll(self, prediction_id: str) -> None:
        deadline = time.monotonic() + TIMEOUT
        while time.monotonic() < deadline:
            answer = self.client.get(
                f"/v1/predictions/{prediction_id}", headers=self.headers, name="poll"
            )
            if answer.status_code != 200 or answer.json()["status"] in TERMINAL:
                return
            time.sleep(0.1)

    @task(4)
    def get(self) -> None:
        if self.mine:
            self.client.get(
                f"/v1/predictions/{random.choice(self.mine)}", headers=self.headers, name="get"
            )

    @task(2)
    def list_filtered(self) -> None:
        status = random.choice(["succeeded", "canceled", "starting"])
        self.client.get(
            f"/v1/predictions?status={status}&model={HELLO}",
            headers=self.headers,
            name="list (filtered)",
        )

    @task(1)
    def cancel(self) -> None:
        created = self._create(SLEEP, {"input": {"seconds": 30}}, "create (to cancel)")
        if created is not None:
            self.client.post(
                f"/v1/predictions/{created['id']}/cancel", headers=self.headers, name="cancel"
            )

    @task(1)
    def stream(self) -> None:
        created = self._create(
            STREAMING, {"input": {"prompt": "the", "max_tokens": 8}}, "create (to stream)"
        )
        if created is None:
            return
        started = time.perf_counter()
        error: Exception | None = None
        length = 0
        try:
            answer = self.client.get(
                created["urls"]["stream"],
                headers={"Accept": "text/event-stream"},
                stream=True,
                name="stream",
            )
            if answer.status_code != 200:
                raise RuntimeError(f"stream answered {answer.status_code}")
            text = "".join(
                c if isinstance(c, str) else c.decode() for c in answer.iter_content(1024)
            )
            length = len(text)
            if "event: done" not in text:
                raise RuntimeError("the stream ended without its done event")
        except Exception as err:  # every failure is reported, by kind
            error = err
        events.request.fire(
            request_type="SSE",
            name="stream (to its end)",
            response_time=(time.perf_counter() - started) * 1000,
            response_length=length,
            exception=error,
            context={},
        )

    @task(1)
    def upload(self) -> None:
        boundary = os.urandom(8).hex()
        body = (
            (
                f'--{boundary}\r\nContent-Disposition: form-data; name="content"; '
                'filename="load.bin"\r\nContent-Type: application/octet-stream\r\n\r\n'
            ).encode()
            + os.urandom(1024)
            + f"\r\n--{boundary}--\r\n".encode()
        )
        content_type = f"multipart/form-data; boundary={boundary}"
        self.client.post(
            "/v1/files",
            data=body,
            headers={**self.headers, "Content-Type": content_type},
            name="upload",
        )

    @task(1)
    def webhook(self) -> None:
        body = {
            "input": {"text": "hook"},
            "webhook": os.environ["LOAD_WEBHOOK"],
            "webhook_events_filter": ["completed"],
        }
        self._create(HELLO, body, "create (webhook)")
