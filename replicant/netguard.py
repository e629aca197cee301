"""Which URLs Replicant may call on a user's behalf (webhooks, input files): SSRF rules.

Only ``http``/``https`` URLs whose host resolves to public addresses pass. Loopback, private,
link-local (cloud metadata at 169.254.169.254), CGNAT, multicast and reserved addresses are
refused unless ``allow_private_urls`` is set (local development and tests). An IPv6 address
that reaches IPv4 (NAT64, SIIT, IPv4-mapped or -compatible, 6to4, Teredo) is judged by the
IPv4 address it reaches, or refused when that cannot be told.
"""

from __future__ import annotations

import asyncio
import ipaddress
import re
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
    check_host_name(parts.hostname)
    return parts.hostname


# An IDNA-encoded name: ASCII labels of letters, digits, '-' and '_' (seen in real names).
HOST_LABELS = re.compile(rb"[a-z0-9_-]+(?:\.[a-z0-9_-]+)*", re.I)


def check_host_name(host: str) -> None:
    """``BlockedURL`` unless ``host`` is an IP literal or a name DNS can carry (labels of 1 to
    63 characters, 253 in all): the resolver would refuse it at every attempt anyway."""
    try:
        ipaddress.ip_address(host.split("%", 1)[0])
        return
    except ValueError:
        pass
    try:
        encoded = host.rstrip(".").encode("idna")
    except UnicodeError:
        raise BlockedURL("host name is not valid (each label must be 1 to 63 characters)") from None
    if not encoded or len(encoded) > 253:
        raise BlockedURL("host name is not valid (at most 253 characters)")
    if not HOST_LABELS.fullmatch(encoded):
        raise BlockedURL("host name is not valid (letters, digits, '-' and '_' only)")


# Every IPv4 form the C resolver takes: 127.1, 2130706433, 0x7f000001, 0177.0.0.1.
NUMERIC_HOST = re.compile(r"(?:0x[0-9a-f]*|[0-9]+)(?:\.(?:0x[0-9a-f]*|[0-9]+)){0,3}\.?", re.I)
LOCAL_NAMES = frozenset({"localhost", "localhost6", "ip6-localhost", "ip6-loopback"})


def literal_address(host: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    """The address ``host`` spells out, in any form the resolver reads as one; None for a
    name. ``BlockedURL`` for a numeric host that is no address (e.g. ``999.1``)."""
    try:
        return ipaddress.ip_address(host.split("%", 1)[0])
    except ValueError:
        pass
    if not NUMERIC_HOST.fullmatch(host):
        return None
    try:
        return ipaddress.IPv4Address(socket.inet_aton(host.rstrip(".")))
    except OSError:
        raise BlockedURL(f"{host} is not a valid IP address") from None


def check_literal(host: str, allow_private: bool) -> None:
    """``BlockedURL`` for a host that names a private or reserved address without a lookup
    (local names, and IP literals in any form) unless private addresses are allowed."""
    address = literal_address(host)
    if allow_private:
        return
    if host.lower().rstrip(".") in LOCAL_NAMES or (
        address is not None and not is_public_address(str(address))
    ):
        raise BlockedURL("must not point at a private or reserved address")


def check_target(url: str, allow_private: bool) -> str:
    """The host of ``url``, or ``BlockedURL``: everything that can be refused without a DNS
    lookup. Creates (422) and deliveries (no retry) share it, so they agree."""
    host = check_url_syntax(url)
    check_literal(host, allow_private)
    return host


# IPv6 forms that carry an IPv4 address in their last 32 bits: IPv4-mapped (::ffff:a.b.c.d),
# SIIT's IPv4-translated (::ffff:0:a.b.c.d), IPv4-compatible (::a.b.c.d, also :: and ::1) and
# the well-known NAT64 prefix (64:ff9b::a.b.c.d, RFC 6052).
LAST_32_BITS = tuple(
    ipaddress.IPv6Network(net)
    for net in ("::ffff:0:0/96", "::ffff:0:0:0/96", "::/96", "64:ff9b::/96")
)
# Transition prefixes whose IPv4 address cannot be told from the address alone: local-use
# NAT64 (RFC 8215, any prefix length an operator picks) is refused outright.
OPAQUE = (ipaddress.IPv6Network("64:ff9b:1::/48"),)


def ipv4_behind(ip: ipaddress.IPv6Address) -> list[ipaddress.IPv4Address] | None:
    """The IPv4 addresses a packet to ``ip`` would reach through a transition mechanism
    (NAT64, SIIT, IPv4-mapped or -compatible, 6to4, Teredo); None for a native IPv6 address.
    ``BlockedURL`` for a transition form whose IPv4 address cannot be told."""
    if any(ip in net for net in OPAQUE):
        raise BlockedURL("must not point at a private or reserved address")
    if any(ip in net for net in LAST_32_BITS):
        return [ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF)]
    if ip.sixtofour is not None:  # 2002::/16: the IPv4 address follows the prefix
        return [ip.sixtofour]
    if ip.teredo is not None:  # 2001::/32: the relay server and the (obfuscated) client
        return list(ip.teredo)
    return None


def is_public_address(address: str) -> bool:
    """True for an address on the public internet; an IPv6 address that leads to IPv4
    (``ipv4_behind``) is judged by the IPv4 address it leads to."""
    ip = ipaddress.ip_address(address.split("%", 1)[0])
    if isinstance(ip, ipaddress.IPv6Address):
        try:
            behind = ipv4_behind(ip)
        except BlockedURL:
            return False
        if behind is not None:
            return all(v4.is_global and not v4.is_multicast for v4 in behind)
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
