"""The SSRF filter judges an IPv6 address that reaches IPv4 by the IPv4 address it reaches
(NAT64, SIIT, IPv4-mapped and -compatible, 6to4, Teredo), and refuses a form whose IPv4
address cannot be told; the same rule holds for literals at create and for resolved names."""

from __future__ import annotations

import pytest

from replicant.netguard import BlockedURL, check_addresses, check_target, is_public_address

# Private or reserved IPv4 addresses hidden in IPv6 transition forms.
HIDDEN_PRIVATE = [
    "64:ff9b::a9fe:a9fe",  # NAT64 of 169.254.169.254 (cloud metadata)
    "64:ff9b::7f00:1",  # NAT64 of 127.0.0.1
    "64:ff9b::10.0.0.1",
    "64:ff9b:1::a9fe:a9fe",  # local-use NAT64: refused whatever it embeds
    "64:ff9b:1::808:808",
    "::127.0.0.1",  # IPv4-compatible
    "::a9fe:a9fe",
    "::ffff:127.0.0.1",  # IPv4-mapped
    "::ffff:192.168.1.1",
    "::ffff:0:7f00:1",  # SIIT IPv4-translated 127.0.0.1
    "::ffff:0:169.254.169.254",
    "2002:7f00:1::",  # 6to4 of 127.0.0.1
    "2002:a9fe:a9fe::1",  # 6to4 of 169.254.169.254
    "2002:c0a8:101::",  # 6to4 of 192.168.1.1
    "2001:0:4136:e378:8000:63bf:80ff:fffe",  # Teredo, client 127.0.0.1 (obfuscated)
    "2001:0:a00:1::ffff:ffff",  # Teredo, server 10.0.0.1
    "::",
    "::1",
]

# The same forms around public IPv4 addresses, and native public IPv6.
PUBLIC = [
    "64:ff9b::8.8.8.8",
    "::ffff:8.8.8.8",
    "::ffff:0:8.8.8.8",
    "2002:808:808::1",
    "2606:4700:4700::1111",
    "2001:4860:4860::8888",
]


@pytest.mark.parametrize("address", HIDDEN_PRIVATE)
def test_ipv6_forms_of_private_ipv4_addresses_are_not_public(address: str) -> None:
    assert not is_public_address(address)


@pytest.mark.parametrize("address", HIDDEN_PRIVATE)
def test_ipv6_literals_of_private_ipv4_addresses_are_refused_at_create(address: str) -> None:
    with pytest.raises(BlockedURL, match="private or reserved"):
        check_target(f"http://[{address}]:8080/hook", allow_private=False)


@pytest.mark.parametrize("address", HIDDEN_PRIVATE)
def test_names_resolving_to_ipv6_forms_of_private_addresses_are_refused(address: str) -> None:
    with pytest.raises(BlockedURL, match="resolves to a private"):
        check_addresses("hooks.example.com", [address], allow_private=False)


@pytest.mark.parametrize("address", PUBLIC)
def test_ipv6_forms_of_public_addresses_pass(address: str) -> None:
    assert is_public_address(address)
    assert check_target(f"https://[{address}]/hook", allow_private=False) == address


def test_private_forms_pass_when_the_operator_allows_private_urls() -> None:
    assert check_target("http://[64:ff9b::7f00:1]/", allow_private=True) == "64:ff9b::7f00:1"
