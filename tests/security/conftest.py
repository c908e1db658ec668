"""Adversarial suite (SPEC §14): every test is an agent trying to learn a secret or reach where it should not.

Shared pieces:

* `Sweep` (session fixture `sweep`): remembers every credential value the suite stores (plus its encoded
  forms), every token and password, every API response, proxy response and CLI output the suite saw, and
  every server it started. At the end of the session (and in `test_adversarial_zz_sweep.py`) it greps all
  of that, plus each server's stderr log and stdout, every file of each server home and the decoded audit
  rows, for every value: there must be zero hits. Reveal (`POST .../reveal`) is the one allowed exception
  and is never recorded (use `SweptServer.http(record=False)` for it).
* `SweptServer`: `helpers.server.ServerProc` whose clients, CLI runs and credential writes feed the sweep.
* `SweptConn`: `helpers.proxy.RawConn` whose answers feed the sweep.
* `h2_get`: one HTTP/2 request with a chosen `:authority` on a TLS socket (for `:authority` spoofing).

Names `api.upstream.test`, `evil.upstream.test`, ... resolve to 127.0.0.1 inside the servers only
(AGENT_VAULT_RESOLVE); the upstream certificates cover `*.upstream.test`.
"""

from __future__ import annotations

import base64
import json
import os
import re
import socket
import sqlite3
import ssl
import stat
import subprocess
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any
from urllib.parse import quote, quote_plus

import h2.config
import h2.connection
import h2.events
import httpx
import pytest
import trustme
from helpers.proxy import RawConn, Resp
from helpers.server import MASTER_PASSWORD, OWNER_EMAIL, OWNER_PASSWORD, ServerProc
from helpers.upstream import TLSUpstream, UpstreamRequest, UpstreamResponse

CURL = "/usr/bin/curl"
RESOLVE_NAMES = ("api.upstream.test", "evil.upstream.test", "other.upstream.test", "upstream.test")
RESOLVE = ",".join(f"{n}=127.0.0.1" for n in RESOLVE_NAMES)
# Codes of SPEC §6: anything else from the proxy itself is a contract break.
PROXY_CODES = {
    "proxy_auth_required": 407,
    "vault_required": 400,
    "vault_forbidden": 403,
    "bad_request": 400,
    "invalid_path": 400,
    "insecure_scheme": 403,
    "service_not_allowed": 403,
    "service_disabled": 403,
    "method_not_allowed": 403,
    "ssrf_blocked": 403,
    "body_too_large": 413,
    "headers_too_large": 431,
    "rate_limited": 429,
    "exfiltration_blocked": 403,  # issue #20
    "quota_exceeded": 429,
    "budget_exceeded": 429,
    "credential_not_found": 502,
    "credential_corrupt": 502,
    "substitution_error": 502,
    "upstream_dns": 502,
    "upstream_unreachable": 502,
    "upstream_tls": 502,
    "upstream_timeout": 504,
    "response_too_large": 502,
    "internal": 502,
}


def new_secret(suffix: str = "") -> str:
    """A distinctive credential value nobody could produce by accident."""
    return f"sk-sec-{uuid.uuid4().hex}{suffix}"


def _lower_pct(s: str) -> str:
    return re.sub(r"%[0-9A-F]{2}", lambda m: m.group(0).lower(), s)


def value_forms(value: str) -> set[str]:
    """The value and the encodings under which it would still be readable by an agent."""
    raw = value.encode()
    forms = {
        value,
        quote(value, safe=""),
        _lower_pct(quote(value, safe="")),
        quote(value),
        quote_plus(value, safe=""),
        json.dumps(value)[1:-1],
        base64.b64encode(raw).decode(),
        base64.urlsafe_b64encode(raw).decode().rstrip("="),
    }
    return {f for f in forms if len(f) >= 8}


