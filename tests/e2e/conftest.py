"""E2E fixtures: the real `agent-vault server` subprocess and a local HTTPS upstream."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import trustme
from helpers.server import ServerProc
from helpers.upstream import TLSUpstream


@pytest.fixture
def upstream(upstream_ca: trustme.CA) -> Iterator[TLSUpstream]:
    with TLSUpstream(ca=upstream_ca) as up:
        yield up


@pytest.fixture(scope="module")
def up(upstream_ca: trustme.CA) -> Iterator[TLSUpstream]:
    """One HTTPS upstream per test module (HTTP/1.1 + HTTP/2), for the module's `srv`."""
    with TLSUpstream(ca=upstream_ca) as u:
        yield u


@pytest.fixture
def server(tmp_path: Path, upstream_ca: trustme.CA) -> Iterator[ServerProc]:
    with ServerProc(tmp_path, upstream_ca) as s:
        yield s
