"""The egress proxy of sandboxed model code: public addresses only.

A sandboxed process has a network namespace with only loopback (``replicant/sandbox.py``).
With ``model_egress=public`` (and for environment builds, ``model_build_egress=public``) it
gets ``HTTP_PROXY``/``HTTPS_PROXY`` pointing at a forwarder inside, which reaches this
proxy through a Unix socket. The proxy takes ``CONNECT host:port`` (TLS) and plain HTTP
requests in absolute form, resolves the host itself and connects to the first address that
is public (``replicant/netguard.py``), to that address and not to the name, so a name that
resolves differently a moment later cannot lead anywhere else. Anything else, and hosts with
no public address (loopback, private networks, link-local metadata, the platform's own
services), get 403.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from urllib.parse import urlsplit

from replicant.netguard import is_public_address

log = logging.getLogger("replicant.egress")

# The port a sandbox's forwarder listens on for its proxy (its own network namespace).
PROXY_PORT = 3128
HEAD_LIMIT = 64 * 1024
CONNECT_TIMEOUT = 30.0


def proxy_env() -> dict[str, str]:
    """The environment that sends a sandboxed process's HTTP(S) through its proxy."""
    url = f"http://127.0.0.1:{PROXY_PORT}"
    local = "127.0.0.1,localhost,::1"
    return {
        "HTTP_PROXY": url,
        "HTTPS_PROXY": url,
        "http_proxy": url,
        "https_proxy": url,
        "NO_PROXY": local,
        "no_proxy": local,
    }


class EgressProxy:
    """The proxy on the Unix socket ``path`` (listening between ``start`` and ``close``)."""

    def __init__(self, path: Path, allowed: Callable[[str], bool] = is_public_address) -> None:
        self.path = path
        self.allowed = allowed
        self._server: asyncio.Server | None = None

    async def start(self) -> None:
        """Listen (the socket is open to every uid: it is bound only into sandboxes)."""
        self._server = await asyncio.start_unix_server(self._handle, str(self.path))
        self.path.chmod(0o666)

    async def close(self) -> None:
        """Stop listening (connections being served end with their peers)."""
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            await self._serve(reader, writer)
        except (OSError, ValueError, asyncio.IncompleteReadError, asyncio.LimitOverrunError):
            pass
        finally:
            writer.close()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        head = await reader.readuntil(b"\r\n\r\n")
        if len(head) > HEAD_LIMIT:
            return await _refuse(writer, 431, "request head too large")
        line, _, rest = head.partition(b"\r\n")
        method, target, version = line.decode("latin-1").split(" ", 2)
        if method.upper() == "CONNECT":
            host, _, port_text = target.rpartition(":")
            host, first = host.strip("[]"), b""
        else:
            parts = urlsplit(target)
            if parts.scheme != "http" or not parts.hostname:
                return await _refuse(writer, 400, "only CONNECT and absolute http URLs")
            host, port_text = parts.hostname, str(parts.port or 80)
            path = parts.path or "/"
            if parts.query:
                path += "?" + parts.query
            headers = [
                h
                for h in rest.split(b"\r\n")
                if h and not h.lower().startswith((b"proxy-", b"connection:"))
            ]
            first = (
                f"{method} {path} {version}\r\n".encode("latin-1")
                + b"".join(h + b"\r\n" for h in headers)
                + b"Connection: close\r\n\r\n"
            )
        address = await self._public_address(host, int(port_text))
        if address is None:
            log.info("event=egress_refused host=%s port=%s", host, port_text)
            return await _refuse(writer, 403, f"{host} is not a public address")
        async with asyncio.timeout(CONNECT_TIMEOUT):
            far_reader, far_writer = await asyncio.open_connection(address, int(port_text))
        try:
            if first:
                far_writer.write(first)
            else:
                writer.write(b"HTTP/1.1 200 Connection established\r\n\r\n")
            await asyncio.gather(_pump(reader, far_writer), _pump(far_reader, writer))
        finally:
            far_writer.close()

    async def _public_address(self, host: str, port: int) -> str | None:
        loop = asyncio.get_running_loop()
        try:
            infos = await loop.getaddrinfo(host, port, type=socket.SOCK_STREAM)
        except OSError:
            return None
        for info in infos:
            address = str(info[4][0])
            if self.allowed(address):
                return address
        return None


async def _refuse(writer: asyncio.StreamWriter, status: int, reason: str) -> None:
    body = reason.encode()
    writer.write(
        f"HTTP/1.1 {status} Refused\r\nContent-Type: text/plain\r\n"
        f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n".encode()
        + body
    )
    await writer.drain()


async def _pump(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        while data := await reader.read(65536):
            writer.write(data)
            await writer.drain()
        if writer.can_write_eof():
            writer.write_eof()
    except (OSError, RuntimeError):
        writer.close()


@contextlib.contextmanager
def proxy_in_thread(path: Path) -> Iterator[Path]:
    """An ``EgressProxy`` on ``path`` served by a thread of its own (for synchronous callers:
    an environment build); stopped on leaving."""
    loop = asyncio.new_event_loop()
    proxy = EgressProxy(path)
    ready = threading.Event()

    failed: list[BaseException] = []

    def run() -> None:
        asyncio.set_event_loop(loop)
        try:
            loop.run_until_complete(proxy.start())
        except BaseException as err:  # reported to the caller below
            failed.append(err)
            return
        finally:
            ready.set()
        loop.run_forever()
        loop.run_until_complete(proxy.close())
        loop.close()

    thread = threading.Thread(target=run, name="egress-proxy", daemon=True)
    thread.start()
    ready.wait()
    if failed:
        raise OSError(f"cannot start the egress proxy: {failed[0]}")
    try:
        yield path
    finally:
        loop.call_soon_threadsafe(loop.stop)
        thread.join(30)
