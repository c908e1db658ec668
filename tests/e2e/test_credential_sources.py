"""Dynamic credential sources (issue #16) through the real server, a real TLS upstream and httpx:
a command's output or a file's content injected, cached until the TTL, shared by concurrent requests;
failures answered with 502 `credential_unavailable` and nothing sent upstream; owners only, with
step-up; values never in the database file, the server log or the audit log."""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import pytest
import trustme
from helpers.server import OWNER_EMAIL, OWNER_PASSWORD, ServerProc
from helpers.upstream import TLSUpstream
from helpers.wait import wait_until

PREFIX = "dyn-secret-value-"
COUNTER = r"""
import pathlib, sys, time
p = pathlib.Path(sys.argv[1])
n = int(p.read_text() or "0") + 1 if p.exists() else 1
p.write_text(str(n))
time.sleep(float(sys.argv[2]) if len(sys.argv) > 2 else 0)
print("PREFIX" + str(n))
""".replace("PREFIX", PREFIX)


@pytest.fixture(scope="module")
def srv(
    tmp_path_factory: pytest.TempPathFactory, upstream_ca: trustme.CA, up: TLSUpstream
) -> Iterator[ServerProc]:
    with ServerProc(tmp_path_factory.mktemp("sources"), upstream_ca) as s:
        s.cli("auth", "login", "--email", OWNER_EMAIL, "--password-stdin", input=OWNER_PASSWORD + "\n")
        yield s


@pytest.fixture(scope="module")
def token(srv: ServerProc) -> str:
    return srv.make_agent("dyn-bot")


def _service(srv: ServerProc, up: TLSUpstream, name: str, key: str) -> str:
    srv.add_service(
        {
            "name": name,
            "host": "localhost",
            "port": up.port,
            "path": f"/echo/{name}",
            "auth": {"type": "bearer", "token": key},
        }
    )
    return f"https://localhost:{up.port}/echo/{name}"


def _source(
    srv: ServerProc,
    key: str,
    source: dict[str, Any],
    *,
    token: str | None = None,
    pw: str | None = OWNER_PASSWORD,
) -> httpx.Response:
    body: dict[str, Any] = {"source": source}
    if pw is not None:
        body["password"] = pw
    with srv.http(token) as c:
        return c.put(f"/v1/vaults/default/credentials/{key}", json=body)


def _get(srv: ServerProc, token: str, url: str) -> httpx.Response:
    with httpx.Client(
        proxy=srv.proxy_url(token), verify=str(srv.ca_bundle), trust_env=False, timeout=20
    ) as c:
        return c.get(url)


def _sent(up: TLSUpstream) -> str | None:
    req = up.requests_seen.wait_for(1)[-1]
    up.requests_seen.clear()
    return next((v for k, v in req["headers"] if k.lower() == "authorization"), None)


def _counter(tmp: Path, name: str) -> tuple[Path, str]:
    script = tmp / f"{name}.py"
    script.write_text(COUNTER)
    state = tmp / f"{name}.count"
    return state, f"{sys.executable} {script} {state}"


def test_command_value_is_injected_cached_for_the_ttl_then_run_again(
    srv: ServerProc, up: TLSUpstream, token: str, tmp_path: Path
) -> None:
    url = _service(srv, up, "cmd-ttl", "CMD_TTL")
    state, cmd = _counter(tmp_path, "ttl")
    assert _source(srv, "CMD_TTL", {"kind": "command", "command": cmd, "ttl": "2s"}).status_code == 200
    r = _get(srv, token, url)
    assert r.status_code == 200, r.text
    assert _sent(up) == f"Bearer {PREFIX}1"  # trailing newline stripped
    assert PREFIX not in r.text  # redacted in the echo
    assert _get(srv, token, url).status_code == 200
    assert _sent(up) == f"Bearer {PREFIX}1" and state.read_text() == "1"  # served from memory
    time.sleep(2.2)
    assert _get(srv, token, url).status_code == 200
    assert _sent(up) == f"Bearer {PREFIX}2"


def test_concurrent_requests_share_one_run(
    srv: ServerProc, up: TLSUpstream, token: str, tmp_path: Path
) -> None:
    url = _service(srv, up, "cmd-shared", "CMD_SHARED")
    state, cmd = _counter(tmp_path, "shared")
    assert (
        _source(srv, "CMD_SHARED", {"kind": "command", "command": f"{cmd} 1.0", "ttl": "5m"}).status_code
        == 200
    )
    with ThreadPoolExecutor(6) as pool:
        codes = list(pool.map(lambda _: _get(srv, token, url).status_code, range(6)))
    assert codes == [200] * 6
    assert state.read_text() == "1"
    up.requests_seen.clear()


