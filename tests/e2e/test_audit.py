"""The audit log end to end (SPEC §12, §13, §14 items 1 and 12), against the real server subprocess.

Every proxied request and admin mutation leaves exactly one record naming things, never values; the
hash chain verifies online and offline and catches edits, deletions, reordering and tail truncation;
a kill -9 leaves a verifiable chain; /metrics, /health and /ready report what flows.

AGENT_VAULT_AUDIT_LOAD sets the request count of the load test (default 1000; 10000 was run by hand).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import sqlite3
import stat
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import h2.config
import h2.connection
import h2.events
import httpx
import pytest
import trustme
from helpers.proxy import RawConn, basic
from helpers.server import OWNER_PASSWORD, ServerProc
from helpers.upstream import TLSUpstream
from helpers.wait import wait_until
from helpers.wsclient import ws_via_proxy
from sqlalchemy import create_engine

from agent_vault.audit import AuditWriter, admin_record, utc_ts

SECRET = "sk-live-audit-secret-value-4242"
QUERY_MARKER = "qmarker-7f3a9c"
LOAD = int(os.environ.get("AGENT_VAULT_AUDIT_LOAD", "1000"))
RESOLVE = {"AGENT_VAULT_RESOLVE": "api.upstream.test=127.0.0.1,other.upstream.test=127.0.0.1"}
PROXY_FIELDS = {
    "seq", "ts", "kind", "actor", "vault", "method", "scheme", "host", "port", "path", "service", "auth_type",
    "injected_keys", "substituted_keys", "redacted_keys", "decision", "status", "error", "bytes_up",
    "bytes_down", "duration_ms", "http_version", "prev_hash", "hash",
}  # fmt: skip
ADMIN_FIELDS = {"seq", "ts", "kind", "actor", "vault", "target", "details", "prev_hash", "hash"}


@pytest.fixture
def rserver(tmp_path: Path, upstream_ca: trustme.CA) -> Iterator[ServerProc]:
    """A server that resolves *.upstream.test names to the loopback upstream, rate limits off."""
    with ServerProc(tmp_path, upstream_ca, extra_args=("--rate-limits", "off"), env=RESOLVE) as s:
        yield s


# -- helpers -------------------------------------------------------------------------------------


def agent_client(server: ServerProc, token: str) -> httpx.Client:
    return httpx.Client(
        proxy=server.proxy_url(token), verify=str(server.ca_bundle), trust_env=False, timeout=30
    )


def flush(server: ServerProc) -> dict[str, Any]:
    """POST /v1/audit/verify: flushes the audit queue, then verifies; returns the result."""
    with server.http() as c:
        r = c.post("/v1/audit/verify")
        assert r.status_code == 200, r.text
        return dict(r.json())


def all_records(server: ServerProc, **params: Any) -> list[dict[str, Any]]:
    flush(server)
    out: list[dict[str, Any]] = []
    cursor = 0
    with server.http() as c:
        while True:
            r = c.get("/v1/audit", params={"after_seq": cursor, "limit": 1000, **params})
            assert r.status_code == 200, r.text
            page = r.json()["records"]
            out += page
            if len(page) < 1000:
                return out
            cursor = page[-1]["seq"]


def db_rows(home: Path) -> list[tuple[int, str, str]]:
    with sqlite3.connect(f"file:{home / 'agent-vault.db'}?mode=ro", uri=True) as conn:
        return list(conn.execute("SELECT seq, record, hash FROM audit_events ORDER BY seq"))


def metric(text: str, name: str, **labels: str) -> float:
    """The value of one sample in Prometheus text output (0 when absent)."""
    for line in text.splitlines():
        if not line.startswith(name + "{") and not line.startswith(name + " "):
            continue
        got = dict(re.findall(r'(\w+)="([^"]*)"', line.split("}")[0])) if "{" in line else {}
        if got == labels:
            return float(line.rsplit(" ", 1)[1])
    return 0.0


def metrics_text(server: ServerProc) -> str:
    r = httpx.get(server.api + "/metrics", trust_env=False)
    assert r.status_code == 200, r.text
    return r.text


def cli_env(server: ServerProc, home: Path | None = None) -> dict[str, str]:
    env = {
        **server.env,
        "AGENT_VAULT_ADDR": server.api,
        "AGENT_VAULT_TOKEN": server.owner_token,
        "COLUMNS": "300",
    }  # rich tables wrap to 80 columns without a terminal
    if home is not None:
        env["AGENT_VAULT_HOME"] = str(home)
    return env


# -- records: decisions, fields, no values ---------------------------------------------------------


def test_proxy_and_admin_records_name_things_never_values(rserver: ServerProc, upstream: TLSUpstream) -> None:
    server = rserver
    server.set_credential("API_TOKEN", SECRET)
    server.add_service(
        {
            "name": "echo-api",
            "host": "localhost",
            "port": upstream.port,
            "auth": {"type": "bearer", "token": "API_TOKEN"},
        }
    )
    server.add_service(
        {
            "name": "read-only",
            "host": "api.upstream.test",
            "methods": ["GET"],
            "auth": {"type": "bearer", "token": "API_TOKEN"},
        }
    )
    token = server.make_agent("audit-bot")
    with server.http() as c:
        r = c.post("/v1/agents/audit-bot/rotate", json={"password": OWNER_PASSWORD, "grace_seconds": 60})
        assert r.status_code == 200, r.text
        rotated = r.json()["token"]
    with agent_client(server, rotated) as c:
        r = c.get(f"https://localhost:{upstream.port}/echo/hello?q={QUERY_MARKER}&k={SECRET[:6]}")
        assert r.status_code == 200 and SECRET not in r.text
        denied = c.post(f"https://api.upstream.test:{upstream.port}/echo/write?q={QUERY_MARKER}", json={})
        assert denied.status_code == 403 and denied.json()["error"] == "method_not_allowed"
    with agent_client(server, rotated) as c:  # unmatched host, default policy tunnel: no TLS termination
        r = c.get(f"https://other.upstream.test:{upstream.port}/echo/tunnelled?q={QUERY_MARKER}")
        assert r.status_code == 200
    assert upstream.requests_seen.wait_for(2)[0]["headers"]  # the upstream got both allowed requests

    def proxy_recs() -> list[dict[str, Any]]:
        return [r for r in all_records(server) if r["kind"].startswith("proxy.")]

    # the tunnel record is written when the proxy sees the client go away
    wait_until(lambda: len(proxy_recs()) >= 3, "three proxy.* audit records", timeout=10)
    recs = all_records(server)
    proxy = [r for r in recs if r["kind"].startswith("proxy.")]
    assert len(proxy) == 3, proxy
    for rec in proxy:
        assert set(rec) >= PROXY_FIELDS, PROXY_FIELDS - set(rec)
        assert rec["actor"] == "agent:audit-bot" and rec["vault"] == "default"
        assert isinstance(rec["bytes_up"], int) and isinstance(rec["bytes_down"], int), rec
        assert isinstance(rec["duration_ms"], int | float)
    by_decision = {r["decision"]: r for r in proxy}
    assert set(by_decision) == {"injected", "denied", "tunnel"}

    inj = by_decision["injected"]
    assert (inj["kind"], inj["method"], inj["scheme"], inj["host"], inj["port"]) == (
        "proxy.request",
        "GET",
        "https",
        "localhost",
        upstream.port,
    )
    assert inj["path"] == "/echo/hello"  # no query string
    assert (inj["service"], inj["auth_type"], inj["injected_keys"], inj["status"], inj["error"]) == (
        "echo-api",
        "bearer",
        ["API_TOKEN"],
        200,
        None,
    )
    assert inj["redacted_keys"] == ["API_TOKEN"]  # the echo reflected the header: redacted, key named
    assert inj["http_version"] in ("HTTP/1.1", "HTTP/2.0", "HTTP/2") and inj["bytes_down"] > 0

    den = by_decision["denied"]
    assert (den["kind"], den["method"], den["host"], den["path"], den["status"], den["error"]) == (
        "proxy.request",
        "POST",
        "api.upstream.test",
        "/echo/write",
        403,
        "method_not_allowed",
    )
    assert den["injected_keys"] == []

    tun = by_decision["tunnel"]
    assert (tun["kind"], tun["host"], tun["port"], tun["service"], tun["injected_keys"]) == (
        "proxy.tunnel",
        "other.upstream.test",
        upstream.port,
        None,
        [],
    )
    assert tun["status"] == 200 and tun["duration_ms"] > 0 and tun["path"] is None

    admin = {r["kind"]: r for r in recs if not r["kind"].startswith("proxy.")}
    assert {"server.start", "credential.set", "service.add", "agent.create", "agent.rotate"} <= set(admin)
    for rec in admin.values():
        assert set(rec) == ADMIN_FIELDS, rec
    assert admin["credential.set"]["target"] == "API_TOKEN" and admin["credential.set"]["vault"] == "default"
    assert admin["agent.create"]["target"] == "audit-bot" and admin["agent.rotate"]["target"] == "audit-bot"
    assert admin["credential.set"]["actor"] == "user:owner@example.com"

    # the vault log API and the CLI show the same records
    with server.http() as c:
        page = c.get("/v1/vaults/default/logs", params={"decision": "denied"}).json()
        assert [r["seq"] for r in page["logs"]] == [den["seq"]]
        assert page["latest_seq"] >= max(r["seq"] for r in recs)
        page = c.get("/v1/vaults/default/logs", params={"service": "echo-api", "status": "2xx"}).json()
        assert [r["seq"] for r in page["logs"]] == [inj["seq"]]
        page = c.get("/v1/vaults/default/logs", params={"host": "Other.Upstream.TEST."}).json()
        assert [r["seq"] for r in page["logs"]] == [tun["seq"]]  # exact host, normalised like matching
    lines = server.cli(
        "logs", "--json", "--host", "API.upstream.test", env=cli_env(server)
    ).stdout.splitlines()
    assert [json.loads(x)["seq"] for x in lines] == [den["seq"]]
    table = server.cli("logs", "--limit", "100", env=cli_env(server)).stdout
    assert "echo-api" in table and "method_not_allowed" in table and "other.upstream.test" in table
    lines = server.cli("logs", "--json", "--decision", "injected", env=cli_env(server)).stdout.splitlines()
    assert [json.loads(x)["seq"] for x in lines] == [inj["seq"]]
    verify = server.cli("logs", "verify", env=cli_env(server))
    assert re.fullmatch(r"ok: \d+ records, head [0-9a-f]{64}\n", verify.stdout), verify.stdout
    export = server.tmp / "export.jsonl"
    server.cli("logs", "export", "-o", str(export), env=cli_env(server))
    assert stat.S_IMODE(export.stat().st_mode) == 0o600
    exported = [json.loads(x) for x in export.read_text().splitlines()]
    assert [r["seq"] for r in exported] == list(range(1, len(exported) + 1)) and len(exported) >= len(recs)

    assert server.stop() == 0
    texts = [text for _, text, _ in db_rows(server.home)]
    outputs = [*texts, server.stderr_text(), table, "\n".join(lines), verify.stdout, export.read_text()]
    for needle in (SECRET, QUERY_MARKER, token, rotated, OWNER_PASSWORD, SECRET[:6] + "&"):
        for text in outputs:
            assert needle not in text


def test_dry_run_records_would_deny_and_forwards(rserver: ServerProc, upstream: TLSUpstream) -> None:
    server = rserver
    with server.http() as c:
        r = c.patch(
            "/v1/vaults/default",
            json={"password": OWNER_PASSWORD, "unmatched_policy": "deny", "enforcement": "dry-run"},
        )
        assert r.status_code == 200, r.text
    token = server.make_agent("dry-bot")
    before = metrics_text(server)
    with agent_client(server, token) as c:
        r = c.get(f"https://localhost:{upstream.port}/echo/dry?x=1")
        assert r.status_code == 200  # would be denied under enforce: passes, uninjected
    assert upstream.requests_seen.wait_for(1)[-1]["path"] == "/echo/dry?x=1"
    recs = [r for r in all_records(server, kind="proxy.request") if r["actor"] == "agent:dry-bot"]
    assert len(recs) == 1
    rec = recs[0]
    assert (rec["decision"], rec["would_deny_code"], rec["status"], rec["injected_keys"], rec["path"]) == (
        "would_deny",
        "service_not_allowed",
        200,
        [],
        "/echo/dry",
    )
    settings = all_records(server, kind="vault.settings")
    assert settings and "owner-password" not in json.dumps(settings)
    after = metrics_text(server)
    labels = {"vault": "default", "decision": "would_deny", "status_class": "2xx"}
    assert metric(after, "agent_vault_proxy_requests_total", **labels) == (
        metric(before, "agent_vault_proxy_requests_total", **labels) + 1
    )


def test_tunnel_record_counts_bytes(rserver: ServerProc, upstream: TLSUpstream) -> None:
    """SPEC §5.3: one audit record per tunnel, with bytes and duration."""
    server = rserver
    token = server.make_agent("tunnel-bot")
    with agent_client(server, token) as c:
        assert c.get(f"https://other.upstream.test:{upstream.port}/download?bytes=20000").status_code == 200
    wait_until(lambda: all_records(server, kind="proxy.tunnel"), "a proxy.tunnel audit record", timeout=10)
    (tun,) = all_records(server, kind="proxy.tunnel")
    assert tun["bytes_down"] > 20000 and tun["bytes_up"] > 0, tun  # TLS bytes relayed both ways


# -- tamper detection, offline ---------------------------------------------------------------------


def _case(src: Path, dst: Path, *statements: str) -> Path:
    """A fresh copy of the stopped server's home with `statements` applied to its DB."""
    shutil.copytree(src, dst)
    with sqlite3.connect(dst / "agent-vault.db") as conn:
        for s in statements:
            conn.execute(s)
    return dst


