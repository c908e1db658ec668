"""Leaf certificates the proxy presents to agents: valid for 30 days (SPEC §4.3), never served stale.

mitmproxy mints each leaf with `certs.CERT_EXPIRY` (199 days) and caches it in its `CertStore` with no
notion of time: on a long-running server a cached leaf would outlive any shorter validity. `install()`
sets the validity to `LEAF_VALIDITY` and wraps `CertStore.get_cert` so a cached leaf with less than
`REFRESH_BEFORE` left is dropped and minted again. One engine per process; `uninstall()` restores both.
"""

from __future__ import annotations

import datetime
from collections.abc import Callable
from typing import Any

from mitmproxy import certs

LEAF_VALIDITY = datetime.timedelta(days=30)
REFRESH_BEFORE = datetime.timedelta(days=7)  # a leaf is reused for at most ~3 weeks of its 4

_saved: tuple[datetime.timedelta, Callable[..., Any]] | None = None


def _fresh(get_cert: Callable[..., Any]) -> Callable[..., Any]:
    def get_cert_fresh(self: certs.CertStore, *args: Any, **kwargs: Any) -> Any:
        entry = get_cert(self, *args, **kwargs)
        if entry.cert.notafter - datetime.datetime.now(datetime.UTC) >= REFRESH_BEFORE:
            return entry
        self.certs = {k: v for k, v in self.certs.items() if v is not entry}  # mitmproxy's own eviction
        return get_cert(self, *args, **kwargs)

    return get_cert_fresh


def install() -> None:
    global _saved
    if _saved is None:
        _saved = (certs.CERT_EXPIRY, certs.CertStore.get_cert)
        certs.CERT_EXPIRY = LEAF_VALIDITY
        certs.CertStore.get_cert = _fresh(_saved[1])  # type: ignore[method-assign]


def uninstall() -> None:
    global _saved
    if _saved is not None:
        certs.CERT_EXPIRY = _saved[0]
        certs.CertStore.get_cert = _saved[1]  # type: ignore[method-assign]
        _saved = None
