"""OAuth2 and dynamic credential sources together, through the real server (QA findings):

* a refresh token whose credential comes from a file source is never sealed into the store when the
  token endpoint rotates it: used from memory, the source untouched, one warning naming the service and
  key (never a value);
* server.log diagnoses credential failures: an OAuth2 fetch failure names the vault, the service, the
  token endpoint's host and the cause; a command/file source failure names the vault, the key and why
  in general terms; identical lines are rate-limited; values and output never appear.
"""

from __future__ import annotations

import json
import re
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import trustme
from helpers.cli_fixtures import start_server
from helpers.oauth import TokenServer
from helpers.proxy import audit_records
from helpers.server import OWNER_PASSWORD, ServerProc
from helpers.upstream import TLSUpstream
from helpers.wait import wait_until

CLIENT_ID = "src-client-id-0001"
CLIENT_SECRET = "src-client-secret-0002"
REFRESH = "src-refresh-token-value-0003"
OUTPUT_SECRET = "cmd-output-SEKRET-0004"


@pytest.fixture(scope="module")
def api(upstream_ca: trustme.CA) -> Iterator[TLSUpstream]:
    with TLSUpstream(ca=upstream_ca) as u:
        yield u


@pytest.fixture(scope="module")
def idp(upstream_ca: trustme.CA) -> Iterator[TokenServer]:
    with TokenServer(
        ca=upstream_ca,
        client_id=CLIENT_ID,
        client_secret=CLIENT_SECRET,
        refresh_token=REFRESH,
        rotate=True,
        expires_in=2,
    ) as t:
        yield t


@pytest.fixture(scope="module")
def srv(tmp_path_factory: pytest.TempPathFactory, upstream_ca: trustme.CA) -> Iterator[ServerProc]:
    for s in start_server(tmp_path_factory.mktemp("oauth2-sources"), upstream_ca):
        s.set_credential("SRC_CLIENT_ID", CLIENT_ID)
        s.set_credential("SRC_CLIENT_SECRET", CLIENT_SECRET)
        yield s


@pytest.fixture(scope="module")
def agent(srv: ServerProc) -> str:
    return srv.make_agent("src-bot")


def _source(srv: ServerProc, key: str, source: dict[str, Any]) -> None:
    with srv.http() as c:
        r = c.put(
            f"/v1/vaults/default/credentials/{key}", json={"source": source, "password": OWNER_PASSWORD}
        )
    assert r.status_code == 200, r.text


def _oauth(name: str, port: int, idp: TokenServer, **extra: Any) -> dict[str, Any]:
    return {
        "name": name,
        "host": "localhost",
        "port": port,
        "path": f"/echo/{name}",
        "auth": {
            "token_url": f"https://localhost:{idp.port}/token?tenant=t1",
            "client_id": "SRC_CLIENT_ID",
            "client_secret": "SRC_CLIENT_SECRET",
            **extra,
        },
    }


def _get(srv: ServerProc, token: str, url: str) -> httpx.Response:
    with httpx.Client(
        proxy=srv.proxy_url(token), verify=str(srv.ca_bundle), trust_env=False, timeout=20
    ) as c:
        return c.get(url)


def _credential(srv: ServerProc, key: str) -> dict[str, Any]:
    with srv.http() as c:
        listed = c.get("/v1/vaults/default/credentials").json()["credentials"]
    return next(x for x in listed if x["key"] == key)


