"""Fetching URLs on a user's behalf without SSRF: input files (and webhooks, which may reuse it).

Checking a URL and then letting an HTTP client resolve it again leaves a gap (DNS rebinding:
the second answer can be 127.0.0.1). So every hop is resolved here, every address it resolves
to is checked against ``netguard``'s rules, and the connection goes to the checked address
itself, with the original ``Host`` header and TLS server name. Redirects are followed by hand,
each hop checked the same way. Size and time are capped; no proxy from the environment.
"""

from __future__ import annotations

import asyncio
import ipaddress
import socket
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from urllib.parse import urljoin, urlsplit, urlunsplit

import httpx

from replicant.netguard import BlockedURL, check_url_syntax, is_public_address

MAX_REDIRECTS = 5
CHUNK = 256 * 1024
USER_AGENT = "replicant-fetch/1"

#: Decides whether an address (and port) may be connected to.
AddressPolicy = Callable[[str, int], bool]


class FetchError(Exception):
    """A URL could not be fetched; the message is meant for the user (no secrets)."""


def address_policy(allow_private: bool) -> AddressPolicy:
    """Public addresses only, or any address when private ones are allowed (tests, dev)."""
    if allow_private:
        return lambda _address, _port: True
    return lambda address, _port: is_public_address(address)


async def resolve(host: str, port: int, policy: AddressPolicy) -> str:
    """An address of ``host`` to connect to; ``BlockedURL`` when any of them is refused."""
    try:
        infos = await asyncio.get_running_loop().getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except OSError as err:
        raise BlockedURL(f"{host} does not resolve") from err
    except UnicodeError as err:  # a name no resolver takes (IDNA refuses it): for good
        raise BlockedURL(f"{host} is not a valid host name") from err
    addresses = [str(info[4][0]) for info in infos]
    if not addresses:
        raise BlockedURL(f"{host} does not resolve")
    for address in addresses:
        if not policy(address, port):
            raise BlockedURL(f"{host} resolves to a private or reserved address")
    return addresses[0]


def pinned(url: str, address: str) -> tuple[str, str, str]:
    """(URL that connects to ``address``, Host header, TLS server name) for ``url``."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    port = parts.port
    ipv6 = ipaddress.ip_address(address.split("%")[0]).version == 6
    literal = f"[{address}]" if ipv6 else address
    netloc = literal if port is None else f"{literal}:{port}"
    host_header = parts.netloc.rsplit("@", 1)[-1]
    return urlunsplit(parts._replace(netloc=netloc)), host_header, host


@dataclass
class Fetched:
    """A response whose body is being streamed."""

    url: str  # the final URL, after redirects
    content_type: str | None
    content_length: int | None
    response: httpx.Response
    max_bytes: int

    async def iter_bytes(self) -> AsyncIterator[bytes]:
        """The body (decoded), refusing more than ``max_bytes``."""
        total = 0
        async for chunk in self.response.aiter_bytes(CHUNK):
            total += len(chunk)
            if total > self.max_bytes:
                raise FetchError(f"is larger than {self.max_bytes} bytes")
            yield chunk


@asynccontextmanager
async def fetch(
    url: str,
    *,
    allow_private: bool = False,
    max_bytes: int,
    header_timeout: float,
    policy: AddressPolicy | None = None,
    verify: bool | str = True,
) -> AsyncIterator[Fetched]:
    """GET ``url`` safely; raises ``FetchError`` (also for refused addresses).

    ``header_timeout`` bounds resolving, connecting, redirects and the headers; the caller
    bounds reading the body, at its own pace.
    """
    policy = policy or address_policy(allow_private)
    async with httpx.AsyncClient(
        trust_env=False,
        follow_redirects=False,
        verify=verify,
        timeout=httpx.Timeout(header_timeout),
        headers={"User-Agent": USER_AGENT},
    ) as client:
        response = await _open(client, url, policy, header_timeout)
        try:
            declared = response.headers.get("content-length")
            length = int(declared) if declared and declared.isdigit() else None
            if length is not None and length > max_bytes:
                raise FetchError(f"is larger than {max_bytes} bytes")
            yield Fetched(
                url=str(response.request.extensions.get("replicant_url", url)),
                content_type=response.headers.get("content-type"),
                content_length=length,
                response=response,
                max_bytes=max_bytes,
            )
        finally:
            await response.aclose()


async def _open(
    client: httpx.AsyncClient, url: str, policy: AddressPolicy, header_timeout: float
) -> httpx.Response:
    current = url
    try:
        async with asyncio.timeout(header_timeout):
            for _ in range(MAX_REDIRECTS + 1):
                host = check_url_syntax(current)
                parts = urlsplit(current)
                port = parts.port or (443 if parts.scheme.lower() == "https" else 80)
                address = await resolve(host, port, policy)
                target, host_header, server_name = pinned(current, address)
                request = client.build_request(
                    "GET",
                    target,
                    headers={"Host": host_header},
                    extensions={"sni_hostname": server_name, "replicant_url": current},
                )
                response = await client.send(request, stream=True)
                if response.is_redirect and "location" in response.headers:
                    await response.aclose()
                    current = urljoin(current, response.headers["location"])
                    continue
                if response.status_code != 200:
                    await response.aclose()
                    raise FetchError(f"answered HTTP {response.status_code}")
                return response
    except BlockedURL as err:
        raise FetchError(f"is not allowed: {err}") from err
    except TimeoutError as err:
        raise FetchError(f"did not answer within {header_timeout:g} seconds") from err
    except httpx.HTTPError as err:
        raise FetchError(f"could not be fetched ({type(err).__name__})") from err
    raise FetchError(f"redirected more than {MAX_REDIRECTS} times")
