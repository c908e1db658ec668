"""`agent-vault logs` on a real server: one line per record that fits an 80-column terminal, wider columns
on a wider one, and `vault run`'s session bookkeeping hidden unless --all (--json included)."""

from __future__ import annotations

import json

from helpers.cli_fixtures import SECRET, assert_clean, mserver, mupstream
from helpers.server import ServerProc
from helpers.upstream import TLSUpstream
from helpers.wait import wait_until

from agent_vault.cli.logs import _lines

__all__ = ["mserver", "mupstream"]
LONG = "/echo/" + "a-rather-long-path-segment/" * 6


def _records(server: ServerProc, upstream: TLSUpstream) -> None:
    server.set_credential("API_TOKEN", SECRET)
    server.add_service(
        {
            "name": "echo-api",
            "host": "localhost",
            "port": upstream.port,
            "auth": {"type": "bearer", "token": "API_TOKEN"},
        }
    )
    server.cli(
        "vault", "run", "--quiet", "--", "/usr/bin/curl", "-sS", f"https://localhost:{upstream.port}{LONG}"
    )

    def landed() -> bool:
        with server.http() as c:
            logs = c.get("/v1/vaults/default/logs", params={"limit": 100}).json()["logs"]
        kinds = {r["kind"] for r in logs}
        return "proxy.request" in kinds and "session.revoke" in kinds

    wait_until(landed, "the run's proxy and session records")


def test_logs_fit_80_columns_and_hide_session_records(mserver: ServerProc, mupstream: TLSUpstream) -> None:
    _records(mserver, mupstream)
    narrow = mserver.cli("logs", env={**mserver.env, "COLUMNS": "80"})
    assert_clean(narrow, SECRET)
    lines = narrow.stdout.splitlines()
    assert lines and all(len(line) <= 80 for line in lines), narrow.stdout
    assert any("injected" in line and "credential" not in line for line in lines)
    assert any("credential.set" in line and "API_TOKEN" in line for line in lines)
    assert "session." not in narrow.stdout
    assert "hidden" in narrow.stderr and "--all" in narrow.stderr
    # compact: HH:MM:SS, the actor without its `user:` prefix, the status last
    injected = next(line for line in lines if "injected" in line)
    assert injected.split()[1].count(":") == 2 and len(injected.split()[1]) == 8
    assert "user:" not in narrow.stdout and injected.endswith(" 200")

    everything = mserver.cli("logs", "--all", env={**mserver.env, "COLUMNS": "80"}).stdout
    assert "session.create" in everything and "session.revoke" in everything
    assert all(len(line) <= 80 for line in everything.splitlines())

    wide = mserver.cli("logs", env={**mserver.env, "COLUMNS": "400"}).stdout
    assert "user:owner@example.com" in wide and LONG in wide and "[echo-api]" in wide
    assert any(len(line) > 80 for line in wide.splitlines())

    hidden = [json.loads(x) for x in mserver.cli("--json", "logs").stdout.splitlines()]
    shown = [json.loads(x) for x in mserver.cli("--json", "logs", "--all").stdout.splitlines()]
    assert hidden and not any(r["kind"].startswith("session.") for r in hidden)
    assert {"session.create", "session.revoke"} <= {r["kind"] for r in shown}
    assert len(shown) > len(hidden)


def test_compact_lines_are_inert_and_cut_to_width() -> None:
    rec = {
        "seq": 7,
        "ts": "2026-01-01T12:34:56.000000Z",
        "actor": "session:12:agent:a-very-long-agent-name-indeed",
        "kind": "proxy.request",
        "decision": "tunnel",
        "scheme": "https",
        "method": "GET",
        "host": "api.example.com",
        "port": 443,
        "path": "/x\x1b[2J\n12  owner  credential.delete" + "y" * 200,
        "status": 200,
    }
    for width in (80, 100, 130, 300):
        (line,) = _lines([rec], width)
        assert len(line) <= width and "\x1b" not in line and "\n" not in line
    (line,) = _lines([rec], 80)
    assert (
        line.startswith("7 12:34:56 s12:a-very-lo\u2026 tunnel")
        and line.endswith(" 200")
        and "\\x1b[2J" in line
    )
