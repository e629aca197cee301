"""A local webhook receiver for tests and benchmarks: records every request it gets.

``answers`` scripts its replies: each request pops the next (status, delay) and, once the
script is empty, answers ``default``. ``refusing_receiver`` starts refusing connections and
comes back when told.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from tests.waiting import wait_until


@dataclass
class Delivery:
    path: str
    headers: dict[str, str]
    body: bytes
    received_at: float
    answered: int
    received_wall: float = 0.0

    def json(self) -> Any:
        import json

        return json.loads(self.body)


@dataclass
class Receiver:
    url: str
    deliveries: list[Delivery] = field(default_factory=list)
    answers: list[tuple[int, float]] = field(default_factory=list)
    default: int = 200
    lock: threading.Lock = field(default_factory=threading.Lock)

    def for_prediction(self, prediction_id: str) -> list[Delivery]:
        with self.lock:
            return [d for d in self.deliveries if d.json().get("id") == prediction_id]

    def wait(
        self, until: Callable[[list[Delivery]], bool], prediction_id: str, timeout: float = 60
    ) -> list[Delivery]:
        """Poll the deliveries of one prediction until ``until`` holds; fail when it never does."""
        return wait_until(
            lambda: self.for_prediction(prediction_id),
            until,
            what=f"the awaited webhook deliveries of {prediction_id}",
            timeout=timeout,
            interval=0.05,
        )


def _server(receiver: Receiver, port: int) -> ThreadingHTTPServer:
    """An HTTP server that records into ``receiver``; bound to ``port``, not yet listening."""

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:  # noqa: N802 (http.server's naming)
            body = self.rfile.read(int(self.headers.get("content-length", 0)))
            with receiver.lock:
                status, delay = (
                    receiver.answers.pop(0)
                    if receiver.answers
                    else (
                        receiver.default,
                        0.0,
                    )
                )
            if delay:
                time.sleep(delay)
            with receiver.lock:
                receiver.deliveries.append(
                    Delivery(
                        self.path, dict(self.headers), body, time.monotonic(), status, time.time()
                    )
                )
            self.send_response(status)
            if 300 <= status < 400:
                self.send_header("Location", receiver.url + "redirected")
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, format: str, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", port), Handler, bind_and_activate=False)
    server.daemon_threads = True
    try:
        server.server_bind()
    except OSError:
        server.server_close()
        raise
    receiver.url = f"http://127.0.0.1:{server.server_address[1]}/hook/"
    return server


@contextmanager
def _serving(server: ThreadingHTTPServer) -> Iterator[Callable[[], None]]:
    """Yields ``listen``, which makes the bound ``server`` accept and answer connections."""
    thread = threading.Thread(target=server.serve_forever, daemon=True)

    def listen() -> None:
        server.server_activate()
        thread.start()

    try:
        yield listen
    finally:
        if thread.is_alive():
            server.shutdown()
        server.server_close()


@contextmanager
def running_receiver(port: int = 0) -> Iterator[Receiver]:
    """A receiver on ``port`` (a free one by default)."""
    receiver = Receiver(url="")
    with _serving(_server(receiver, port)) as listen:
        listen()
        yield receiver


@contextmanager
def refusing_receiver() -> Iterator[tuple[Receiver, Callable[[], None]]]:
    """A receiver that refuses every connection (its port is bound, so no other process can
    take it, but nothing listens) until the yielded ``come_back`` is called."""
    receiver = Receiver(url="")
    with _serving(_server(receiver, 0)) as listen:
        yield receiver, listen