@pytest.mark.parametrize(
    ("key", "source", "why"),
    [
        ("CMD_SLOW", {"command": "sleep 30", "timeout": "0.5s"}, "timed out after 0.5s"),
        ("CMD_FAILS", {"command": "echo leaked-output-0001; exit 3", "shell": True}, "exited with status 3"),
        ("CMD_EMPTY", {"command": "true"}, "the output is empty"),
        ("CMD_HUGE", {"command": "yes leaked-output-0002"}, "larger than 64 KiB"),
        ("CMD_MISSING", {"command": "/nonexistent/agent-vault-helper"}, "could not be started"),
    ],
)
def test_a_failing_command_is_a_502_and_nothing_is_sent(
    srv: ServerProc, up: TLSUpstream, token: str, key: str, source: dict[str, Any], why: str
) -> None:
    url = _service(srv, up, key.lower().replace("_", "-"), key)
    assert _source(srv, key, {"kind": "command", **source}).status_code == 200
    up.requests_seen.clear()
    started = time.monotonic()
    r = _get(srv, token, url)
    assert time.monotonic() - started < 10
    assert r.status_code == 502 and r.headers["x-agent-vault-proxy-error"] == "true"
    body = r.json()
    assert body["error"] == "credential_unavailable" and body["key"] == key
    assert why in body["message"] and key in body["message"]
    assert "leaked-output" not in r.text and "sleep" not in r.text and "yes" not in r.text.split()
    time.sleep(0.3)
    assert up.requests_seen.snapshot() == []  # never sent unauthenticated


def test_file_source_is_re_read_when_the_file_changes(
    srv: ServerProc, up: TLSUpstream, token: str, tmp_path: Path
) -> None:
    url = _service(srv, up, "file-src", "FILE_KEY")
    f = tmp_path / "token.txt"
    f.write_text("file-secret-value-one\n")
    assert _source(srv, "FILE_KEY", {"kind": "file", "path": str(f)}).status_code == 200
    assert _get(srv, token, url).status_code == 200
    assert _sent(up) == "Bearer file-secret-value-one"
    f.write_text("file-secret-value-two-longer\n")

    def changed() -> bool:
        assert _get(srv, token, url).status_code == 200
        return _sent(up) == "Bearer file-secret-value-two-longer"

    wait_until(changed, "the new file content", timeout=5, interval=0.3)
    f.unlink()
    time.sleep(1.1)
    r = _get(srv, token, url)
    assert r.status_code == 502 and r.json()["error"] == "credential_unavailable"


def test_only_owners_with_step_up_set_sources(srv: ServerProc, token: str) -> None:
    src = {"kind": "command", "command": "echo owner-only-0003"}
    assert _source(srv, "NOPE", src, pw=None).json()["error"] == "step_up_failed"
    assert _source(srv, "NOPE", src, pw="wrong-password-1").status_code == 401
    assert _source(srv, "NOPE", src, token=token).status_code == 403  # an agent
    with srv.http() as c:
        inv = c.post(
            "/v1/users/invites",
            json={
                "password": OWNER_PASSWORD,
                "email": "admin2@example.com",
                "vaults": [{"vault": "default", "role": "admin"}],
            },
        )
        inv.raise_for_status()
        c.post(
            f"/v1/invites/{inv.json()['token']}/accept", json={"password": "admin2-password"}
        ).raise_for_status()
    admin = srv.login("admin2@example.com", "admin2-password")
    r = _source(srv, "NOPE", {"kind": "file", "path": "/etc/hostname"}, token=admin, pw="admin2-password")
    assert r.status_code == 403 and "owner" in r.json()["message"]
    with srv.http(admin) as c:
        listed = c.get("/v1/vaults/default/credentials").json()["credentials"]
    assert "NOPE" not in {x["key"] for x in listed}
    assert all("source_detail" not in x for x in listed)  # the command is shown to owners only