def test_tampering_is_detected_offline(server: ServerProc, tmp_path: Path) -> None:
    for i in range(12):
        server.set_credential(f"KEY_{i}", f"value-{i}-long-enough")
    assert flush(server)["ok"]
    assert server.stop() == 0
    n = len(db_rows(server.home))
    assert n >= 14  # server.start + 12 credential.set + server.stop
    dead = "http://127.0.0.1:9"  # nothing listens: the CLI falls back to reading the DB

    def verify(home: Path, *args: str) -> Any:
        env = {**server.env, "AGENT_VAULT_ADDR": dead, "AGENT_VAULT_HOME": str(home)}
        return server.cli("logs", "verify", *args, env=env, check=False)

    ok = verify(_case(server.home, tmp_path / "intact"))
    assert ok.returncode == 0, ok.stderr
    assert ok.stdout.startswith(f"ok: {n} records, head ") and "offline" in ok.stderr

    edited = verify(
        _case(
            server.home,
            tmp_path / "edit",
            "UPDATE audit_events SET record = replace(record, 'KEY_', 'KEY_X') WHERE seq = 8",
        )
    )
    assert edited.returncode == 1 and "seq 8" in edited.stdout and "edited" in edited.stdout, edited.stdout

    deleted = verify(_case(server.home, tmp_path / "delete", "DELETE FROM audit_events WHERE seq = 6"))
    assert deleted.returncode == 1 and "seq 7" in deleted.stdout and "deleted" in deleted.stdout, (
        deleted.stdout
    )

    swapped = verify(
        _case(
            server.home,
            tmp_path / "swap",
            "UPDATE audit_events SET seq = -1 WHERE seq = 4",
            "UPDATE audit_events SET seq = 4 WHERE seq = 5",
            "UPDATE audit_events SET seq = 5 WHERE seq = -1",
        )
    )
    assert swapped.returncode == 1 and "seq 4" in swapped.stdout and "reordered" in swapped.stdout, (
        swapped.stdout
    )

    cut = verify(_case(server.home, tmp_path / "truncate", f"DELETE FROM audit_events WHERE seq >= {n - 1}"))
    assert cut.returncode == 1 and "truncated" in cut.stdout, cut.stdout

    as_json = verify(tmp_path / "edit", "--json")
    assert json.loads(as_json.stdout) | {"mode": "offline"} == {
        "ok": False,
        "checked": 7,
        "head": json.loads(as_json.stdout)["head"],
        "first_bad_seq": 8,
        "reason": "edited",
        "mode": "offline",
    }
    head = ok.stdout.split()[-1]
    assert verify(tmp_path / "intact", "--expect-head", head).returncode == 0
    assert verify(tmp_path / "intact", "--expect-head", "ab" * 32).returncode == 1


