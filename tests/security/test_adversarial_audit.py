"""An agent tries to dodge or flood the audit log (SPEC §12, §14.12).

* Odd bytes: requests whose path, method or headers are not valid UTF-8 (raw `\\xff\\xfe`, a lone
  continuation byte, overlong and surrogate encodings, NUL, terminal escapes), sent through the proxy to
  an injecting service in every ingress form (CONNECT + TLS, absolute-form). For each, either the
  upstream received the request (with the injected credential) AND an audit record names it with the
  odd bytes escaped, or the proxy refused it AND the refusal is recorded. Nothing is forwarded without a
  record, and the chain still verifies (`agent-vault logs verify`).
* Flooding: a client without a valid token cannot grow the audit log one row per attempt: its refusals
  (407) are summarised per time window and cause, with a count.
"""

from __future__ import annotations

import base64
import http.client
import json
import re
import secrets
import socket
import sqlite3
import ssl
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import trustme
from helpers.proxy import _FileSock, basic
from security.conftest import (
    Sweep,
    SweptConn,
    SweptServer,
    new_secret,
    proxy_error,
    start_server,
)

V: dict[str, str] = {}
OUTCOMES: dict[str, str] = {}  # case -> forwarded | refused | summarised (printed by the last test)
SUMMARY_KIND = "proxy.refused"

# (case id, raw path suffix after /echo/<id>/, the path the audit record must show)
ODD_PATHS = [
    ("ffe", b"\xff\xfe", "%FF%FE"),
    ("cont", b"\x80", "%80"),
    ("overlong2", b"\xc0\xaf", "%C0%AF"),
    ("overlong3", b"\xe0\x80\xaf", "%E0%80%AF"),
    ("surrogate", b"\xed\xa0\x80x", "%ED%A0%80x"),
    ("truncated", b"ab\xe2\x82", "ab%E2%82"),
    ("nul", b"a\x00b", "a%00b"),
    ("esc", b"\x1b[31mred", "%1B[31mred"),
    ("mixed", "caf\u00e9-".encode() + b"\xff", "caf\u00e9-%FF"),
]


class RawUpstream:
    """A TLS upstream that keeps every request head byte for byte (an HTTP library would refuse the
    odd ones before logging them) and answers each with a small 200, closing the connection."""

    def __init__(self, ca: trustme.CA) -> None:
        self.ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        ca.issue_cert("*.upstream.test").configure_cert(self.ctx)
        self.ctx.set_alpn_protocols(["http/1.1"])
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.port = int(self.sock.getsockname()[1])
        self.heads: list[bytes] = []
        self.connections = 0
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self._serve, daemon=True)

    def __enter__(self) -> RawUpstream:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.sock.close()
        self._thread.join(5)

    def snapshot(self) -> list[bytes]:
        with self._lock:
            return list(self.heads)

    def clear(self) -> None:
        with self._lock:
            self.heads.clear()

    def _serve(self) -> None:
        while True:
            try:
                client, _ = self.sock.accept()
            except OSError:
                return
            threading.Thread(target=self._one, args=(client,), daemon=True).start()

    def _one(self, client: socket.socket) -> None:
        with self._lock:
            self.connections += 1
        try:
            client.settimeout(10)
            with self.ctx.wrap_socket(client, server_side=True) as tls:
                data = b""
                while b"\r\n\r\n" not in data:
                    chunk = tls.recv(65536)
                    if not chunk:
                        return
                    data += chunk
                with self._lock:
                    self.heads.append(data.split(b"\r\n\r\n", 1)[0])
                tls.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok")
        except OSError:
            pass


@pytest.fixture(scope="module")
def up(upstream_ca: trustme.CA) -> Iterator[RawUpstream]:
    with RawUpstream(upstream_ca) as u:
        yield u


@pytest.fixture(scope="module")
def srv(
    tmp_path_factory: pytest.TempPathFactory, upstream_ca: trustme.CA, sweep: Sweep, up: RawUpstream
) -> Iterator[SweptServer]:
    for s in start_server(tmp_path_factory, upstream_ca, sweep, "auditdodge"):
        V["API_KEY"] = new_secret()
        s.set_credential("API_KEY", V["API_KEY"])
        s.add_service(
            {
                "name": "api",
                "host": "api.upstream.test",
                "port": up.port,
                "auth": {"type": "bearer", "token": "API_KEY"},
            }
        )
        s.cli_login()
        yield s


@pytest.fixture(scope="module")
def token(srv: SweptServer) -> str:
    return srv.make_agent("odd-bot")


@pytest.fixture(autouse=True)
def _clear(up: RawUpstream) -> None:
    up.clear()


# -- helpers ------------------------------------------------------------------------------------------


