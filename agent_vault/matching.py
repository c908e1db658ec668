"""Request -> service matching (SPEC §5.4): `ServiceIndex` over one vault's services. Pure: no
mitmproxy, no ORM; hosts and paths arrive normalised (`agent_vault.hostpath`).

Danger: matching must not cost more with more services: `ServiceIndex` uses two hash lookups (exact
host, wildcard parent) and then walks only that host's pre-sorted candidates.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

from agent_vault.hostpath import canonical_path, normalize_path

if TYPE_CHECKING:
    from agent_vault.servicedef import ServiceDef

__all__ = ["Denied", "Match", "ServiceIndex"]


@dataclass(frozen=True, slots=True)
class Match:
    """The service that handles the request; `position` is its index in definition order."""

    service: ServiceDef
    position: int


@dataclass(frozen=True, slots=True)
class Denied:
    """A service matched by host/port/path but refuses the request (403 with this code)."""

    code: Literal["service_disabled", "method_not_allowed", "insecure_scheme"]
    service: str
    allowed_methods: list[str] | None = None


@dataclass(frozen=True, slots=True)
class _Entry:
    service: ServiceDef
    position: int
    port: int | None
    prefix: str
    prefix_slash: str
    methods: frozenset[str] | None
    enabled: bool
    plaintext_ok: bool  # may match a plain-HTTP request (`allow_http`, or it sends no credential)

    def covers(self, port: int, path: str) -> bool:
        if self.port is not None and self.port != port:
            return False
        return self.prefix == "/" or path == self.prefix or path.startswith(self.prefix_slash)


def _precedence(e: _Entry) -> tuple[bool, int, int]:
    return (e.port is None, -len(e.prefix), e.position)


class ServiceIndex:
    """An immutable match index over one vault's services (disabled ones included); rebuild on change.

    `match(host, port, method, path, scheme)` expects `host` already passed through `normalize_host`
    and the port already defaulted from the scheme; `path` may carry a query (it is ignored) and is
    matched on `normalize_path(path).canonical` (`match_path` takes that canonical form directly).
    The rule:

    1. Candidates are the services whose host (exact, or `*.parent` for a request host of exactly one
       more label), port (None = any) and path (whole-segment prefix of the canonical path) match,
       ordered by SPEC §5.4 precedence: exact host before wildcard, with port before without, longer
       path prefix first, then definition order.
    2. No candidate -> None (the vault's unmatched policy applies).
    3. The first candidate is disabled -> Denied("service_disabled"): disabling a specific rule never
       falls through to a broader one.
    4. Otherwise the first *enabled* candidate whose `methods` is None or contains `method` (compared
       exactly, case-sensitively) decides. Disabled candidates further down are skipped. If the scheme
       is not `https` and that service sends credentials without `allow_http` -> Denied(
       "insecure_scheme"): the scheme restricts like a method list, it does not fall through.
       Otherwise -> Match.
    5. Otherwise -> Denied("method_not_allowed", service=<first candidate>, allowed_methods=sorted union of
       the enabled candidates' methods): a method list restricts, it does not fall through.
    """

    __slots__ = ("_exact", "_ports", "_services", "_wild")

    def __init__(self, services: Sequence[ServiceDef]) -> None:
        self._services: tuple[ServiceDef, ...] = tuple(services)
        exact: dict[str, list[_Entry]] = {}
        wild: dict[str, list[_Entry]] = {}
        ports: dict[str, set[int | None]] = {}
        for pos, svc in enumerate(self._services):
            prefix = "/" if svc.path == "/" else canonical_path(svc.path).rstrip("/") or "/"
            entry = _Entry(
                service=svc,
                position=pos,
                port=svc.port,
                prefix=prefix,
                prefix_slash=prefix + "/",
                methods=frozenset(svc.methods) if svc.methods is not None else None,
                enabled=svc.enabled,
                plaintext_ok=svc.allow_http or not svc.sends_credentials,
            )
            (wild if svc.host.startswith("*.") else exact).setdefault(svc.host.removeprefix("*."), []).append(
                entry
            )
            ports.setdefault(svc.host, set()).add(svc.port)
        self._exact = {h: tuple(sorted(es, key=_precedence)) for h, es in exact.items()}
        self._wild = {h: tuple(sorted(es, key=_precedence)) for h, es in wild.items()}
        self._ports: dict[str, frozenset[int | None]] = {h: frozenset(p) for h, p in ports.items()}

    def __len__(self) -> int:
        return len(self._services)

    @property
    def services(self) -> tuple[ServiceDef, ...]:
        """The services in definition order."""
        return self._services

    def _candidate_lists(self, host: str) -> tuple[tuple[_Entry, ...], tuple[_Entry, ...]]:
        parent = host.partition(".")[2]
        return self._exact.get(host, ()), (self._wild.get(parent, ()) if parent else ())

    def could_match(self, host: str, port: int) -> bool:
        """True if any service (enabled or not) matches (host, port) for some path: the CONNECT MITM test."""
        parent = host.partition(".")[2]
        for key in (host, "*." + parent if parent else None):
            p = self._ports.get(key) if key else None
            if p is not None and (None in p or port in p):
                return True
        return False

    def match(
        self, host: str, port: int, method: str, path: str, scheme: str = "https"
    ) -> Match | Denied | None:
        """Apply the rule in the class docstring. `host` must be normalised by the caller."""
        return self.match_path(host, port, method, normalize_path(path).canonical, scheme)

    def match_path(self, host: str, port: int, method: str, cpath: str, scheme: str) -> Match | Denied | None:
        """`match` on a path already in canonical form (`normalize_path(path).canonical`)."""
        first: _Entry | None = None
        allowed: set[str] = set()
        for entries in self._candidate_lists(host):
            for e in entries:
                if not e.covers(port, cpath):
                    continue
                if first is None:
                    first = e
                    if not e.enabled:
                        return Denied("service_disabled", e.service.name, None)
                if not e.enabled:
                    continue
                if e.methods is None or method in e.methods:
                    if scheme != "https" and not e.plaintext_ok:
                        return Denied("insecure_scheme", e.service.name, None)
                    return Match(e.service, e.position)
                allowed |= e.methods
        if first is None:
            return None
        return Denied("method_not_allowed", first.service.name, sorted(allowed))
