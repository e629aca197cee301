"""Which URLs Replicant may call on a user's behalf (webhooks, input files): SSRF rules.

Only ``http``/``https`` URLs whose host resolves to public addresses pass. Loopback, private,
link-local (cloud metadata at 169.254.169.254), CGNAT, multicast and reserved addresses are
refused unless ``allow_private_urls`` is set (local development and tests).
"""

from __future__ import annotations

import asyncio
import ipaddress
import socket
from urllib.parse import urlsplit

SCHEMES = frozenset({"http", "https"})


class BlockedURL(ValueError):
    """A URL Replicant refuses to call; the message says why."""


def check_url_syntax(url: str) -> str:
    """The URL's host, or ``BlockedURL`` when it is not an absolute http(s) URL."""
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018 (raises on a malformed port)
    except ValueError as err:
        raise BlockedURL(f"not a valid URL: {err}") from err
    if parts.scheme.lower() not in SCHEMES:
        raise BlockedURL("must be an http or https URL")
    if not parts.hostname:
        raise BlockedURL("must name a host")
    if parts.username is not None or parts.password is not None:
        raise BlockedURL("must not carry credentials")
    return parts.hostname


def is_public_address(address: str) -> bool:
    """True for an address on the public internet."""
    ip = ipaddress.ip_address(address.split("%", 1)[0])
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    return ip.is_global and not ip.is_multicast


def check_addresses(host: str, addresses: list[str], allow_private: bool) -> None:
    if allow_private:
        return
    for address in addresses:
        if not is_public_address(address):
            raise BlockedURL(f"{host} resolves to a private or reserved address")


async def check_url(url: str, *, allow_private: bool) -> None:
    """Refuse (``BlockedURL``) a URL that is malformed or resolves to a non-public address."""
    host = check_url_syntax(url)
    if allow_private:
        return
    port = urlsplit(url).port or (443 if url.lower().startswith("https") else 80)
    try:
        infos = await asyncio.get_running_loop().getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except OSError as err:
        raise BlockedURL(f"{host} does not resolve") from err
    check_addresses(host, [str(info[4][0]) for info in infos], allow_private)