def raw_request(conn: SweptConn, head: bytes, method: str = "GET") -> tuple[int, dict[str, str], bytes]:
    """Send a request head exactly as given (no encoding on the way) and read one answer."""
    conn.send(head)
    r = http.client.HTTPResponse(_FileSock(conn.f), method=method)  # type: ignore[arg-type]
    r.begin()
    body = r.read()
    hdrs = r.getheaders()
    conn.sweep.record(
        f"raw bytes {head[:80]!r} -> {r.status}",
        "\n".join(f"{k}: {v}" for k, v in hdrs).encode() + b"\n" + body,
    )
    return r.status, {k.lower(): v for k, v in hdrs}, body


def records(home: Path) -> list[dict[str, Any]]:
    """Every stored record (newest last), checked to be strict UTF-8 JSON without odd characters."""
    db = sqlite3.connect(f"file:{home / 'agent-vault.db'}?mode=ro", uri=True, timeout=10)
    try:
        rows = db.execute("SELECT record FROM audit_events ORDER BY seq").fetchall()
    finally:
        db.close()
    out = []
    for (text,) in rows:
        text.encode("utf-8")  # strict: no lone surrogates
        assert not re.search(r"[\x00-\x1f\x7f]", text), text  # control characters are escaped
        out.append(json.loads(text))
    return out


def flushed(srv: SweptServer) -> list[dict[str, Any]]:
    """Flush the writer and verify the chain (POST /v1/audit/verify); then every record."""
    with srv.http() as c:
        r = c.post("/v1/audit/verify", timeout=60)
    assert r.status_code == 200 and r.json()["ok"], r.text
    return records(srv.home)


def cli_verify(srv: SweptServer) -> None:
    cp = srv.cli("logs", "verify", check=False)
    assert cp.returncode == 0 and cp.stdout.startswith("ok: "), (cp.stdout, cp.stderr)


def forwarded(up: RawUpstream, marker: str) -> list[bytes]:
    """Request heads the upstream received whose request line contains `marker`."""
    return [h for h in up.snapshot() if marker.encode() in h.split(b"\r\n", 1)[0]]


def head_values(head: bytes, name: bytes) -> list[bytes]:
    pairs = (line.partition(b":") for line in head.split(b"\r\n")[1:])
    return [v.strip() for k, _, v in pairs if k.strip().lower() == name]


def last_seq(srv: SweptServer) -> int:
    recs = flushed(srv)
    return int(recs[-1]["seq"]) if recs else 0


def judge(
    srv: SweptServer,
    up: RawUpstream,
    seq0: int,
    marker: str,
    answer: tuple[int, dict[str, str], bytes],
    want_path: str,
) -> str:
    """The audit invariant for one odd request sent after record `seq0`:

    * forwarded => the credential was injected AND one record names it, with `want_path` (escaped);
    * refused => the answer is the proxy's (SPEC §6) and the refusal is recorded: its own record (with
      `want_path`) when the sender was identified, else counted in a `proxy.refused` summary (the
      engine refuses an unparsable head before anyone is identified).

    Returns "forwarded", "refused" or "summarised"."""
    status, headers, body = answer
    time.sleep(0.2)  # the upstream's log is written after it answered
    seen = forwarded(up, marker)
    new = [r for r in flushed(srv) if r["seq"] > seq0]
    recs = [r for r in new if r.get("kind") == "proxy.request" and marker in str(r.get("path"))]
    if seen:
        assert len(seen) == 1, seen
        assert head_values(seen[0], b"authorization") == [f"Bearer {V['API_KEY']}".encode()]
        assert len(recs) == 1, (marker, new)
        rec = recs[0]
        assert rec["decision"] == "injected" and rec["injected_keys"] == ["API_KEY"], rec
        assert rec["actor"] == "agent:odd-bot" and rec["status"] == status, rec
        assert rec["path"] == want_path, (rec["path"], want_path)
        return "forwarded"
    code = proxy_error(status, headers, body)  # not forwarded: the proxy answered, per SPEC §6
    if recs:
        assert [(r["error"], r["status"], r["decision"]) for r in recs] == [(code, status, "denied")], recs
        assert recs[0]["path"] == want_path, (recs[0]["path"], want_path)
        return "refused"
    summaries = [r for r in new if r["kind"] == SUMMARY_KIND and r["error"] == code]
    assert summaries and summaries[0]["status"] == status, (marker, code, new)
    return "summarised"


def tunnel(srv: SweptServer, up: RawUpstream, token: str) -> SweptConn:
    conn = srv.raw()
    r = conn.connect(f"api.upstream.test:{up.port}", {"Proxy-Authorization": basic(token)})
    assert r.status == 200, r
    conn.start_tls("api.upstream.test", srv.ca_bundle)
    return conn


