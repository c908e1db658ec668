"""Exfiltration scanning (issue #20): does a request carry a credential of its vault towards a host
that is not a service referencing that key? Pure: no mitmproxy, no ORM.

`Matcher` is compiled once per vault snapshot (`matcher_for` caches it by the view's identity) from
every value of the vault in the forms an agent could send it: raw, URL-encoded (upper- and
lower-case hex, `+` for space), JSON-escaped, base64 and base64url at each of the three byte
alignments (so a value inside `base64(user:value)` is found too), plus the `vault run --canary`
prefix. `{{KEY}}` placeholders of the vault's keys (raw or URL-encoded) are found by one regex.
Values are found by one C-speed substring search per needle (bench/exfil_scan.py measures it; a
`re` alternation of the same needles was 5-10x slower: sre tries each branch per position).

`UploadScanner` scans a streamed upload chunk by chunk, holding back the last `longest - 1` bytes
so that a value split across chunk boundaries is found before any byte of it is forwarded.

Danger: the matcher holds secret bytes and their encodings: never log or repr them; a finding
names the KEY only.
"""

from __future__ import annotations

import base64
import json
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from urllib.parse import quote, quote_plus

from agent_vault.servicedef import ServiceDef
from agent_vault.snapshot import VaultView

MIN_SCAN_LEN = 8  # shorter values (and encodings) would match ordinary text: not scanned
#: `vault run --canary KEY` sets KEY to `av-canary-KEY-<random>`: a value that exists only to be
#: noticed. Any request carrying the prefix (any encoding) to any host is refused.
CANARY_PREFIX = "av-canary-"
CANARY_OWNER = "(canary)"  # never a credential key, so never in a request's allowed keys
_CANARY_KEY = re.compile(rb"av-canary-([A-Z][A-Z0-9_]{0,127})-")
#: `{{KEY}}` / `{{ KEY }}`, raw or URL-encoded (either hex case, `%20` or `+` for spaces): one regex
#: for every key (sre skips to `{` or `%` in C), instead of 8 needles per key.
_SP = rb"(?: |%20|\+){0,8}"
_PLACEHOLDER = re.compile(
    rb"(?:\{\{|%7[bB]%7[bB])" + _SP + rb"([A-Z][A-Z0-9_]{0,127})" + _SP + rb"(?:\}\}|%7[dD]%7[dD])"
)


def _lower_hex(q: str) -> str:
    return re.sub(r"%[0-9A-F]{2}", lambda m: m.group(0).lower(), q)