def test_listing_discover_and_the_leak_sweep(
    srv: ServerProc, up: TLSUpstream, token: str, tmp_path: Path
) -> None:
    url = _service(srv, up, "cmd-list", "CMD_LIST")
    secret_arg = "cmd-line-secret-0004"
    value = "listed-secret-value-0005"
    cmd = f"echo {value} # {secret_arg}"
    r = _source(srv, "CMD_LIST", {"kind": "command", "command": cmd, "shell": True, "ttl": "5m"})
    assert r.json() == {"key": "CMD_LIST", "version": 1, "source": "command", "ttl": 300.0}
    assert _get(srv, token, url).status_code == 200 and _sent(up) == f"Bearer {value}"
    with srv.http() as c:
        rows = {x["key"]: x for x in c.get("/v1/vaults/default/credentials").json()["credentials"]}

        def audit_with_the_request() -> list[dict[str, Any]]:  # records are written in batches
            records: list[dict[str, Any]] = c.get("/v1/audit", params={"limit": 1000}).json()["records"]
            served = [x for x in records if x["kind"] == "proxy.request" and x.get("service") == "cmd-list"]
            return records if served else []

        audit = wait_until(audit_with_the_request, "the proxy record of the request")
    assert rows["CMD_LIST"]["source"] == "command" and rows["CMD_LIST"]["ttl"] == 300.0
    assert rows["CMD_LIST"]["has_value"] is True
    assert rows["CMD_LIST"]["source_detail"]["command"] == cmd  # owner
    with srv.http(token) as c:
        agent_rows = c.get("/v1/vaults/default/credentials").text
        discover = c.get("/v1/discover").json()
    assert secret_arg not in agent_rows and "CMD_LIST" in discover["available_credentials"]
    assert secret_arg not in json.dumps(discover)
    served = [x for x in audit if x["kind"] == "proxy.request" and x.get("service") == "cmd-list"]
    assert served and served[-1]["credential_sources"] == {"CMD_LIST": "command"}
    assert any(x["kind"] == "credential.source" and x["target"] == "CMD_LIST" for x in audit)
    cli = srv.cli("vault", "credential", "list", "--json")
    assert json.loads(cli.stdout)["credentials"]
    shown = srv.cli("vault", "credential", "list").stdout
    assert "command" in shown and value not in shown
    everything = json.dumps(audit) + srv.stderr_text() + agent_rows
    files = b"".join(p.read_bytes() for p in srv.home.glob("agent-vault.db*"))
    for needle in (value, secret_arg, PREFIX + "1"):
        assert needle not in everything and needle.encode() not in files


def test_cli_sets_a_command_source_with_step_up(srv: ServerProc, tmp_path: Path) -> None:
    cp = srv.cli(
        "vault",
        "credential",
        "set",
        "CLI_CMD",
        "--command",
        "echo cli-secret-value-0006",
        "--ttl",
        "5m",
        "--password-stdin",
        input=OWNER_PASSWORD + "\n",
    )
    assert (
        "from a command source" in cp.stderr + cp.stdout and "cli-secret-value" not in cp.stdout + cp.stderr
    )
    bad = srv.cli(
        "vault",
        "credential",
        "set",
        "CLI_CMD",
        "--command",
        "echo x",
        "--ttl",
        "soon",
        "--password-stdin",
        input=OWNER_PASSWORD + "\n",
        check=False,
    )
    # a bad flag value: a usage error (exit 2), checked before the password is used; never echoed
    assert bad.returncode == 2 and "not a duration" in bad.stderr and "Traceback" not in bad.stderr
    assert "soon" not in bad.stderr
    f = tmp_path / "cli-file"
    f.write_text("v")
    cp = srv.cli(
        "vault",
        "credential",
        "set",
        "CLI_FILE",
        "--file",
        str(f),
        "--password-stdin",
        input=OWNER_PASSWORD + "\n",
    )
    rows = {
        x["key"]: x
        for x in json.loads(srv.cli("vault", "credential", "list", "--json").stdout)["credentials"]
    }
    assert rows["CLI_CMD"]["source"] == "command" and rows["CLI_CMD"]["ttl"] == 300.0
    assert rows["CLI_FILE"]["source"] == "file" and rows["CLI_FILE"]["source_detail"]["path"] == str(f)
    # A stored value replaces the source.
    srv.cli("vault", "credential", "set", "CLI_CMD", "--stdin", input="static-value-0007\n")
    rows = {
        x["key"]: x
        for x in json.loads(srv.cli("vault", "credential", "list", "--json").stdout)["credentials"]
    }
    assert rows["CLI_CMD"]["source"] == "static" and rows["CLI_CMD"]["ttl"] is None
