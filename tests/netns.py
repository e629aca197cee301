"""A second host for tests: a network namespace joined to this one by a veth pair, holding a
public-looking address (one ``replicant.netguard`` treats as public), and an HTTP server in it
on port 80 that answers every request with a redirect and records what it was asked.

It needs root and iproute2 (``ip netns``, veth), as the test machine has. When a namespace
cannot be made, ``remote_host`` raises: the tests that use it fail, never skip. The
namespace, its veth pair and its server are removed on the way out, whatever happened.

Run as a script, this module is that server: ``python tests/netns.py ADDRESS LOCATION HITS``.
"""

from __future__ import annotations

import contextlib
import ipaddress
import os
import random
import socket
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, HTTPServer
from pathlib import Path

# A public block (netguard's `is_public_address` holds for it) that nothing on a test machine
# talks to; each namespace takes a random /30 of it.
PUBLIC_BLOCK = ipaddress.ip_network("11.0.0.0/8")
PREFIX = "rpl-test"


class NamespaceError(RuntimeError):
    """A network namespace for a test could not be made."""


@dataclass
class RemoteHost:
    """The server in the namespace, at ``address`` port 80."""

    address: str
    hits_file: Path

    def url(self, path: str) -> str:
        return f"http://{self.address}{path}"

    def hits(self) -> list[str]:
        """Every request the server got, as ``METHOD path``, in order."""
        if not self.hits_file.exists():
            return []
        return self.hits_file.read_text().splitlines()


def ip(*args: str) -> None:
    done = subprocess.run(["ip", *args], capture_output=True, text=True)
    if done.returncode != 0:
        raise NamespaceError(f"ip {' '.join(args)}: {done.stderr.strip() or done.returncode}")


def _free_subnet() -> ipaddress.IPv4Network:
    """A /30 of ``PUBLIC_BLOCK`` that no route of this host uses yet."""
    routes = subprocess.run(["ip", "-4", "route"], capture_output=True, text=True).stdout
    while True:
        index = random.randrange(PUBLIC_BLOCK.num_addresses // 4)
        subnet = ipaddress.ip_network(f"{PUBLIC_BLOCK.network_address + 4 * index}/30")
        if str(subnet) not in routes:
            return subnet


def remove_stale() -> None:
    """Namespaces left by test processes that were killed before they could clean up."""
    listed = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    for name in (line.split()[0] for line in listed.splitlines() if line.strip()):
        parts = name.split("-")
        ours = name.startswith(f"{PREFIX}-") and len(parts) == 4 and parts[2].isdigit()
        if ours and not Path(f"/proc/{parts[2]}").exists():
            with contextlib.suppress(NamespaceError):
                ip("netns", "delete", name)


def _wait_for_server(address: str, server: subprocess.Popen[bytes]) -> None:
    from tests.waiting import wait_until

    def answers() -> bool:
        if server.poll() is not None:
            raise NamespaceError(f"the server in the namespace exited with {server.returncode}")
        try:
            with socket.create_connection((address, 80), timeout=0.5):
                return True
        except OSError:
            return False

    wait_until(answers, what=f"the namespace's server to listen on {address}:80", timeout=30)


@contextlib.contextmanager
def remote_host(location: str, workdir: Path) -> Iterator[RemoteHost]:
    """A namespace at a public-looking address whose server redirects (302) every request
    to ``location``; it records each request in ``workdir``."""
    if os.geteuid() != 0:
        raise NamespaceError("making a network namespace needs root")
    remove_stale()
    tag = os.urandom(3).hex()
    namespace = f"{PREFIX}-{os.getpid()}-{tag}"
    outside, inside = f"rpl{tag}h", f"rpl{tag}n"
    subnet = _free_subnet()
    gateway, address = (str(a) for a in list(subnet.hosts())[:2])
    hits = workdir / f"{namespace}.hits"
    server: subprocess.Popen[bytes] | None = None
    try:
        ip("netns", "add", namespace)
        ip("link", "add", outside, "type", "veth", "peer", "name", inside)
        ip("link", "set", inside, "netns", namespace)
        ip("addr", "add", f"{gateway}/30", "dev", outside)
        ip("link", "set", outside, "up")
        ip("-n", namespace, "addr", "add", f"{address}/30", "dev", inside)
        ip("-n", namespace, "link", "set", inside, "up")
        ip("-n", namespace, "link", "set", "lo", "up")
        server = subprocess.Popen(
            ["ip", "netns", "exec", namespace, sys.executable, __file__, address, location]
            + [str(hits)]
        )
        _wait_for_server(address, server)
        yield RemoteHost(address, hits)
    finally:
        if server is not None:
            server.kill()
            server.wait()
        # Deleting the namespace deletes the veth end inside it, and with it the pair.
        with contextlib.suppress(NamespaceError):
            ip("link", "delete", outside)
        with contextlib.suppress(NamespaceError):
            ip("netns", "delete", namespace)


def serve(address: str, location: str, hits: Path) -> None:
    """Answer every request with a redirect to ``location``; append ``METHOD path`` to
    ``hits`` before answering."""

    class Redirect(BaseHTTPRequestHandler):
        def answer(self) -> None:
            self.rfile.read(int(self.headers.get("content-length", 0)))
            with hits.open("a") as record:
                record.write(f"{self.command} {self.path}\n")
            self.send_response(302)
            self.send_header("Location", location)
            self.send_header("Content-Length", "0")
            self.end_headers()

        do_GET = do_POST = do_HEAD = answer  # noqa: N815 (http.server's naming)

        def log_message(self, format: str, *args: object) -> None:
            pass

    HTTPServer((address, 80), Redirect).serve_forever()


if __name__ == "__main__":
    serve(sys.argv[1], sys.argv[2], Path(sys.argv[3]))