# -- crash, load, metrics --------------------------------------------------------------------------


def test_kill9_during_load_leaves_a_verifiable_chain(rserver: ServerProc, upstream: TLSUpstream) -> None:
    server = rserver
    server.set_credential("API_TOKEN", SECRET)
    server.add_service(
        {
            "name": "echo-api",
            "host": "localhost",
            "port": upstream.port,
            "auth": {"type": "bearer", "token": "API_TOKEN"},
        }
    )
    token = server.make_agent("crash-bot")
    stop = threading.Event()
    sent = [0]

    def load() -> None:
        with agent_client(server, token) as c:
            while not stop.is_set():
                try:
                    c.get(f"https://localhost:{upstream.port}/echo/x")
                    sent[0] += 1
                except httpx.HTTPError:
                    return

    threads = [threading.Thread(target=load) for _ in range(4)]
    for t in threads:
        t.start()
    wait_until(lambda: sent[0] >= 200, "200 proxied requests before the kill", timeout=20)
    server.kill9()
    stop.set()
    for t in threads:
        t.join(10)
    server.start()
    result = flush(server)
    assert result["ok"], result
    recs = all_records(server, kind="proxy.request")
    assert 0 < len(recs) <= sent[0] + 4
    assert {r["decision"] for r in recs} == {"injected"}
    assert server.cli("logs", "verify", env=cli_env(server)).returncode == 0
    assert server.stop() == 0
    dead = {**server.env, "AGENT_VAULT_ADDR": "http://127.0.0.1:9"}
    assert server.cli("logs", "verify", env=dead).stdout.startswith("ok: ")


