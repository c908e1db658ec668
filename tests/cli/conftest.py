"""CLI unit tests run `main()` in-process; reset the module-level CLI state around each test."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from agent_vault.cli import G
from agent_vault.cli.output import out


@pytest.fixture(autouse=True)
def cli_state(isolated_env: Path) -> Iterator[None]:
    saved = (G.addr, G.home, out.json_mode, out.quiet)
    G.addr, G.home = None, isolated_env
    out.json_mode = out.quiet = False
    yield
    G.addr, G.home, out.json_mode, out.quiet = saved
