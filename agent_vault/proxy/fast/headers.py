"""mitmproxy `Headers` with a name index, for the messages of a fast-path connection.

mitmproxy's `Headers` answers every lookup (`h["x"]`, `h.get`, `"x" in h`) by lowering and comparing
every field; the hooks look up about 25 names per request. `IndexedHeaders` answers them from a dict
(lower-case name -> decoded values) built on first use and dropped whenever `fields` is assigned,
which is the only way a `Headers` changes (every mutator of mitmproxy's multidict reassigns the
immutable `fields` tuple). Results are identical to `Headers`: the same key conversion
(UTF-8/surrogateescape, ASCII lower-case), the same folding (", "), the same errors.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any, cast

from mitmproxy import http
from mitmproxy.utils import strutils


def _bytes(x: str | bytes) -> bytes:
    """mitmproxy's `_always_bytes` (UTF-8, surrogateescape; None passes through, as there)."""
    return x.encode("utf-8", "surrogateescape") if isinstance(x, str) else strutils.always_bytes(x)


def _key(name: str | bytes) -> bytes:
    """mitmproxy's `_always_bytes(name)` then `_kconv`, errors included (None: AttributeError, any
    other non-text: TypeError)."""
    return cast(Any, _bytes(name)).lower()  # type: ignore[no-any-return]


class IndexedHeaders(http.Headers):
    """`Headers` whose lookups use an index (see the module docstring)."""

    _fields: tuple[tuple[bytes, bytes], ...]
    _index: dict[bytes, list[str]] | None

    @classmethod
    def adopt(cls, headers: http.Headers) -> IndexedHeaders:
        """The same fields (already checked to be bytes by `headers`), indexed."""
        new = cls.__new__(cls)
        new.fields = headers.fields
        return new

    @property
    def fields(self) -> tuple[tuple[bytes, bytes], ...]:
        return self._fields

    @fields.setter
    def fields(self, value: tuple[tuple[bytes, bytes], ...]) -> None:
        self._fields = value
        self._index = None

    def _lookup(self, name: str | bytes) -> list[str] | None:
        index = self._index
        if index is None:
            index = {}
            for k, v in self._fields:
                got = index.get(low := k.lower())
                value = v.decode("utf-8", "surrogateescape")
                if got is None:
                    index[low] = [value]
                else:
                    got.append(value)
            self._index = index
        return index.get(_key(name))

    def set_all(self, name: str | bytes, values: Iterable[str | bytes]) -> None:
        """mitmproxy's `set_all` in one pass: existing fields of the name keep their place and
        spelling and take the new values in order; extra fields are dropped, extra values appended."""
        raw = _bytes(name)
        key = raw.lower()
        new = [_bytes(v) for v in values]
        index = self._index
        if index is not None and key not in index:  # the common case: a header not there yet
            self.fields = self._fields + tuple((raw, v) for v in new)
            return
        out: list[tuple[bytes, bytes]] = []
        i = 0
        for field in self._fields:
            if field[0].lower() == key:
                if i < len(new):
                    out.append((field[0], new[i]))
                    i += 1
            else:
                out.append(field)
        out += [(raw, v) for v in new[i:]]
        self.fields = tuple(out)

    def get_all(self, name: str | bytes) -> list[str]:
        values = self._lookup(name)
        return list(values) if values else []

    def __getitem__(self, name: str | bytes) -> str:
        values = self._lookup(name)
        if not values:
            raise KeyError(name)
        return ", ".join(values)  # mitmproxy folds repeated fields

    def get(self, name: str | bytes, default: Any = None) -> Any:
        values = self._lookup(name)
        if not values:
            return default
        return ", ".join(values)  # mitmproxy folds repeated fields

    def __contains__(self, name: object) -> bool:
        return bool(self._lookup(cast(Any, name)))