def test_load_produces_exactly_one_record_per_request(rserver: ServerProc, upstream: TLSUpstream) -> None:
    server = rserver
    server.set_credential("API_TOKEN", SECRET)
    server.add_service(
        {
            "name": "echo-api",
            "host": "localhost",
            "port": upstream.port,
            "auth": {"type": "bearer", "token": "API_TOKEN"},
        }
    )
    token = server.make_agent("load-bot")
    before = metrics_text(server)
    started = time.monotonic()
    with agent_client(server, token) as c:
        for i in range(LOAD):
            assert c.get(f"https://localhost:{upstream.port}/echo/{i}").status_code == 200
    elapsed = time.monotonic() - started
    assert elapsed < 60 or LOAD > 1000
    with server.http() as c:
        seqs: list[int] = []
        cursor = 0
        flush(server)
        while True:
            page = c.get(
                "/v1/vaults/default/logs", params={"agent": "load-bot", "after": cursor, "limit": 500}
            ).json()
            seqs += [r["seq"] for r in page["logs"] if r["kind"] == "proxy.request"]
            if not page["logs"]:
                break
            cursor = page["next_cursor"]
    assert len(seqs) == LOAD == len(set(seqs))
    result = flush(server)
    assert result["ok"] and result["checked"] >= LOAD + 4, result
    after = metrics_text(server)
    for name, labels in (
        (
            "agent_vault_proxy_requests_total",
            {"vault": "default", "decision": "injected", "status_class": "2xx"},
        ),
        ("agent_vault_injections_total", {"vault": "default", "auth_type": "bearer"}),
    ):
        assert metric(after, name, **labels) - metric(before, name, **labels) == LOAD, name
    assert metric(after, "agent_vault_audit_dropped_total") == 0


