"""Host and path normalisation (SPEC §5.3, §5.4): the one canonical form every match uses.

A leaf module: imports nothing from agent_vault (the service model, the matcher and the proxy all
build on it). Pure and cheap.

Dangers:
* Decide only from the connection target (CONNECT authority or absolute URL), never from the
  `Host` header. Pass hosts through `normalize_host` once, on the way in.
* A path that some server could read differently from the canonical form must never carry a
  credential: `normalize_path` reports it as a `problem`.
"""

from __future__ import annotations

import ipaddress
import re
import unicodedata
from dataclasses import dataclass
from urllib.parse import unquote

import idna  # a declared dependency: UTS #46 / IDNA 2008, never the stdlib's IDNA 2003 codec

__all__ = [
    "InvalidHost",
    "RequestPath",
    "canonical_path",
    "ip_of",
    "normalize_host",
    "normalize_path",
    "path_is_safe",
]

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address


class InvalidHost(ValueError):
    """A host that cannot be a request target. The message never repeats the host."""


_BAD_HOST_CHARS = re.compile(r"[\x00-\x20\x7f/@%\\?#]")
_LABEL = re.compile(r"[a-z0-9_-]{1,63}")
_DIGITS = re.compile(r"[0-9]+")
_HEX_NUMBER = re.compile(r"0x[0-9a-f]*")


def normalize_host(host: str) -> str:
    """Return the canonical form of a request or service host.

    Strips whitespace and one pair of `[]`, lowercases, drops one trailing dot, IDNA-encodes unicode
    labels (UTS-46 mapping), and canonicalises IP literals the way browsers do: IPv4 in integer, octal
    or hex forms (`2130706433`, `0x7f.1`, `017700000001`) becomes a dotted quad; IPv6 becomes its
    compressed text without brackets (IPv4-mapped stays IPv6; use `ip_of` to unmap).
    Raises InvalidHost for empty hosts, spaces, `/ @ % \\ ? #`, control characters, bad labels
    (empty or > 63 characters) or a total length > 253.
    """
    h = host.strip()
    if len(h) >= 2 and h[0] == "[" and h[-1] == "]":
        h = h[1:-1]
    if not h:
        raise InvalidHost("host is empty")
    if _BAD_HOST_CHARS.search(h):
        raise InvalidHost("host contains a space, control character or one of / @ % \\ ? #")
    if ":" in h:
        try:
            return ipaddress.IPv6Address(h).compressed
        except ValueError:
            raise InvalidHost("host contains ':' but is not an IPv6 address") from None
    if not h.isascii():
        h = _idna_encode(h)
    h = h.lower()
    if h.endswith("."):
        h = h[:-1]
    if not h:
        raise InvalidHost("host is empty")
    v4 = _parse_ipv4(h)
    if v4 is not None:
        return v4
    if len(h) > 253:
        raise InvalidHost("host is longer than 253 characters")
    for label in h.split("."):
        if not _LABEL.fullmatch(label):
            raise InvalidHost(
                "host has an empty label, a label over 63 characters or a character not allowed"
            )
    return h


def _idna_encode(h: str) -> str:
    try:
        mapped = idna.uts46_remap(h, std3_rules=False, transitional=False)
        labels = [lbl if lbl.isascii() else idna.alabel(lbl).decode("ascii") for lbl in mapped.split(".")]
    except (UnicodeError, ValueError):  # idna.IDNAError is a UnicodeError
        raise InvalidHost("host is not a valid internationalised domain name") from None
    return ".".join(labels)


def _ipv4_number(part: str) -> int:
    if _HEX_NUMBER.fullmatch(part):
        return int(part[2:] or "0", 16)
    if not _DIGITS.fullmatch(part):
        raise InvalidHost("host looks like an IPv4 address but is not one")
    if len(part) > 1 and part[0] == "0":
        if not all(c in "01234567" for c in part):
            raise InvalidHost("host looks like an IPv4 address but is not one")
        return int(part, 8)
    return int(part)