# -- odd bytes ----------------------------------------------------------------------------------------


@pytest.mark.parametrize(("case", "raw", "shown"), ODD_PATHS, ids=[c[0] for c in ODD_PATHS])
def test_odd_path_inside_connect_is_forwarded_only_with_its_record(
    srv: SweptServer, up: RawUpstream, token: str, case: str, raw: bytes, shown: str
) -> None:
    marker, seq0 = f"/echo/t-{case}/", last_seq(srv)
    with tunnel(srv, up, token) as conn:
        head = b"GET " + marker.encode() + raw + b"?q=\xff HTTP/1.1\r\nHost: api.upstream.test\r\n\r\n"
        answer = raw_request(conn, head)
    OUTCOMES[f"connect {case}"] = judge(srv, up, seq0, marker, answer, marker + shown)


@pytest.mark.parametrize(("case", "raw", "shown"), ODD_PATHS, ids=[c[0] for c in ODD_PATHS])
def test_odd_path_in_absolute_form_is_forwarded_only_with_its_record(
    srv: SweptServer, up: RawUpstream, token: str, case: str, raw: bytes, shown: str
) -> None:
    marker, seq0 = f"/echo/a-{case}/", last_seq(srv)
    target = f"api.upstream.test:{up.port}"
    with srv.raw() as conn:
        head = (
            f"GET https://{target}{marker}".encode()
            + raw
            + f" HTTP/1.1\r\nHost: {target}\r\nProxy-Authorization: {basic(token)}\r\n\r\n".encode()
        )
        answer = raw_request(conn, head)
    OUTCOMES[f"absolute {case}"] = judge(srv, up, seq0, marker, answer, marker + shown)


def refused_and_recorded(
    srv: SweptServer, up: RawUpstream, seq0: int, answer: tuple[int, dict[str, str], bytes]
) -> str:
    """An odd request that carried no recognisable marker: nothing reached the upstream, the answer is
    the proxy's, and the refusal is recorded (its own record, or counted in a summary)."""
    status, headers, body = answer
    code = proxy_error(status, headers, body)
    time.sleep(0.2)
    assert not up.snapshot()
    new = [r for r in flushed(srv) if r["seq"] > seq0]
    own = [r for r in new if r.get("actor") == "agent:odd-bot" and r["kind"].startswith("proxy.")]
    if own:
        assert [(r["error"], r["status"]) for r in own] == [(code, status)], own
        return "refused"
    assert [r for r in new if r["kind"] == SUMMARY_KIND and r["error"] == code], (code, new)
    return "summarised"


@pytest.mark.parametrize(
    "value",
    [b"\xff\xfe\x80", b"\xc0\xaf\xed\xa0\x80", b"ok\x00nul", b"\x1b]0;title\x07"],
    ids=["invalid", "overlong", "nul", "osc"],
)
def test_odd_header_values_are_forwarded_only_with_a_record(
    srv: SweptServer, up: RawUpstream, token: str, value: bytes
) -> None:
    """User-Agent, a custom header and X-Vault with odd bytes (header values are never recorded)."""
    marker, seq0 = f"/echo/h-{secrets.token_hex(4)}", last_seq(srv)
    with tunnel(srv, up, token) as conn:
        head = f"GET {marker} HTTP/1.1\r\nHost: api.upstream.test\r\n".encode()
        head += b"User-Agent: agent/" + value + b"\r\nX-Odd: " + value + b"\r\n\r\n"
        answer = raw_request(conn, head)
    OUTCOMES[f"header {value!r}"] = judge(srv, up, seq0, marker, answer, marker)
    marker, seq0 = f"/echo/h-{secrets.token_hex(4)}", last_seq(srv)
    with tunnel(srv, up, token) as conn:
        head = f"GET {marker} HTTP/1.1\r\nHost: api.upstream.test\r\n".encode()
        head += b"X-Vault: default" + value + b"\r\n\r\n"
        answer = raw_request(conn, head)
    OUTCOMES[f"x-vault {value!r}"] = judge(srv, up, seq0, marker, answer, marker)


def test_odd_method_is_recorded_escaped(srv: SweptServer, up: RawUpstream, token: str) -> None:
    marker, seq0 = f"/echo/m-{secrets.token_hex(4)}", last_seq(srv)
    with tunnel(srv, up, token) as conn:
        head = b"G\xffT " + marker.encode() + b" HTTP/1.1\r\nHost: api.upstream.test\r\n\r\n"
        answer = raw_request(conn, head, "G\xffT")
    OUTCOMES["method"] = outcome = judge(srv, up, seq0, marker, answer, marker)
    if outcome != "summarised":
        rec = [r for r in records(srv.home) if r.get("path") == marker][-1]
        assert rec["method"] == "G\\xFFT", rec["method"]