class Sweep:
    """Collects what the suite saw and greps it for every credential value (SPEC §14.1)."""

    def __init__(self) -> None:
        self.values: dict[str, str] = {}  # form -> label; swept everywhere
        self.server_only: dict[str, str] = {}  # tokens, passwords -> label; swept in server artefacts
        self.texts: list[tuple[str, bytes]] = []
        self.servers: list[ServerProc] = []

    # ---- what must never show up ----------------------------------------------------------------
    def value(self, label: str, value: str | None = None) -> str:
        v = value if value is not None else new_secret()
        for form in value_forms(v):
            self.values[form] = label
        return v

    def basic_pair(self, label: str, user: str, password: str) -> str:
        encoded = base64.b64encode(f"{user}:{password}".encode()).decode()
        self.values[encoded] = f"{label} (basic base64)"
        return encoded

    def secret_token(self, label: str, token: str) -> str:
        """Tokens and passwords: legitimately printed once to their owner, never in server artefacts."""
        self.server_only[token] = label
        return token

    # ---- what the suite saw ---------------------------------------------------------------------
    def record(self, source: str, data: str | bytes | None) -> None:
        if data:
            self.texts.append(
                (source, data.encode("utf-8", "surrogateescape") if isinstance(data, str) else data)
            )

    def record_response(self, source: str, r: httpx.Response) -> None:
        r.read()
        head = "\n".join(f"{k}: {v}" for k, v in r.headers.multi_items())
        self.record(
            f"{source} {r.request.method} {r.request.url} -> {r.status_code}",
            head.encode() + b"\n" + r.content,
        )

    def record_resp(self, source: str, r: Resp) -> None:
        head = "\n".join(f"{k}: {v}" for k, v in r.header_list)
        self.record(f"{source} -> {r.status}", head.encode() + b"\n" + r.body)

    # ---- the grep -------------------------------------------------------------------------------
    def server_artifacts(self) -> Iterator[tuple[str, bytes, bool]]:
        """(source, bytes, tokens_forbidden) for every server: stderr log, stdout (its ready lines and
        anything printed after them), home files, audit rows."""
        for srv in self.servers:
            yield (
                f"{srv.home.parent.name}: server stderr",
                srv.stderr_text().encode("utf-8", "surrogateescape"),
                True,
            )
            yield (
                f"{srv.home.parent.name}: server stdout",
                srv.stdout_text().encode("utf-8", "surrogateescape"),
                True,
            )
            for f in sorted(p for p in srv.home.rglob("*") if p.is_file()):
                rel = f.relative_to(srv.home)
                # the CLI login of the human (cli/session.json) legitimately holds a token
                yield f"{srv.home.parent.name}: home/{rel}", f.read_bytes(), rel.parts[0] != "cli"
            for row in audit_rows(srv.home):
                yield (
                    f"{srv.home.parent.name}: audit seq {row.get('seq')}",
                    json.dumps(row, ensure_ascii=False).encode(),
                    True,
                )

    def hits(self) -> list[str]:
        values = [(f.encode(), label) for f, label in self.values.items()]
        tokens = [(t.encode(), label) for t, label in self.server_only.items()]
        found: list[str] = []
        for source, data in self.texts:
            found += [f"{label} in {source}" for form, label in values if form in data]
        for source, data, tokens_forbidden in self.server_artifacts():
            found += [f"{label} in {source}" for form, label in values if form in data]
            if tokens_forbidden:
                found += [f"{label} in {source}" for t, label in tokens if t in data]
        return sorted(set(found))


def audit_rows(home: Path) -> list[dict[str, Any]]:
    db_file = home / "agent-vault.db"
    if not db_file.exists():
        return []
    db = sqlite3.connect(f"file:{db_file}?mode=ro", uri=True, timeout=10)
    try:
        rows = db.execute("SELECT record FROM audit_events ORDER BY seq").fetchall()
    finally:
        db.close()
    return [json.loads(r[0]) for r in rows]


@pytest.fixture(scope="session")
def sweep() -> Iterator[Sweep]:
    s = Sweep()
    yield s
    hits = s.hits()
    assert not hits, "credential values / tokens leaked:\n" + "\n".join(hits)


# ---- the server under attack ----------------------------------------------------------------------


@contextmanager
def permissive_umask() -> Iterator[None]:
    """Run with umask 0: files must get their SPEC mode from how they are opened (SPEC §2.2, §14.11)."""
    old = os.umask(0)
    try:
        yield
    finally:
        os.umask(old)


