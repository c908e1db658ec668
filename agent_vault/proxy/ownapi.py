"""The way through the proxy to agent-vault's own API, for agents on this machine.

`vault run` takes the loopback names out of the child's NO_PROXY when a service of the vault is on a
loopback address (so that service is reached through the proxy and injected); the child's calls to
`AGENT_VAULT_ADDR` (discover, proposals) then come through the proxy too. Such a request is let
through as an unmatched passthrough whatever the vault's unmatched policy, and dialled at the API's
own address whatever `--allow-net` says -- only when all hold: the agent's connection comes from a
loopback address (a process on this machine, which can reach the API directly anyway), the target
names a loopback address (`localhost` or a loopback IP) and its port is the API's listen port, and
the API listens on loopback or on every interface. A remote agent gets no such way: it would open a
loopback-only API to the network. Nothing is injected (no service matches), the audit records it.
"""

from __future__ import annotations

import functools
import ipaddress
from typing import Any
from urllib.parse import urlsplit

LOOPBACK_NAMES = frozenset({"localhost", "localhost."})


def _loopback(host: str) -> bool:
    name = host.strip("[]").lower()
    if name in LOOPBACK_NAMES:
        return True
    try:
        ip = ipaddress.ip_address(name)
    except ValueError:
        return False
    mapped = getattr(ip, "ipv4_mapped", None)  # ::ffff:127.0.0.1 from a dual-stack listener
    return bool((mapped or ip).is_loopback)


def _dial_ip(api_host: str) -> str | None:
    """The address the API answers on from this machine: its loopback host, or the loopback address of
    the family of a wildcard host; None when the API listens elsewhere only."""
    name = api_host.strip("[]").lower()
    if name in LOOPBACK_NAMES:
        return "127.0.0.1"
    try:
        ip = ipaddress.ip_address(name)
    except ValueError:
        return None
    if ip.is_loopback:
        return str(ip)
    if ip.is_unspecified:
        return "::1" if ip.version == 6 else "127.0.0.1"
    return None


@functools.lru_cache(maxsize=8)
def _api(api_url: str) -> tuple[int, str] | None:
    """(listen port, IP to dial) of the API at `api_url`, or None."""
    try:
        parts = urlsplit(api_url)
        port = parts.port
    except ValueError:
        return None
    if port is None or parts.hostname is None:
        return None
    ip = _dial_ip(parts.hostname)
    return None if ip is None else (port, ip)


def own_api_address(api_url: str, peer: Any, host: str, port: int) -> str | None:
    """The IP to dial when a request from `peer` (an address tuple, or None) to `host:port` is for the
    API at `api_url` (see the module docstring), else None. Pure; never raises for odd input. The port
    is compared first: every other request costs one cached lookup."""
    api = _api(api_url) if api_url else None
    if api is None or api[0] != port or not peer:
        return None
    if not _loopback(host) or not _loopback(str(peer[0])):
        return None
    return api[1]