def _parse_ipv4(h: str) -> str | None:
    """WHATWG URL IPv4 parser: a host whose last label is a number is an IPv4 address or invalid."""
    parts = h.split(".")
    last = parts[-1]
    if not (_DIGITS.fullmatch(last) or _HEX_NUMBER.fullmatch(last)):
        return None
    if len(parts) > 4:
        raise InvalidHost("host looks like an IPv4 address but is not one")
    nums = [_ipv4_number(p) for p in parts]
    if any(n > 255 for n in nums[:-1]) or nums[-1] >= 256 ** (5 - len(nums)):
        raise InvalidHost("host looks like an IPv4 address but is out of range")
    value = nums[-1]
    for i, n in enumerate(nums[:-1]):
        value += n * 256 ** (3 - i)
    return str(ipaddress.IPv4Address(value))


def ip_of(host: str) -> IPAddress | None:
    """The IP address of a normalised host if it is an IP literal, IPv4-mapped IPv6 unmapped; else None."""
    h = host[1:-1] if host.startswith("[") and host.endswith("]") else host
    try:
        addr = ipaddress.ip_address(h)
    except ValueError:
        return None
    if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped is not None:
        return addr.ipv4_mapped
    return addr


_DOT_SEGMENT = re.compile(r"(?:\.|%2e){1,2}", re.IGNORECASE)
_ESCAPE = re.compile(r"%([0-9a-fA-F]{2})")
_UNRESERVED = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-._~")
_SLASHES = re.compile(r"/{2,}")


def path_is_safe(path: str) -> bool:
    """False if the path (query ignored) could escape a prefix rule once the upstream decodes it.

    Refused: `.`/`..` segments, literal or percent-encoded (also as `..;params`, Tomcat style), an
    encoded `/` or `\\` (`%2F`, `%5C`, any case) and a literal backslash.
    """
    p = path.split("?", 1)[0]
    if "\\" in p:
        return False
    if "%" in p:
        low = p.lower()
        if "%2f" in low or "%5c" in low:
            return False
    if "." not in p and "%" not in p:
        return True
    return not any(_DOT_SEGMENT.fullmatch(seg.split(";", 1)[0]) for seg in p.split("/"))


def _unescape_unreserved(m: re.Match[str]) -> str:
    c = chr(int(m.group(1), 16))
    return c if c in _UNRESERVED else "%" + m.group(1).upper()


def canonical_path(path: str) -> str:
    """The path as matching sees it: query/fragment dropped, `%XX` of unreserved characters decoded
    (other escapes upper-cased), repeated slashes collapsed and dot segments resolved (RFC 3986).

    This keeps `/%61dmin`, `//admin` and `/public/../admin` from slipping past a rule for `/admin`.
    It is for matching only; the request is forwarded with its original path.
    """
    p = path.split("?", 1)[0].split("#", 1)[0]
    if "%" in p:
        p = _ESCAPE.sub(_unescape_unreserved, p)
    if not p.startswith("/"):
        p = "/" + p
    if "//" in p:
        p = _SLASHES.sub("/", p)
    if "/." not in p:
        return p
    out: list[str] = []
    segments = p.split("/")[1:]
    for seg in segments:
        if seg == "..":
            if out:
                out.pop()
        elif seg != ".":
            out.append(seg)
    trailing = "/" if segments[-1] in (".", "..") and out else ""
    return "/" + "/".join(out) + trailing


@dataclass(frozen=True, slots=True)
class RequestPath:
    """A request path as matching sees it (`canonical`), and whether an upstream could read it otherwise.

    `problem` names what makes the path ambiguous (None: nothing). A request that would carry a
    credential (injection or substitution) is refused with `invalid_path` when it is set.
    `unparam` is the canonical form with `;params` cut from every segment (the Tomcat/Spring reading),
    only when it differs from `canonical`: matching must give the same answer for both.
    """

    canonical: str
    problem: str | None = None
    unparam: str | None = None


