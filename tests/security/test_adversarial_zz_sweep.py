"""The final sweep (SPEC §14.1): named `zz` so it runs after every other adversarial module.

One more server, with `--log-level debug` (a log line per proxied request), gets an ordinary day of
work - values set through the CLI from stdin, injected requests whose upstream echoes the value,
listings, logs, audit export and verification, metrics, one audited reveal - and then everything the
whole suite saw is grepped for every credential value (and its encodings, and the base64 of basic
credentials): API answers, proxy answers, CLI output, server logs, every file of every server home,
the audit rows. Zero hits. The reveal answer is the one place a value may appear, and it is not
recorded. The same check runs again at session teardown (conftest), after every server stopped.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from urllib.parse import quote, quote_plus

import pytest
import trustme
from helpers.server import OWNER_PASSWORD
from security.conftest import (
    Forger,
    Sweep,
    SweptServer,
    audit_rows,
    mode_problems,
    new_secret,
    start_server,
)


@pytest.fixture(scope="module")
def srv(
    tmp_path_factory: pytest.TempPathFactory, upstream_ca: trustme.CA, sweep: Sweep, up: Forger
) -> Iterator[SweptServer]:
    yield from start_server(
        tmp_path_factory, upstream_ca, sweep, "sweep", extra_args=("--log-level", "debug")
    )


@pytest.fixture(scope="module")
def day(
    srv: SweptServer, sweep: Sweep, up: Forger, tmp_path_factory: pytest.TempPathFactory
) -> dict[str, str]:
    """An ordinary day of work; returns the values it used."""
    cli_value, basic_user, basic_pw = new_secret(), new_secret("-u"), new_secret("/+=")
    for label, v in (("CLI_KEY", cli_value), ("BASIC_USER", basic_user), ("BASIC_PW", basic_pw)):
        sweep.value(label, v)
    sweep.basic_pair("basic", basic_user, basic_pw)
    srv.cli_login()
    srv.cli("vault", "credential", "set", "CLI_KEY", "--stdin", input=cli_value + "\n")
    srv.set_credential("BASIC_USER", basic_user)
    srv.set_credential("BASIC_PW", basic_pw)
    srv.add_service(
        {
            "name": "cli-api",
            "host": "api.upstream.test",
            "port": up.port,
            "auth": {"type": "bearer", "token": "CLI_KEY"},
        }
    )
    srv.add_service(
        {
            "name": "basic-api",
            "host": "other.upstream.test",
            "port": up.port,
            "auth": {"type": "basic", "username": "BASIC_USER", "password": "BASIC_PW"},
        }
    )
    token = srv.make_agent("day-bot")
    with srv.agent_client(token) as c:
        for host in ("api.upstream.test", "other.upstream.test"):
            assert c.get(f"https://{host}:{up.port}/reflect?header=authorization").status_code == 200
            # issue #20: the placeholder to basic-api (which does not use CLI_KEY) is refused
            status = c.get(f"https://{host}:{up.port}/echo/day", params={"q": "{{CLI_KEY}}"}).status_code
            assert status == (200 if host == "api.upstream.test" else 403)
        assert (
            c.get(f"https://api.upstream.test:{up.port}/sse?n=2&delay=0&reflect=authorization").status_code
            == 200
        )
        c.post(f"https://api.upstream.test:{up.port}/redirect?to=/echo/followed", content=b"x")
    cp = srv.curl(token, f"https://other.upstream.test:{up.port}/reflect?header=authorization")
    assert "[REDACTED:" in cp.stdout
    with srv.http(record=False) as c:  # the one legitimate way out, itself audited
        r = c.post("/v1/vaults/default/credentials/CLI_KEY/reveal", json={"password": OWNER_PASSWORD})
    assert r.status_code == 200 and r.json()["value"] == cli_value
    with srv.http() as c:
        for path in (
            "/metrics",
            "/v1/audit?limit=1000",
            "/v1/vaults/default/logs?limit=500",
            "/v1/vaults/default/credentials",
            "/v1/discover",
        ):
            assert c.get(path).status_code == 200, path
    export = tmp_path_factory.mktemp("export") / "audit.jsonl"
    with ThreadPoolExecutor(max_workers=4) as pool:
        calls = [
            ("logs", "--json", "--limit", "500"),
            ("logs", "export", "-o", str(export)),
            ("logs", "verify"),
            ("vault", "credential", "list", "--json"),
        ]
        results = [f.result() for f in [pool.submit(srv.cli, *a) for a in calls]]
    assert all(cp.returncode == 0 for cp in results)
    sweep.record("audit export file", export.read_bytes())
    return {"CLI_KEY": cli_value, "BASIC_USER": basic_user, "BASIC_PW": basic_pw}


def test_the_day_was_audited_without_values(srv: SweptServer, day: dict[str, str]) -> None:
    rows = audit_rows(srv.home)
    kinds = {r["kind"] for r in rows}
    assert {"credential.set", "credential.reveal", "proxy.request"} <= kinds, kinds
    injected = [r for r in rows if r.get("kind") == "proxy.request" and r.get("injected_keys")]
    assert injected and all(set(r["injected_keys"]) <= set(day) for r in injected)
    assert any(r.get("redacted_keys") for r in injected)  # the reflections were really redacted
    text = json.dumps(rows)
    assert not any(v in text for v in day.values())


def test_debug_logs_a_line_per_proxied_request(srv: SweptServer, day: dict[str, str]) -> None:
    """SPEC §13: `--log-level debug` adds one line per proxied request with the audit fields (and, as
    everywhere, no value: `test_no_credential_value_anywhere` greps these lines too)."""
    audited = [r for r in audit_rows(srv.home) if r.get("kind") == "proxy.request"]
    lines = [ln for ln in srv.stderr_text().splitlines() if " proxy.request {" in ln]
    assert len(lines) >= len(audited) > 0
    fields = json.loads(lines[0].split(" proxy.request ", 1)[1])
    assert {"actor", "vault", "method", "host", "path", "decision", "status"} <= set(fields)
    assert any('"actor": "agent:day-bot"' in ln and '"decision": "injected"' in ln for ln in lines)


def test_the_sweep_itself_can_fail(tmp_path: Path) -> None:
    """A planted value in any encoding is found: a clean sweep below means something."""
    v = new_secret("/+= &")
    planted = {
        "raw": v,
        "query": "q=" + quote(v, safe=""),
        "form": "q=" + quote_plus(v),
        "json": json.dumps({"a": v}),
        "basic": "Authorization: Basic " + base64.b64encode(f"user:{v}".encode()).decode(),
    }
    for name, text in planted.items():
        s = Sweep()
        s.value("planted", v)
        s.basic_pair("planted basic", "user", v)
        s.record(name, text)
        assert s.hits(), name
    s = Sweep()
    s.secret_token("planted token", "av_agt_planted-token-value")
    s.value("planted stdout", v)
    fake = SweptServer.__new__(SweptServer)  # a server home, log and stdout, without a server
    fake.home, fake._stderr_path = tmp_path / "server-home", tmp_path / "stderr"
    fake._stdout_path = tmp_path / "stdout"
    fake.home.mkdir()
    (tmp_path / "stderr").write_text("oops av_agt_planted-token-value")
    (tmp_path / "stdout").write_text(f"agent-vault ready api=x proxy=y key-mode=z\nprint({v!r})\n")
    s.servers.append(fake)
    hits = s.hits()
    assert any("planted token" in h and "server stderr" in h for h in hits), hits
    assert any("planted stdout" in h and "server stdout" in h for h in hits), hits  # a stray print()


def test_no_credential_value_anywhere(sweep: Sweep, day: dict[str, str]) -> None:
    assert sweep.servers and len(sweep.values) >= 8 and len(sweep.texts) >= 20
    hits = sweep.hits()
    assert not hits, "credential values / tokens leaked:\n" + "\n".join(hits)


def test_servers_print_nothing_but_the_ready_line(sweep: Sweep) -> None:
    """SPEC §2.1: a server prints exactly one line to stdout, `agent-vault ready ...` (once per start);
    everything else goes to stderr. A stray print() (of a value, say) breaks this before the grep."""
    for s in sweep.servers:
        lines = s.stdout_text().splitlines()
        assert lines, f"{s.home.parent.name}: no ready line recorded"
        stray = [ln for ln in lines if not ln.startswith("agent-vault ready api=http://")]
        assert not stray, f"{s.home.parent.name}: {stray[:5]}"


def test_no_server_logged_a_traceback(sweep: Sweep) -> None:
    for s in sweep.servers:
        log = s.stderr_text()
        assert "Traceback" not in log, f"{s.home.parent.name}:\n{log[-3000:]}"


def test_every_server_home_has_spec_file_modes(sweep: Sweep) -> None:
    """All servers and CLI runs of the suite ran under umask 0 (SweptServer)."""
    for s in sweep.servers:
        assert mode_problems(s.home) == [], s.home.parent.name
        if s.key_mode == "passwordless":
            assert (s.home / "dek.key").stat().st_mode & 0o777 == 0o600