def _h2_streams(server: ServerProc, token: str, authority: str, paths: list[str]) -> dict[str, int]:
    """GET every path on ONE HTTP/2 connection through the proxy, all streams opened before any answer
    is read (multiplexed); returns path -> status."""
    with RawConn(server.proxy_port) as conn:
        assert conn.connect(authority, {"Proxy-Authorization": basic(token)}).status == 200
        tls = conn.start_tls(authority.rsplit(":", 1)[0], server.ca_bundle, alpn=["h2"])
        assert tls.selected_alpn_protocol() == "h2"
        h2c = h2.connection.H2Connection(config=h2.config.H2Configuration(client_side=True))
        h2c.initiate_connection()
        streams: dict[int, str] = {}
        for p in paths:
            sid = h2c.get_next_available_stream_id()
            streams[sid] = p
            head = [(":method", "GET"), (":scheme", "https"), (":authority", authority), (":path", p)]
            h2c.send_headers(sid, head, end_stream=True)
        tls.sendall(h2c.data_to_send())
        status: dict[str, int] = {}
        ended: set[int] = set()
        while len(ended) < len(streams):
            data = tls.recv(65536)
            assert data, f"the proxy closed the connection with streams {set(streams) - ended} open"
            for ev in h2c.receive_data(data):
                if isinstance(ev, h2.events.ResponseReceived) and ev.stream_id is not None:
                    status[streams[ev.stream_id]] = int(dict(ev.headers)[b":status"])
                elif isinstance(ev, h2.events.DataReceived) and ev.stream_id is not None:
                    h2c.acknowledge_received_data(ev.flow_controlled_length, ev.stream_id)
                elif isinstance(ev, h2.events.StreamEnded | h2.events.StreamReset) and ev.stream_id:
                    ended.add(ev.stream_id)
            tls.sendall(h2c.data_to_send())
        return status


