"""The control-API limiter (SPEC §5.10): per token digest (per client IP without one), 429 with
Retry-After and the JSON error, counted in metrics; probes exempt; `off` disables it."""

from __future__ import annotations

from pathlib import Path

from helpers.core import OWNER_EMAIL, OWNER_PASSWORD, make_core
from starlette.testclient import TestClient

from agent_vault.api.app import create_app


def test_strict_profile_limits_each_token_on_its_own(tmp_path: Path) -> None:
    with make_core(tmp_path / "home", rate_limits="strict") as core:
        app = create_app()
        app.state.core = core
        with TestClient(app, base_url="http://127.0.0.1:14321") as c:
            login = {"email": OWNER_EMAIL, "password": OWNER_PASSWORD}
            first = c.post("/v1/auth/login", json=login).json()["token"]
            c.cookies.clear()  # the CLI keeps no cookie jar (a cookie write needs an Origin: api.csrf)
            second = c.post("/v1/auth/login", json=login).json()["token"]
            answers = [c.get("/v1/vaults", headers={"Authorization": f"Bearer {first}"}) for _ in range(80)]
            codes = [r.status_code for r in answers]
            assert codes[:50] == [200] * 50 and 429 in codes  # strict: burst 50 at 10/s
            # the refused answer itself (a request sent after the loop may find a refilled token on a
            # loaded machine: 10 per second)
            r = next(r for r in answers if r.status_code == 429)
            body = r.json()
            assert body["error"] == "rate_limited" and body["limiter"] == "control_api" and body["hint"]
            assert int(r.headers["retry-after"]) >= 1 and body["retry_after"] >= 1
            # another token (another session of the same user) has its own bucket; probes are exempt
            assert c.get("/v1/vaults", headers={"Authorization": f"Bearer {second}"}).status_code == 200
            assert all(c.get("/health").status_code == 200 for _ in range(60))
            metrics = c.get("/metrics", headers={"Authorization": f"Bearer {second}"}).text
            assert 'agent_vault_rate_limited_total{limiter="control_api"}' in metrics


def test_requests_without_a_token_are_limited_per_client_address(tmp_path: Path) -> None:
    with make_core(tmp_path / "home", rate_limits="strict") as core:
        app = create_app()
        app.state.core = core
        with TestClient(app, base_url="http://127.0.0.1:14321") as c:
            codes = {c.get("/v1/vaults").status_code for _ in range(200)}  # past the burst of 50 at 10/s
    assert codes == {401, 429}


def test_off_profile_never_limits_the_api(tmp_path: Path) -> None:
    with make_core(tmp_path / "home", rate_limits="off") as core:
        app = create_app()
        app.state.core = core
        with TestClient(app, base_url="http://127.0.0.1:14321") as c:
            assert {c.get("/v1/vaults").status_code for _ in range(250)} == {401}