class SweptServer(ServerProc):
    """A real `agent-vault server` subprocess whose every observable output feeds the sweep.

    `init`, `start` and every CLI run happen under umask 0, so the mode checks see the modes the product
    chose, not the ones the test runner's umask imposed."""

    def __init__(self, tmp_path: Path, upstream_ca: trustme.CA, sweep: Sweep, **kw: Any) -> None:
        env = {"AGENT_VAULT_RESOLVE": RESOLVE, **kw.pop("env", {})}
        super().__init__(tmp_path, upstream_ca, env=env, **kw)
        self.sweep = sweep
        sweep.servers.append(self)
        sweep.secret_token("owner password", OWNER_PASSWORD)
        sweep.secret_token("master password", MASTER_PASSWORD)

    def init(self) -> None:
        with permissive_umask():
            super().init()

    def start(self, *args: str) -> None:
        with permissive_umask():
            super().start(*args)

    def login(self, email: str = OWNER_EMAIL, password: str = OWNER_PASSWORD) -> str:
        return self.sweep.secret_token(f"login token of {email}", super().login(email, password))

    def cli_login(self) -> None:
        self.cli("auth", "login", "--email", OWNER_EMAIL, "--password-stdin", input=OWNER_PASSWORD + "\n")

    def _hook(self, source: str) -> dict[str, list[Any]]:
        return {"response": [lambda r: self.sweep.record_response(source, r)]}

    def http(self, token: str | None = None, *, record: bool = True) -> httpx.Client:
        return httpx.Client(
            base_url=self.api,
            headers={"Authorization": f"Bearer {token or self.owner_token}"},
            trust_env=False,
            timeout=30,
            event_hooks=self._hook("api") if record else None,
        )

    def cli(
        self,
        *args: str,
        input: str | None = None,
        check: bool = True,
        env: dict[str, str] | None = None,
        timeout: float = 60,
    ) -> subprocess.CompletedProcess[str]:
        with permissive_umask():
            cp = super().cli(*args, input=input, check=check, env=env, timeout=timeout)
        self.sweep.record(f"cli {' '.join(args)} stdout", cp.stdout)
        self.sweep.record(f"cli {' '.join(args)} stderr", cp.stderr)
        return cp

    def set_credential(self, key: str, value: str, vault: str = "default") -> None:
        self.sweep.value(f"{vault}/{key}", value)
        super().set_credential(key, value, vault)

    def make_agent(self, name: str, vaults: tuple[str, ...] = ("default",), role: str = "proxy") -> str:
        return self.sweep.secret_token(f"agent token {name}", super().make_agent(name, vaults, role))

    def session(self, token: str | None = None, **body: Any) -> dict[str, Any]:
        """POST /v1/sessions with `token` (default: the owner); returns the answer (token registered)."""
        with self.http(token) as c:
            r = c.post("/v1/sessions", json={"vault": "default", **body})
            r.raise_for_status()
            out: dict[str, Any] = r.json()
        self.sweep.secret_token(f"session {out['id']}", out["token"])
        return out

    def agent_client(self, token: str, vault: str | None = "default", **kw: Any) -> httpx.Client:
        """An agent's HTTPS client through the proxy; every answer it gets is swept."""
        return httpx.Client(
            proxy=self.proxy_url(token, vault),
            verify=str(self.ca_bundle),
            trust_env=False,
            timeout=15,
            event_hooks=self._hook("agent via proxy"),
            **kw,
        )

    def raw(self) -> SweptConn:
        return SweptConn(self.proxy_port, self.sweep)

    def curl(self, token: str, *args: str, vault: str = "default") -> subprocess.CompletedProcess[str]:
        """curl through the proxy as the agent; stdout ends with a line holding the status code."""
        cp = subprocess.run(
            [
                CURL,
                "-sS",
                "--max-time",
                "20",
                "-x",
                self.proxy,
                "--proxy-user",
                f"{token}:{vault}",
                "--cacert",
                str(self.ca_bundle),
                "-w",
                "\n%{http_code}",
                *args,
            ],
            capture_output=True,
            text=True,
            timeout=30,
            env={"PATH": "/usr/bin:/bin"},
        )
        self.sweep.record(f"curl {' '.join(args)} stdout", cp.stdout)
        self.sweep.record(f"curl {' '.join(args)} stderr", cp.stderr)
        return cp

    def alive(self) -> bool:
        """The process runs and answers /health."""
        if self.proc is None or self.proc.poll() is not None:
            return False
        return httpx.get(self.api + "/health", timeout=5).status_code == 200


