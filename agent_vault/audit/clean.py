"""Making any audit record encodable before it is canonicalised and hashed (SPEC §12).

Strings from the wire are not text: mitmproxy decodes paths, methods and versions with
"surrogateescape", so a byte that is not UTF-8 becomes a lone surrogate that `str.encode()` (the hash)
and SQLite refuse. `clean_record` maps any value to strict, printable UTF-8 text, in one place (the
writer calls it for every record), so a record can never be refused for its contents. Pure.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

from agent_vault.timestamps import utc_ts

UNENCODABLE = "[unencodable]"  # stands in for a value JSON cannot hold (counted as dropped)
__all__ = ["UNENCODABLE", "clean_record", "clean_text", "unencodable_record", "utc_ts"]


def clean_text(value: str, *, url: bool = False) -> str:
    """`value` as printable UTF-8 text: every byte that was not UTF-8 (a surrogateescape'd byte), every
    lone surrogate and every non-printable character (controls, NUL, ESC, bidi overrides, line breaks)
    is escaped byte by byte, as `%NN` with `url` (paths: the URL's own escape) else as `\\xNN`.
    Printable text, non-ASCII letters included, is kept as is; the result is a fixed point (idempotent)."""
    if value.isprintable():  # the common case; False for any surrogate or control character
        return value
    fmt = "%{:02X}" if url else "\\x{:02X}"
    out: list[str] = []
    for ch in value:
        code = ord(ch)
        if 0xDC80 <= code <= 0xDCFF:  # surrogateescape: the original byte is code - 0xDC00
            out.append(fmt.format(code - 0xDC00))
        elif ch.isprintable():
            out.append(ch)
        else:
            out.extend(fmt.format(b) for b in ch.encode("utf-8", "surrogatepass"))
    return "".join(out)


def _clean(value: Any, url: bool, replaced: list[int]) -> Any:
    kind = type(value)  # exact types first: a record is mostly plain text and numbers
    if kind is str:
        return value if value.isprintable() else clean_text(value, url=url)
    if kind is int or kind is bool or value is None:
        return value
    if isinstance(value, str):
        return clean_text(value, url=url)
    if value is None or isinstance(value, bool | int):
        return value
    if isinstance(value, float) and math.isfinite(value):
        return value
    if isinstance(value, Mapping):
        out: dict[str, Any] = {}
        for k, v in value.items():
            key = clean_text(k) if isinstance(k, str) else clean_text(str(k)) if isinstance(k, int) else None
            if key is None:
                replaced[0] += 1
                key = f"{UNENCODABLE}{len(out)}"
            out[key] = _clean(v, False, replaced)
        return out
    if isinstance(value, list | tuple | set | frozenset):
        return [_clean(v, False, replaced) for v in value]
    replaced[0] += 1  # an object, NaN, infinity: never str() it (it might hold a value)
    return UNENCODABLE


def clean_record(record: Mapping[str, Any]) -> tuple[dict[str, Any], int]:
    """(a copy of `record` that `canonical` and `link_hash` always accept, how many values in it had
    to be replaced by `UNENCODABLE`). Strings are escaped with `clean_text` (`path` URL-style);
    ints, bools, None and finite floats are kept; mappings and sequences are cleaned recursively
    (sequences become lists); anything else (objects, NaN, infinity, odd keys) becomes `UNENCODABLE`.
    May raise RecursionError for absurdly deep values (the writer then writes `unencodable_record`)."""
    replaced = [0]
    out: dict[str, Any] = {}
    for k, v in record.items():
        if type(k) is str and k.isprintable():
            kind = type(v)  # most fields of a record: printable text, numbers, None (kept as they are)
            if (kind is str and v.isprintable()) or kind is int or kind is bool or v is None:
                out[k] = v
                continue
            key = k
        elif not isinstance(k, str):
            replaced[0] += 1
            continue
        else:
            key = clean_text(str(k))
        out[key] = _clean(v, k == "path", replaced)
    return out, replaced[0]


def unencodable_record(record: Mapping[str, Any]) -> dict[str, Any]:
    """The stand-in for a record that could not be cleaned at all: its ts and kind (if they are text)
    and every other field's value replaced by `UNENCODABLE`. Always encodable."""
    ts, kind = record.get("ts"), record.get("kind")
    out: dict[str, Any] = {
        k: UNENCODABLE
        for k in (clean_text(k) for k in record if isinstance(k, str))
        if k not in ("ts", "kind")
    }
    out["ts"] = clean_text(ts) if isinstance(ts, str) else utc_ts()
    out["kind"] = clean_text(kind) if isinstance(kind, str) else UNENCODABLE
    out["unencodable"] = True
    return out