_ENCODED_SEP = re.compile(r"%(?:2f|5c)", re.IGNORECASE)
_ENCODED_CTL = re.compile(r"%(?:[01][0-9a-f]|7f)", re.IGNORECASE)
# Overlong UTF-8 (`%c0%ae` is `.` to a lax decoder) and IIS `%u002e` escapes.
_OVERLONG = re.compile(r"%c[01]%|%e0%[89]|%f0%8", re.IGNORECASE)
_ESCAPED_UNRESERVED = re.compile(r"%(?:[46][1-9a-f]|[57][0-9a]|3[0-9]|2[de]|5f|7e)", re.IGNORECASE)
_U_ESCAPE = re.compile(r"%u([0-9a-f]{4})", re.IGNORECASE)
# Characters some servers fold into `/` or `\` (NFKC already maps the full-width forms).
_SEGMENT_END = re.compile(r"[;?#]")
_SLASH_LOOKALIKES = frozenset("\u2215\u2044\u29f8\u29f5\ufe68\uff0f\uff3c")
_MAX_VIEWS = 16


def normalize_path(raw: str) -> RequestPath:
    """THE path normalisation of the proxy: every request is matched on `.canonical` of this.

    `raw` is the request target's path, with or without its query. The canonical form is
    `canonical_path` (RFC 3986: unreserved escapes decoded, `//` collapsed, dot segments resolved,
    query and fragment dropped). `problem` is set when some server could act on another path than
    the canonical one: a `.`/`..` segment (also `..;x`, `...`, `.. ` and `%2e`, double-encoded
    `%252e`, `%u002e`, overlong `%c0%ae`, full-width dots U+FF0E), an encoded `/` or `\\` at any
    encoding depth, a literal `\\` or slash look-alike, an empty segment (`//`), a control character
    (raw or `%00`-`%1f`, `%7f`), an escaped unreserved character (`%61`: a server routing on the raw
    path reads another segment than matching did), a fragment (`#`), or a path not starting with `/`.
    Pure and cheap: an ordinary ASCII path takes one scan.
    """
    path = raw.split("?", 1)[0]
    canonical = canonical_path(path)
    problem = _path_problem(path)
    unparam = None
    if ";" in path:
        alt = canonical_path("/".join(seg.split(";", 1)[0] for seg in path.split("#", 1)[0].split("/")))
        if alt != canonical:
            unparam = alt
    return RequestPath(canonical, problem, unparam)


def _path_problem(path: str) -> str | None:
    if not path.startswith("/"):
        return "a target that does not start with /"
    if (
        path.isascii()
        and path.isprintable()
        and "%" not in path
        and "\\" not in path
        and "#" not in path
        and "//" not in path
        and "/." not in path
    ):
        return None
    if not path.isprintable():
        return "a control or invisible character"
    if "#" in path:
        return "a fragment (#)"
    if "//" in path:
        return "an empty segment (//)"
    if _OVERLONG.search(path):
        return "an overlong UTF-8 escape"
    if "%" in path and _ESCAPED_UNRESERVED.search(path):
        # `/%61cme` is `/acme` to matching and to most servers, not to one that routes on the raw path
        return "an escaped unreserved character (such as %61 for a)"
    # Every reading some server may apply: each decoding depth, IIS %u escapes, NFKC folding.
    todo, seen = [path], set()
    while todo:
        view = todo.pop()
        if view in seen:
            continue
        seen.add(view)
        if len(seen) > _MAX_VIEWS:
            return "too many layers of encoding"
        problem = _view_problem(view)
        if problem is not None:
            return problem
        if "%" in view:
            todo.append(unquote(view, errors="replace"))
            if "%u" in view or "%U" in view:
                todo.append(_U_ESCAPE.sub(lambda m: chr(int(m.group(1), 16)), view))
        if not view.isascii():
            todo.append(unicodedata.normalize("NFKC", view))
    return None


def _view_problem(view: str) -> str | None:
    if _ENCODED_SEP.search(view):
        return "an encoded / or \\"
    if _ENCODED_CTL.search(view):
        return "an encoded control character"
    if "\\" in view or (not view.isascii() and _SLASH_LOOKALIKES.intersection(view)):
        return "a backslash or slash look-alike"
    if not view.isprintable():
        return "a control or invisible character"
    for seg in view.split("/"):
        s = _SEGMENT_END.split(seg, 1)[0]  # `..;x` (Tomcat), and `..?`/`..#` once decoded
        if s and "." in s and not s.rstrip(". "):
            return "a dot segment"
    return None
