"""pydantic validation errors in words a user reads: the field location kept (`auth.token`), pydantic's
own prefixes dropped (`Value error, ` from a validator's ValueError, `Assertion failed, `), never the
input (it may be a secret). Pure: works on `ValidationError.errors()` entries, imports no pydantic."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

_PREFIXES = ("Value error, ", "Assertion failed, ")


def message(msg: object) -> str:
    """One error's text without pydantic's prefix (`Value error, name 't1' must…` -> `name 't1' must…`)."""
    text = str(msg)
    for prefix in _PREFIXES:
        if text.startswith(prefix):
            return text[len(prefix) :]
    return text


def location(loc: Iterable[object]) -> str:
    """`('services', 0, 'name')` -> `services.0.name`."""
    return ".".join(str(x) for x in loc)


def fields(errors: Iterable[Mapping[str, Any]]) -> list[dict[str, str]]:
    """`[{loc, msg}]` for an API answer or a CLI line: locations kept, prefixes dropped, no input."""
    return [{"loc": location(e.get("loc", ())), "msg": message(e.get("msg", "invalid"))} for e in errors]
