"""SSRF guard (SPEC §5.10): classify resolved upstream addresses; resolve once and pin.

The address that was checked is the address that is dialled: `Resolver.resolve` caches the
checked answer for a short time and the addon connects to it, so a second DNS answer cannot
swap it (no rebinding gap).
"""

from __future__ import annotations

import asyncio
import ipaddress
import socket
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from agent_vault.errors import SsrfBlocked, UpstreamDns

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
Network = ipaddress.IPv4Network | ipaddress.IPv6Network

METADATA = {ipaddress.ip_address(a) for a in ("169.254.169.254", "fd00:ec2::254", "100.100.100.200")}
_CGNAT = ipaddress.ip_network("100.64.0.0/10")
_ULA = ipaddress.ip_network("fc00::/7")


def address_class(ip: IPAddress) -> str | None:
    """The blocked class of `ip` ('loopback', 'private', ...) or None if it is a public address."""
    if isinstance(ip, ipaddress.IPv6Address):
        mapped = ip.ipv4_mapped or (ip.sixtofour if ip.sixtofour else None)
        if mapped is not None:
            return address_class(mapped)
        if ip.packed[:12] == bytes(12) and int(ip) > 1:  # IPv4-compatible ::a.b.c.d
            return address_class(ipaddress.IPv4Address(ip.packed[12:]))
    if ip in METADATA:
        return "metadata"
    if ip.is_loopback:
        return "loopback"
    if ip.is_link_local:
        return "link-local"
    if ip.is_unspecified:
        return "unspecified"
    if ip.is_multicast:
        return "multicast"
    if isinstance(ip, ipaddress.IPv4Address) and ip in _CGNAT:
        return "cgnat"
    if isinstance(ip, ipaddress.IPv6Address) and ip in _ULA:
        return "unique-local"
    if ip.is_reserved:  # before is_private, which also covers 240.0.0.0/4
        return "reserved"
    if ip.is_private:
        return "private"
    return None


@dataclass(frozen=True, slots=True)
class Blocked:
    host: str
    address: str
    address_class: str


class Guard:
    """Decides whether an address may be dialled, given the `--allow-net` CIDRs."""

    def __init__(self, allow_net: Sequence[str]) -> None:
        self.allow: list[Network] = [ipaddress.ip_network(c, strict=False) for c in allow_net]

    def check(self, host: str, ip: IPAddress) -> Blocked | None:
        cls = address_class(ip)
        if cls is None:
            return None
        for net in self.allow:
            if cls == "metadata":
                if net.num_addresses == 1 and ip in net:
                    return None
            elif ip.version == net.version and ip in net:
                return None
        return Blocked(host, str(ip), cls)


class ResolveError(Exception):
    """The name does not resolve (proxy: 502 upstream_dns). Internal control flow, outside the errors.py
    tree on purpose: always caught here and answered as UpstreamDns."""


class Resolver:
    """Async getaddrinfo with a short cache of checked answers."""

    def __init__(self, guard: Guard, ttl: float = 30.0) -> None:
        self.guard = guard
        self.ttl = ttl
        self._cache: dict[str, tuple[float, str | Blocked]] = {}

    async def resolve(self, host: str, port: int) -> str | Blocked:
        """The first usable address for host (as text), or Blocked if any resolved address is blocked."""
        hit = self._cache.get(host)
        now = time.monotonic()
        if hit is not None and hit[0] > now:
            return hit[1]
        try:
            literal: IPAddress | None = ipaddress.ip_address(host)
        except ValueError:
            literal = None
        if literal is not None:
            addrs = [literal]
        else:
            loop = asyncio.get_running_loop()
            try:
                infos = await loop.getaddrinfo(host, port, type=socket.SOCK_STREAM)
            except (socket.gaierror, UnicodeError, OSError) as e:
                raise ResolveError(f"{host} does not resolve ({type(e).__name__})") from None
            addrs = [ipaddress.ip_address(str(i[4][0]).split("%")[0]) for i in infos]
            if not addrs:
                raise ResolveError(f"{host} does not resolve")
        result: str | Blocked = str(addrs[0])
        for ip in addrs:
            blocked = self.guard.check(host, ip)
            if blocked is not None:
                result = blocked
                break
        if len(self._cache) > 10_000:
            self._cache.clear()
        self._cache[host] = (now + self.ttl, result)
        return result


class Egress:
    """The one way the proxy learns where to connect: overrides (AGENT_VAULT_RESOLVE), resolution,
    the guard. `address()` returns the checked address to dial or raises the SPEC §6 error."""

    def __init__(self, allow_net: Sequence[str], overrides: Mapping[str, str] | None = None) -> None:
        self.resolver = Resolver(Guard(allow_net))
        self.overrides = dict(overrides or {})

    async def address(self, host: str, port: int) -> str:
        try:
            res = await self.resolver.resolve(self.overrides.get(host, host), port)
        except ResolveError:
            raise UpstreamDns(f"{host} does not resolve", cause="name not found") from None
        if isinstance(res, Blocked):
            raise SsrfBlocked(
                f"{host} resolves to {res.address} ({res.address_class})",
                address=res.address,
                address_class=res.address_class,
            )
        return res