def test_odd_vault_in_proxy_authorization_is_refused_and_recorded(
    srv: SweptServer, up: RawUpstream, token: str
) -> None:
    """A valid token with a vault name of odd bytes: refused, never forwarded, and recorded."""
    seq0 = last_seq(srv)
    auth = b"Basic " + base64.b64encode(token.encode() + b":def\xffault\x00\x1b[0m")
    target = f"api.upstream.test:{up.port}"
    with srv.raw() as conn:
        head = f"GET https://{target}/echo/v HTTP/1.1\r\nHost: {target}\r\n".encode()
        answer = raw_request(conn, head + b"Proxy-Authorization: " + auth + b"\r\n\r\n")
    OUTCOMES["vault"] = refused_and_recorded(srv, up, seq0, answer)


@pytest.mark.parametrize(
    "host",
    [
        b"api\xff.upstream.test",
        b"api.upstream.test\x00.evil",
        b"\xed\xa0\x80.upstream.test",
        b"api\x1b.upstream.test",
    ],
    ids=["ff", "nul", "surrogate", "esc"],
)
@pytest.mark.parametrize("form", ["connect", "absolute"])
def test_odd_target_hosts_are_refused_and_recorded(
    srv: SweptServer, up: RawUpstream, token: str, host: bytes, form: str
) -> None:
    """A CONNECT or absolute-form target host with odd bytes: refused before any dial, and recorded."""
    seq0 = last_seq(srv)
    target = host + f":{up.port}".encode()
    auth = f"\r\nProxy-Authorization: {basic(token)}\r\n\r\n".encode()
    with srv.raw() as conn:
        if form == "connect":
            answer = raw_request(
                conn, b"CONNECT " + target + b" HTTP/1.1\r\nHost: " + target + auth, "CONNECT"
            )
        else:
            answer = raw_request(
                conn, b"GET https://" + target + b"/echo/x HTTP/1.1\r\nHost: " + target + auth
            )
    OUTCOMES[f"{form} host {host!r}"] = refused_and_recorded(srv, up, seq0, answer)


def test_chain_verifies_after_odd_bytes(srv: SweptServer) -> None:
    print("\n[odd bytes] " + ", ".join(f"{k}: {v}" for k, v in sorted(OUTCOMES.items())))
    flushed(srv)
    cli_verify(srv)
    assert not [r for r in records(srv.home) if r["kind"] == "audit.gap"]


# -- flooding ------------------------------------------------------------------------------------------


def test_bad_token_flood_is_summarised_not_one_row_each(srv: SweptServer, up: RawUpstream) -> None:
    """500 connections with 500 different bad tokens: every one is a 407, none reaches the upstream,
    and the audit log gains a handful of summary rows whose counts add up to at least 500."""
    before = flushed(srv)
    seq0 = before[-1]["seq"]
    target = f"api.upstream.test:{up.port}"
    statuses = []
    for i in range(500):
        guess = basic("av_agt_" + secrets.token_urlsafe(32))
        with srv.raw() as conn:
            if i % 5:
                r = conn.connect(target, {"Proxy-Authorization": guess})
            else:  # the absolute form: no CONNECT, credentials on the request
                r = conn.request(
                    "GET", f"https://{target}/echo/flood", {"Host": target, "Proxy-Authorization": guess}
                )
            statuses.append(r.status)
    assert set(statuses) == {407}, set(statuses)
    assert not up.snapshot()
    # the summary arrives on its own (a timer), without a flush
    deadline = time.monotonic() + 20
    while not [r for r in records(srv.home) if r["seq"] > seq0 and r["kind"] == SUMMARY_KIND]:
        assert time.monotonic() < deadline, "no summary record within 20 s"
        time.sleep(0.2)
    new = [r for r in flushed(srv) if r["seq"] > seq0]
    anonymous = [r for r in new if r.get("actor") == "anonymous"]
    assert len(new) <= 6, [(r["kind"], r.get("count")) for r in new]
    assert all(r["kind"] == SUMMARY_KIND for r in anonymous), anonymous[:3]
    assert sum(r["count"] for r in anonymous) >= 500, anonymous
    for r in anonymous:
        assert r["error"] == "proxy_auth_required" and r["status"] == 407 and r["decision"] == "denied", r
        assert r["clients"] == ["127.0.0.1"], r
        assert r["first_ts"] <= r["last_ts"], r
    assert sum(r["methods"].get("CONNECT", 0) for r in anonymous) == 400
    cli_verify(srv)
