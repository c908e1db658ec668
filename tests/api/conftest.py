from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from helpers.core import OWNER_EMAIL, OWNER_PASSWORD, make_core

from agent_vault.api.app import create_app
from agent_vault.core import Core


@pytest.fixture
def core(tmp_path: Path) -> Iterator[Core]:
    with make_core(tmp_path / "home") as c:
        yield c


@pytest.fixture
def api(core: Core) -> Iterator[httpx.Client]:
    """A sync client over the in-process ASGI app, logged in as the owner."""
    app = create_app()
    app.state.core = core
    from starlette.testclient import TestClient

    with TestClient(app, base_url="http://127.0.0.1:14321") as c:
        token = c.post("/v1/auth/login", json={"email": OWNER_EMAIL, "password": OWNER_PASSWORD}).json()[
            "token"
        ]
        c.headers["Authorization"] = f"Bearer {token}"
        yield c
