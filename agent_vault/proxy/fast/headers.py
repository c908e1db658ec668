"""mitmproxy `Headers` with a name index, for the messages of a fast-path connection.

mitmproxy's `Headers` answers every lookup (`h["x"]`, `h.get`, `"x" in h`) by lowering and comparing
every field; the hooks look up about 25 names per request. `IndexedHeaders` answers them from a dict
(lower-case name -> decoded values) built on first use. Every mutator of mitmproxy's multidict
reassigns the immutable `fields` tuple, and assigning `fields` drops the index; the writes the hooks
make (`[]=`, `set_all`, `del`, `pop`, `insert`/`add`) instead patch the one name they touch. Results
are identical to `Headers`: the same key conversion (UTF-8/surrogateescape, ASCII lower-case), the
same folding (", "), the same errors.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any, cast

from mitmproxy import http
from mitmproxy.utils import strutils


def _bytes(x: str | bytes) -> bytes:
    """mitmproxy's `_always_bytes` (UTF-8, surrogateescape; None passes through, as there)."""
    return x.encode("utf-8", "surrogateescape") if isinstance(x, str) else strutils.always_bytes(x)


_KEYS: dict[str | bytes, bytes] = {}  # name -> index key; the hooks ask for a few dozen names
_KEYS_MAX = 512


def _key(name: str | bytes) -> bytes:
    """mitmproxy's `_always_bytes(name)` then `_kconv`, errors included (None: AttributeError, any
    other non-text: TypeError). Exact str/bytes names are memoised (bounded)."""
    exact = type(name) is str or type(name) is bytes
    if exact and (key := _KEYS.get(name)) is not None:
        return key
    key = cast(Any, _bytes(name)).lower()
    if exact and len(_KEYS) < _KEYS_MAX:
        _KEYS[name] = key
    return key  # type: ignore[no-any-return]


def _decoded(values: Iterable[bytes]) -> list[str]:
    return [v.decode("utf-8", "surrogateescape") for v in values]


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

    def _built(self) -> dict[bytes, list[str]]:
        """The index, built on first use."""
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
        return index

    def _lookup(self, name: str | bytes) -> list[str] | None:
        # `_built()` and `_key(name)` inlined for the common case (index built, name memoised): the hooks
        # and the connection loop ask ~40 names per request
        index = self._index
        if index is None:
            index = self._built()
        key = _KEYS.get(name) if type(name) is str else None
        return index.get(key if key is not None else _key(name))

    def _patch(self, fields: tuple[tuple[bytes, bytes], ...], key: bytes, values: list[bytes]) -> None:
        """Set `fields` after a write that touched only name `key`, whose values are now `values`."""
        self._fields = fields
        index = self._index
        if index is None:
            return
        if values:
            index[key] = _decoded(values)
        else:
            index.pop(key, None)

    def index_keys(self) -> Iterable[bytes]:
        """Each name present, as its index key (ASCII lower-case bytes); a view: copy before writing."""
        return self._built().keys()

    def index_names(self) -> dict[bytes, str]:
        """Each name present, as its index key (ASCII lower-case bytes) -> the key as latin-1 text,
        lower-cased (how `inject` compares names: `field_name.decode("latin-1").lower()`)."""
        return {k: k.decode("latin-1").lower() for k in self._built()}

    def drop_keys(self, keys: Iterable[bytes]) -> None:
        """Remove every field whose index key is in `keys`; the index is patched, not rebuilt."""
        gone = set(keys)
        self._fields = tuple(f for f in self._fields if f[0].lower() not in gone)
        if self._index is not None:
            for k in gone:
                self._index.pop(k, None)

    def set_all(self, name: str | bytes, values: Iterable[str | bytes]) -> None:
        """mitmproxy's `set_all` in one pass: existing fields of the name keep their place and
        spelling and take the new values in order; extra fields are dropped, extra values appended."""
        raw = _bytes(name)
        key = _key(raw)
        new = [_bytes(v) for v in values]
        index = self._index
        if index is not None and key not in index:  # the common case: a header not there yet
            self._patch(self._fields + tuple((raw, v) for v in new), key, new)
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
        self._patch(tuple(out), key, new)

    def __delitem__(self, name: str | bytes) -> None:
        raw = _bytes(name)  # mitmproxy converts first, so its KeyError carries the bytes
        if not self._lookup(raw):
            raise KeyError(raw)
        key = _key(raw)
        self._patch(tuple(f for f in self._fields if f[0].lower() != key), key, [])

    def insert(self, index: int, key: str | bytes, value: str | bytes) -> None:
        raw, val = _bytes(key), _bytes(value)
        if type(raw) is not bytes or type(val) is not bytes:  # what mitmproxy lets through as is
            super().insert(index, key, value)
            return
        fields = (*self._fields[:index], (raw, val), *self._fields[index:])
        low = _key(raw)
        self._patch(fields, low, [v for k, v in fields if k.lower() == low])

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
