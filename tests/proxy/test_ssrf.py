"""SSRF address classes and the --allow-net guard (SPEC §5.10)."""

from __future__ import annotations

import asyncio
import ipaddress

import pytest

from agent_vault.proxy.ssrf import Blocked, Guard, ResolveError, Resolver, address_class


@pytest.mark.parametrize(
    ("address", "cls"),
    [
        ("127.0.0.1", "loopback"),
        ("::1", "loopback"),
        ("::ffff:127.0.0.1", "loopback"),  # IPv4-mapped
        ("::127.0.0.1", "loopback"),  # IPv4-compatible
        ("2002:7f00:1::1", "loopback"),  # 6to4 wrapping 127.0.0.1
        ("10.0.0.5", "private"),
        ("192.168.1.1", "private"),
        ("::ffff:10.0.0.5", "private"),
        ("172.16.0.1", "private"),
        ("169.254.1.1", "link-local"),
        ("fe80::1", "link-local"),
        ("169.254.169.254", "metadata"),
        ("::ffff:169.254.169.254", "metadata"),
        ("fd00:ec2::254", "metadata"),
        ("100.100.100.200", "metadata"),  # inside CGNAT, but metadata wins
        ("100.64.0.1", "cgnat"),
        ("100.127.255.254", "cgnat"),
        ("fc00::1", "unique-local"),
        ("fd12:3456::1", "unique-local"),
        ("0.0.0.0", "unspecified"),
        ("::", "unspecified"),
        ("224.0.0.1", "multicast"),
        ("ff02::1", "multicast"),
        ("240.0.0.1", "reserved"),
    ],
)
def test_blocked_classes(address: str, cls: str) -> None:
    assert address_class(ipaddress.ip_address(address)) == cls


@pytest.mark.parametrize("address", ["8.8.8.8", "1.1.1.1", "100.128.0.1", "2606:4700:4700::1111"])
def test_public_addresses(address: str) -> None:
    assert address_class(ipaddress.ip_address(address)) is None


def test_allow_net_opens_ranges_but_metadata_only_exactly() -> None:
    g = Guard(["127.0.0.0/8", "169.254.0.0/16", "::1/128"])
    assert g.check("h", ipaddress.ip_address("127.0.0.9")) is None
    assert g.check("h", ipaddress.ip_address("::1")) is None
    assert g.check("h", ipaddress.ip_address("169.254.1.1")) is None
    blocked = g.check("h", ipaddress.ip_address("169.254.169.254"))
    assert blocked == Blocked("h", "169.254.169.254", "metadata")
    assert Guard(["169.254.169.254/32"]).check("h", ipaddress.ip_address("169.254.169.254")) is None
    assert g.check("h", ipaddress.ip_address("10.0.0.1")) == Blocked("h", "10.0.0.1", "private")


def test_resolver_blocks_if_any_answer_is_blocked_and_caches() -> None:
    async def go() -> None:
        r = Resolver(Guard([]))
        assert await r.resolve("8.8.8.8", 443) == "8.8.8.8"
        res = await r.resolve("localhost", 80)
        assert isinstance(res, Blocked) and res.address_class == "loopback"
        with pytest.raises(ResolveError):
            await r.resolve("does-not-exist.invalid", 80)

    asyncio.run(go())