class SweptConn(RawConn):
    """RawConn whose answers feed the sweep."""

    def __init__(self, proxy_port: int, sweep: Sweep, timeout: float = 15) -> None:
        super().__init__(proxy_port, timeout)
        self.sweep = sweep

    def connect(self, target: str, headers: dict[str, str] | None = None) -> Resp:
        r = super().connect(target, headers)
        self.sweep.record_resp(f"raw CONNECT {target}", r)
        return r

    def request(
        self,
        method: str,
        target: str,
        headers: dict[str, str] | None = None,
        body: bytes = b"",
        chunk: int = 0,
    ) -> Resp:
        r = super().request(method, target, headers, body, chunk)
        self.sweep.record_resp(f"raw {method} {target}", r)
        return r


def start_server(
    factory: pytest.TempPathFactory, upstream_ca: trustme.CA, sweep: Sweep, name: str, **kw: Any
) -> Iterator[SweptServer]:
    s = SweptServer(factory.mktemp(name), upstream_ca, sweep, **kw)
    with s:
        yield s


def owner_patch_vault(srv: ServerProc, vault: str = "default", **settings: str) -> None:
    with srv.http() as c:
        c.patch(f"/v1/vaults/{vault}", json={"password": OWNER_PASSWORD, **settings}).raise_for_status()


def proxy_error(status: int, headers: dict[str, str], body: bytes, code: str | None = None) -> str:
    """Assert the SPEC §6 error contract of a proxy-generated answer; returns its code."""
    low = {k.lower(): v for k, v in headers.items()}
    assert low.get("x-agent-vault-proxy-error") == "true", (status, headers, body[:300])
    assert low.get("content-type") == "application/json", (status, headers)
    data = json.loads(body)
    assert set(data) >= {"error", "message", "hint"}, data
    assert data["error"] in PROXY_CODES and PROXY_CODES[data["error"]] == status, (status, data)
    if code is not None:
        assert data["error"] == code, data
    return str(data["error"])


def header_values(req: dict[str, Any], name: str) -> list[str]:
    return [v for k, v in req["headers"] if k.lower() == name.lower()]


def request_text(req: dict[str, Any]) -> bytes:
    """Everything an upstream received in one request (target, headers, body) as bytes."""
    head = "\n".join(f"{k}: {v}" for k, v in req["headers"])
    body: bytes = req["body"]
    return f"{req['method']} {req['path']} {req['authority']}\n{head}\n".encode() + body


def carries(req: dict[str, Any], value: str) -> bool:
    data = request_text(req)
    return any(f.encode() in data for f in value_forms(value))


# ---- file modes (SPEC §2.2, §14.11) ------------------------------------------------------------------

PUBLIC_FILES = {"ca/ca-cert.pem", "certs/ca-cert.pem", "certs/ca-bundle.pem"}


def mode_problems(home: Path) -> list[str]:
    """Every way `home` departs from SPEC §2.2: folders 0700 (certs/ holds public files only), public
    certificate files 0644 (or tighter), everything else 0600 (in run/: whatever holds a key)."""
    problems = []
    if stat.S_IMODE(home.stat().st_mode) != 0o700:
        problems.append(f"home is {oct(stat.S_IMODE(home.stat().st_mode))}")
    for p in sorted(home.rglob("*")):
        rel, mode = str(p.relative_to(home)), stat.S_IMODE(p.lstat().st_mode)
        if p.is_dir():
            bad = mode & 0o022 if rel == "certs" else mode != 0o700
        elif rel in PUBLIC_FILES:
            bad = mode not in (0o644, 0o600)
        elif rel.startswith("run/") and b"PRIVATE KEY" not in p.read_bytes():
            bad = False  # the engine's public scratch (dhparam, CA list) behind the 0700 run/
        else:
            bad = mode != 0o600
        if bad:
            problems.append(f"{rel} is {oct(mode)}")
    return problems


# ---- HTTP/2 by hand -------------------------------------------------------------------------------