def test_multiplexed_h2_streams_and_a_websocket_give_exactly_one_record_each(
    rserver: ServerProc, upstream: TLSUpstream
) -> None:
    """SPEC §14.12 where one connection carries many requests at once (HTTP/2 streams on the engine)
    and where one request lives long (a WebSocket session: its upgrade, messages and end): N streams
    and one WebSocket give exactly N + 1 `proxy.request` records, one per path, no duplicates."""
    server = rserver
    server.set_credential("API_TOKEN", SECRET)
    server.add_service(
        {
            "name": "mux-api",
            "host": "localhost",
            "port": upstream.port,
            "auth": {"type": "bearer", "token": "API_TOKEN"},
        }
    )
    token = server.make_agent("mux-bot")
    n = 12
    paths = [f"/echo/mux-{i}" for i in range(n)]
    assert _h2_streams(server, token, f"localhost:{upstream.port}", paths) == dict.fromkeys(paths, 200)
    assert sorted(upstream.requests_seen.paths()) == sorted(paths)  # each stream went upstream once
    url = f"wss://localhost:{upstream.port}/ws"
    with ws_via_proxy(server.proxy_port, token, url, str(server.ca_bundle), close_timeout=2) as ws:
        ws.recv(timeout=10)
        for i in range(3):
            ws.send(f"message {i}")
            ws.recv(timeout=10)

    def mine() -> list[dict[str, Any]]:
        return [r for r in all_records(server, kind="proxy.request") if r["actor"] == "agent:mux-bot"]

    wait_until(lambda: len(mine()) >= n + 1, f"{n + 1} proxy.request records", timeout=10)
    time.sleep(0.5)  # scenario: give a duplicate (e.g. at the WebSocket's end) the time to be written
    recs = mine()
    assert sorted(r["path"] for r in recs) == sorted([*paths, "/ws"]), [r["path"] for r in recs]
    assert len({r["seq"] for r in recs}) == n + 1
    assert {r["http_version"] for r in recs if r["path"] in paths} == {"HTTP/2.0"}
    assert all(r["status"] in (101, 200) and r["decision"] == "injected" for r in recs), recs


# -- health, ready, metrics, permissions -------------------------------------------------------


def test_health_ready_and_metrics_format(server: ServerProc) -> None:
    assert httpx.get(server.api + "/health").json() == {"status": "ok"}
    ready = httpx.get(server.api + "/ready")
    assert ready.status_code == 200
    assert ready.json()["proxy"] is True and ready.json()["db"] is True
    r = httpx.get(server.api + "/metrics")
    assert r.status_code == 200
    assert r.headers["content-type"].startswith("text/plain; version=0.0.4")
    for name in (
        "agent_vault_proxy_requests_total",
        "agent_vault_audit_queue_depth",
        "agent_vault_audit_dropped_total",
        "agent_vault_active_connections",
    ):
        assert f"# TYPE {name.removesuffix('_total')}" in r.text or f"# TYPE {name}" in r.text, name


def test_proposals_pending_gauge(server: ServerProc) -> None:
    token = server.make_agent("proposer")
    assert metric(metrics_text(server), "agent_vault_proposals_pending", vault="default") == 0
    with server.http(token) as c:
        r = c.post(
            "/v1/proposals",
            json={
                "services": [
                    {
                        "action": "set",
                        "name": "stripe",
                        "host": "api.stripe.com",
                        "auth": {"type": "bearer", "token": "STRIPE_KEY"},
                    }
                ],
                "credentials": [{"action": "set", "key": "STRIPE_KEY", "description": "test key"}],
                "message": "need stripe",
            },
        )
        assert r.status_code == 201, r.text
    assert metric(metrics_text(server), "agent_vault_proposals_pending", vault="default") == 1
    assert [r["target"] for r in all_records(server, kind="proposal.create")]