def _b64_cores(value: bytes) -> set[bytes]:
    """The base64 / base64url characters fully determined by `value` at each of the three byte
    offsets it can have inside a larger encoded string."""
    out: set[bytes] = set()
    for k in range(3):
        std = base64.b64encode(b"\0" * k + value)
        start = -(-8 * k // 6)  # first character whose six bits all come from `value`
        end = 8 * (k + len(value)) // 6  # characters past this mix in the next byte or padding
        core = std[start:end]
        out.add(core)
        out.add(core.replace(b"+", b"-").replace(b"/", b"_"))
    return out


def encoded_forms(value: str) -> set[bytes]:
    """Every form of `value` the scan looks for (each at least MIN_SCAN_LEN bytes)."""
    raw = value.encode("utf-8", "surrogateescape")
    forms = {raw}
    for q in (quote(value, safe=""), quote_plus(value, safe="")):
        forms.add(q.encode())
        forms.add(_lower_hex(q).encode())
    forms.add(json.dumps(value)[1:-1].encode())
    forms.add(json.dumps(value, ensure_ascii=False)[1:-1].encode("utf-8", "surrogateescape"))
    forms |= _b64_cores(raw)
    return {f for f in forms if len(f) >= MIN_SCAN_LEN}


PLACEHOLDER_SPAN = 2 * 6 + 2 * 3 * 8 + 128  # longest placeholder `_PLACEHOLDER` matches (hold-back)


@dataclass(frozen=True, slots=True)
class Finding:
    """A credential (by key NAME) found where it must not go. Never holds the value."""

    key: str
    kind: str  # value | placeholder | canary


@dataclass(slots=True)
class Matcher:
    """Every needle of a vault with its owner; `longest` bounds the stream hold-back."""

    needles: tuple[tuple[bytes, str, str], ...] = field(repr=False)  # (needle, key, kind)
    longest: int = 0
    placeholder_keys: frozenset[str] = frozenset()

    def __repr__(self) -> str:
        return f"Matcher(needles={len(self.needles)})"

    @property
    def empty(self) -> bool:
        return not self.needles and not self.placeholder_keys

    def scan(self, data: bytes, allowed: frozenset[str] | set[str]) -> Finding | None:
        """A placeholder or needle in `data` whose key is not in `allowed`, or None. Placeholders:
        one regex for all keys; values: one C-speed substring search per needle (CPython's
        two-way/horspool `in`), which measured 5-10x faster than one `re` alternation of the same
        needles (sre tries every branch at every position)."""
        if not data:
            return None
        if self.placeholder_keys and (b"{{" in data or b"%7" in data):
            for ph in _PLACEHOLDER.finditer(data):
                name = ph.group(1).decode()
                if name in self.placeholder_keys and name not in allowed:
                    return Finding(name, "placeholder")
        for needle, key, kind in self.needles:
            if key not in allowed and needle in data:
                if kind == "canary":  # name the key when the canary travels unencoded
                    named = _CANARY_KEY.search(data)
                    key = named.group(1).decode() if named else key
                return Finding(key, kind)
        return None


def build_matcher(values: Mapping[str, str], placeholder_keys: Iterable[str] = ()) -> Matcher:
    """Collect the needles of a vault (and the canary prefix). A needle shared by two keys keeps
    the first owner."""
    owners: dict[bytes, tuple[str, str]] = {}
    for key in sorted(values):
        if len(values[key]) >= MIN_SCAN_LEN:
            for f in encoded_forms(values[key]):
                owners.setdefault(f, (key, "value"))
    for f in encoded_forms(CANARY_PREFIX):
        owners.setdefault(f, (CANARY_OWNER, "canary"))
    needles = tuple((n, *owners[n]) for n in sorted(owners, key=len, reverse=True))
    longest = max(len(needles[0][0]) if needles else 0, PLACEHOLDER_SPAN)
    return Matcher(needles, longest, frozenset(placeholder_keys))


class UploadScanner:
    """Scan a streamed body: `feed` returns the bytes safe to forward now (all but a tail that
    could start a needle) or raises nothing and records `finding`; `finish` releases the tail."""

    __slots__ = ("_allowed", "_matcher", "_tail", "finding")

    def __init__(self, matcher: Matcher, allowed: frozenset[str] | set[str]) -> None:
        self._matcher, self._allowed = matcher, allowed
        self._tail = b""
        self.finding: Finding | None = None

    def feed(self, chunk: bytes) -> bytes:
        """Scan `tail + chunk`; keep `longest - 1` bytes back. Sets `finding` (and releases
        nothing) when a needle of a foreign key is seen."""
        if self._matcher.empty:
            return chunk
        buf = self._tail + chunk if self._tail else chunk
        found = self._matcher.scan(buf, self._allowed)
        if found is not None:
            self.finding, self._tail = found, b""
            return b""
        keep = self._matcher.longest - 1
        if len(buf) <= keep:
            self._tail = buf
            return b""
        self._tail = buf[len(buf) - keep :] if keep else b""
        return buf[: len(buf) - keep] if keep else buf

    def finish(self) -> bytes:
        tail, self._tail = self._tail, b""
        return tail


# --- per-snapshot cache and the request's allowed keys ------------------------------------------------
_cache: dict[str, tuple[object, Matcher]] = {}  # vault name -> (the view it was built from, matcher)


def matcher_for(view: VaultView) -> Matcher:
    """The vault's matcher, built once per snapshot (a reload builds new views; the identity check
    rebuilds then)."""
    hit = _cache.get(view.name)
    if hit is not None and hit[0] is view:
        return hit[1]
    keys = set(view.values)
    for svc in view.services:
        keys.update(svc.all_referenced_keys)
    m = build_matcher(view.values, keys)
    _cache[view.name] = (view, m)
    return m


_allowed: dict[int, tuple[ServiceDef, frozenset[str]]] = {}  # id(service) -> (service, its keys)
_ALLOWED_MAX = 4096
_NONE: frozenset[str] = frozenset()


def allowed_keys(svc: ServiceDef | None) -> frozenset[str]:
    """Keys a request matched to `svc` may carry: the ones the service references (none if unmatched).
    Memoised per service object (a snapshot's services are never changed in place: a reload builds
    new ones; the identity check and the bound keep the memo honest and small)."""
    if svc is None:
        return _NONE
    hit = _allowed.get(id(svc))
    if hit is not None and hit[0] is svc:
        return hit[1]
    keys = frozenset(svc.all_referenced_keys)
    if len(_allowed) >= _ALLOWED_MAX:
        _allowed.clear()
    _allowed[id(svc)] = (svc, keys)
    return keys


def head_blob(host: str, path: bytes, fields: Iterable[tuple[bytes, bytes]]) -> bytes:
    """Target host, raw path (with query) and every header field but Proxy-Authorization, as one
    blob for one scan."""
    parts = [host.encode("idna", "replace") if not host.isascii() else host.encode(), path]
    parts += [k + b":" + v for k, v in fields if k.lower() != b"proxy-authorization"]
    return b"\n".join(parts)


def scrub(text: str, matcher: Matcher) -> str:
    """`text` with every needle replaced by `[REDACTED:KEY]` (for the audit path of a blocked request)."""
    data = text.encode("utf-8", "surrogateescape")
    for needle, key, _ in matcher.needles:
        if needle in data:
            data = data.replace(needle, b"[REDACTED:" + key.encode() + b"]")
    return data.decode("utf-8", "surrogateescape")