def test_a_rotated_refresh_token_from_a_file_source_is_never_stored(
    srv: ServerProc, agent: str, api: TLSUpstream, idp: TokenServer, tmp_path: Path
) -> None:
    rt_file = tmp_path / "refresh-token"
    rt_file.write_text(REFRESH + "\n")
    _source(srv, "SRC_REFRESH", {"kind": "file", "path": str(rt_file)})
    srv.add_service(
        _oauth("rt-file", api.port, idp, type="oauth2-refresh-token", refresh_token="SRC_REFRESH")
    )
    url = f"https://localhost:{api.port}/echo/rt-file"
    r = _get(srv, agent, url)
    assert r.status_code == 200, r.text
    assert idp.refresh_tokens_seen[-1] == REFRESH
    rotated = idp.refresh_token
    assert rotated != REFRESH
    lines = wait_until(
        lambda: [x for x in srv.stderr_text().splitlines() if "rotated the refresh token SRC_REFRESH" in x],
        "the rotation warning",
        timeout=5,
    )
    line = lines[0]
    assert "rt-file" in line and "source" in line
    time.sleep(0.5)  # a store-back (the bug) runs in the background of the fetch
    cred = _credential(srv, "SRC_REFRESH")
    assert cred["source"] == "file" and cred["version"] == 1 and cred["updated_by"].startswith("user:")
    assert not audit_records(srv.home, kind="credential.rotate", target="SRC_REFRESH")
    assert rt_file.read_text() == REFRESH + "\n"  # the source is never written
    # The chain goes on from memory: the 2-second access token expires, the next fetch sends the
    # rotated refresh token (the file still holds the old one), and the request succeeds.
    time.sleep(2.2)
    r = _get(srv, agent, url)
    assert r.status_code == 200, r.text
    assert idp.refresh_tokens_seen[-1] == rotated
    text = srv.stderr_text() + srv.stdout_text()
    assert REFRESH not in text and rotated not in text and idp.refresh_token not in text
    assert rotated.encode() not in (srv.home / "agent-vault.db").read_bytes()


def test_oauth2_fetch_failures_are_logged_with_vault_service_host_and_cause(
    srv: ServerProc, agent: str, api: TLSUpstream, idp: TokenServer
) -> None:
    srv.add_service(_oauth("cc-fail", api.port, idp, type="oauth2-client-credentials", scopes=["fail"]))
    idp.fail_with = "invalid_client"
    try:
        for _ in range(3):  # identical failures: one line (rate-limited)
            r = _get(srv, agent, f"https://localhost:{api.port}/echo/cc-fail")
            assert r.status_code == 502 and r.json()["error"] == "credential_unavailable"
    finally:
        idp.fail_with = None
    lines = wait_until(
        lambda: [x for x in srv.stderr_text().splitlines() if "service cc-fail" in x and "fetch failed" in x],
        "the fetch failure line",
        timeout=5,
    )
    assert len(lines) == 1, lines
    assert re.search(r"vault default, service cc-fail, endpoint localhost: invalid_client", lines[0]), lines
    assert "tenant" not in lines[0] and CLIENT_SECRET not in srv.stderr_text()


def test_source_failures_are_logged_without_output(
    srv: ServerProc, agent: str, api: TLSUpstream, tmp_path: Path
) -> None:
    script = tmp_path / "fail.py"
    script.write_text(f"import sys\nprint({OUTPUT_SECRET!r})\nsys.exit(3)\n")
    _source(srv, "SRC_CMD", {"kind": "command", "command": f"{sys.executable} {script}", "ttl": "5m"})
    _source(srv, "SRC_FILE", {"kind": "file", "path": str(tmp_path / "missing-file")})
    for key in ("SRC_CMD", "SRC_FILE"):
        srv.add_service(
            {
                "name": key.lower().replace("_", "-"),
                "host": "localhost",
                "port": api.port,
                "path": f"/echo/{key.lower()}",
                "auth": {"type": "bearer", "token": key},
            }
        )
    for _ in range(2):
        for key in ("SRC_CMD", "SRC_FILE"):
            r = _get(srv, agent, f"https://localhost:{api.port}/echo/{key.lower()}")
            assert r.status_code == 502 and r.json()["key"] == key
        time.sleep(1.1)  # past the 1 s failure hold: the source runs again, fails again
    text = srv.stderr_text()
    cmd = [x for x in text.splitlines() if "credential SRC_CMD is unavailable" in x]
    assert len(cmd) == 1, cmd  # rate-limited
    assert "command source failed: vault default" in cmd[0] and "exited with status 3" in cmd[0]
    files = [x for x in text.splitlines() if "credential SRC_FILE is unavailable" in x]
    assert len(files) == 1 and "file source failed: vault default" in files[0], files
    assert OUTPUT_SECRET not in text and str(script) not in text
    assert json.dumps(OUTPUT_SECRET)[1:-1] not in srv.stdout_text()