def test_retention_prunes_at_start_and_the_chain_still_verifies(
    tmp_path: Path, upstream_ca: trustme.CA
) -> None:
    server = ServerProc(tmp_path, upstream_ca, extra_args=("--audit-retention-days", "30"))
    server.init()
    engine = create_engine(f"sqlite:///{server.home / 'agent-vault.db'}")
    writer = AuditWriter(engine, server.home / "audit.head")
    writer.start()
    old = utc_ts(datetime.now(UTC) - timedelta(days=40))
    for i in range(5):
        assert writer.submit(
            admin_record("credential.set", "user:owner@example.com", "default", f"OLD_{i}", ts=old)
        )
    writer.close()
    engine.dispose()
    server.start()
    try:
        wait_until(lambda: all_records(server, kind="audit.prune"), "an audit.prune record", timeout=10)
        recs = all_records(server)
        (mark,) = [r for r in recs if r["kind"] == "audit.prune"]
        assert mark["details"]["last_deleted_seq"] == 5 and mark["details"]["deleted"] == 5
        assert not [r for r in recs if str(r.get("target", "")).startswith("OLD_")]
        assert recs[0]["seq"] == 6
        result = flush(server)
        assert result["ok"] and result["checked"] == len(recs), result
    finally:
        assert server.stop() == 0
    dead = {**server.env, "AGENT_VAULT_ADDR": "http://127.0.0.1:9"}
    assert server.cli("logs", "verify", env=dead).stdout.startswith("ok: ")


def test_metrics_need_a_token_off_loopback(tmp_path: Path, upstream_ca: trustme.CA) -> None:
    with ServerProc(
        tmp_path,
        upstream_ca,
        extra_args=("--host", "0.0.0.0"),
        env={"AGENT_VAULT_METRICS_TOKEN": "scrape-token-0123456789"},
    ) as server:
        url = server.api.replace("0.0.0.0", "127.0.0.1") + "/metrics"
        assert httpx.get(url).status_code == 401
        assert httpx.get(url, headers={"Authorization": "Bearer wrong"}).status_code == 401
        ok = httpx.get(url, headers={"Authorization": "Bearer scrape-token-0123456789"})
        assert ok.status_code == 200 and "agent_vault_proxy_requests_total" in ok.text
        assert httpx.get(url, headers={"Authorization": f"Bearer {server.owner_token}"}).status_code == 200
        agent = server.make_agent("peeker", role="member")
        assert httpx.get(url, headers={"Authorization": f"Bearer {agent}"}).status_code == 403


def test_log_permissions_paging_and_follow(server: ServerProc) -> None:
    proxy_agent = server.make_agent("proxy-role")
    member_agent = server.make_agent("member-role", role="member")
    for i in range(7):
        server.set_credential(f"KEY_{i}", f"value-{i}-long-enough")
    flush(server)
    with server.http(proxy_agent) as c:
        assert c.get("/v1/vaults/default/logs").status_code == 403
        assert c.post("/v1/audit/verify").status_code == 403
    with server.http(member_agent) as c:
        page = c.get("/v1/vaults/default/logs", params={"limit": 3}).json()
        assert [r["target"] for r in page["logs"]] == ["KEY_4", "KEY_5", "KEY_6"]
        older = c.get("/v1/vaults/default/logs", params={"limit": 3, "before": page["next_cursor"]}).json()
        assert [r["target"] for r in older["logs"]] == ["KEY_1", "KEY_2", "KEY_3"]
        assert c.get("/v1/audit").status_code == 403
        assert c.get("/v1/vaults/default/logs", params={"status": "bogus"}).status_code == 422
        assert c.get("/v1/vaults/default/logs", params={"limit": 501}).status_code == 422
        assert c.get("/v1/vaults/nope/logs").status_code == 403
    with server.http() as c:
        assert c.get("/v1/vaults/nope/logs").status_code == 404
        creds = c.get("/v1/audit", params={"kind": "credential.*", "after_seq": 0}).json()["records"]
        assert [r["target"] for r in creds] == [f"KEY_{i}" for i in range(7)]
    env = cli_env(server)
    follower = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "agent_vault",
            "--json",
            "logs",
            "follow",
            "--backlog",
            "0",
            "--interval",
            "0.2",
            "--max-seconds",
            "3",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )
    assert follower.stderr is not None
    assert "following vault default" in follower.stderr.readline()  # its first page is read
    server.set_credential("FOLLOWED_KEY", "followed-value-123")
    stdout, stderr = follower.communicate(timeout=30)
    assert follower.returncode == 0, stderr
    followed = [json.loads(x) for x in stdout.splitlines()]
    assert [r["target"] for r in followed] == ["FOLLOWED_KEY"]
    assert "followed-value-123" not in stdout