def h2_get(
    tls: ssl.SSLSocket,
    authority: str,
    path: str,
    headers: tuple[tuple[str, str], ...] = (),
    timeout: float = 10,
) -> tuple[int, dict[str, str], bytes]:
    """One HTTP/2 GET on an already negotiated (ALPN h2) TLS socket, with the `:authority` given."""
    conn = h2.connection.H2Connection(config=h2.config.H2Configuration(client_side=True))
    conn.initiate_connection()
    sid = conn.get_next_available_stream_id()
    conn.send_headers(
        sid,
        [(":method", "GET"), (":scheme", "https"), (":authority", authority), (":path", path), *headers],
        end_stream=True,
    )
    tls.sendall(conn.data_to_send())
    tls.settimeout(timeout)
    status, hdrs, body = 0, {}, bytearray()
    for _ in range(10_000):
        data = tls.recv(65536)
        if not data:
            break
        for ev in conn.receive_data(data):
            if isinstance(ev, h2.events.ResponseReceived) and ev.stream_id == sid:
                hdrs = {
                    k.decode() if isinstance(k, bytes) else k: v.decode() if isinstance(v, bytes) else v
                    for k, v in ev.headers
                }
                status = int(hdrs.pop(":status"))
            elif isinstance(ev, h2.events.DataReceived) and ev.stream_id == sid:
                body += ev.data
                conn.acknowledge_received_data(ev.flow_controlled_length, sid)
            elif isinstance(ev, h2.events.StreamEnded | h2.events.StreamReset) and ev.stream_id == sid:
                tls.sendall(conn.data_to_send())
                return status, hdrs, bytes(body)
        out = conn.data_to_send()
        if out:
            tls.sendall(out)
    return status, hdrs, bytes(body)


def free_loopback_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


# ---- upstreams --------------------------------------------------------------------------------------


class Forger(TLSUpstream):
    """The helpers' TLS upstream plus `/forge`: an answer with headers only the proxy may set."""

    async def handle(self, req: UpstreamRequest) -> UpstreamResponse:
        if req.path == "/forge":
            headers = [
                ("Content-Type", "application/json"),
                ("X-Agent-Vault-Proxy-Error", "true"),
                ("X-Agent-Vault-Vault", "evil"),
                ("x-agent-vault-injected", "no"),
                ("Proxy-Authenticate", 'Basic realm="evil"'),
            ]
            return UpstreamResponse(200, headers, b'{"forged": true}')
        if req.path.startswith("/forge/"):
            return self._echo_elsewhere(req)
        return await super().handle(req)

    @staticmethod
    def _echo_elsewhere(req: UpstreamRequest) -> UpstreamResponse:
        """Echoes of the request's credential where header-value and body redaction do not look:
        `/forge/reason` in the HTTP/1 reason phrase, `/forge/name` as a header name, `/forge/many?n=N`
        in one header among N empty ones, `/forge/jecho` in a JSON echo of the headers that writes `/`
        as `\\/` (PHP's json_encode does)."""
        auth = req.header("authorization") or ""
        token = auth.rpartition(" ")[2]
        text = [("Content-Type", "text/plain")]
        if req.path == "/forge/reason":
            return UpstreamResponse(200, text, b"ok", reason=f"OK {token}")
        if req.path == "/forge/name":
            return UpstreamResponse(200, [*text, (token, "1"), (f"X-{token}-Tail", "2")], b"ok")
        if req.path == "/forge/many":
            many = [(f"{i:x}", "") for i in range(int(req.params.get("n", "100")))]
            return UpstreamResponse(200, [*text, ("X-Echo", auth), *many], b"ok")
        body = json.dumps(req.header_dict()).replace("/", "\\/").encode()
        return UpstreamResponse(200, [("Content-Type", "application/json")], body)


@pytest.fixture(scope="module")
def up(upstream_ca: trustme.CA) -> Iterator[Forger]:
    """The legitimate API the vault's services point at."""
    with Forger(ca=upstream_ca) as u:
        yield u


@pytest.fixture(scope="module")
def evil(upstream_ca: trustme.CA) -> Iterator[Forger]:
    """The attacker's server (its certificate is valid too): it must never receive a credential."""
    with Forger(ca=upstream_ca) as u:
        yield u


def never_sent(upstream: TLSUpstream, *values: str) -> None:
    """No request `upstream` received carries any form of any of `values`."""
    for req in upstream.requests_seen.snapshot():
        for v in values:
            assert not carries(req, v), (req["method"], req["path"], req["headers"])
