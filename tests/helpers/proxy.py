"""Raw-socket helpers for proxy e2e tests: CONNECT by hand, TLS over it, HTTP/1.1 on top.

Real clients (httpx, requests, curl) cover the common paths; these helpers cover what clients
will not send: spoofed Host headers, SNI different from the CONNECT target, absolute-form
`https://` requests, plaintext HTTP inside CONNECT, malformed Proxy-Authorization.
"""

from __future__ import annotations

import base64
import http.client
import json
import socket
import sqlite3
import ssl
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO

from helpers.wait import wait_until


def basic(token: str, vault: str | None = "default") -> str:
    user = f"{token}:{vault}" if vault else token
    return "Basic " + base64.b64encode(user.encode()).decode()


@dataclass
class Resp:
    status: int
    headers: dict[str, str]
    body: bytes
    header_list: list[tuple[str, str]] = field(default_factory=list)
    reason: str = ""

    def json(self) -> Any:
        return json.loads(self.body)


class _Shared:
    """The connection's one buffered reader, which HTTPResponse may not close (keep-alive)."""

    def __init__(self, f: BinaryIO) -> None:
        self._f = f

    def __getattr__(self, name: str) -> Any:
        return getattr(self._f, name)

    def close(self) -> None:
        pass


class _FileSock:
    """Hands http.client.HTTPResponse the connection's reader instead of a new one."""

    def __init__(self, f: BinaryIO) -> None:
        self.f = f

    def makefile(self, *_a: Any, **_k: Any) -> _Shared:
        return _Shared(self.f)


class RawConn:
    """One client connection to the proxy; optionally CONNECTed and wrapped in TLS."""

    def __init__(self, proxy_port: int, timeout: float = 15) -> None:
        self.sock: socket.socket = socket.create_connection(("127.0.0.1", proxy_port), timeout=timeout)
        self.f: BinaryIO = self.sock.makefile("rb")

    def close(self) -> None:
        self.f.close()
        self.sock.close()

    def __enter__(self) -> RawConn:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def connect(self, target: str, headers: dict[str, str] | None = None) -> Resp:
        """Send CONNECT target; return the proxy's answer (body read only for non-2xx)."""
        lines = [f"CONNECT {target} HTTP/1.1", f"Host: {target}"]
        lines += [f"{k}: {v}" for k, v in (headers or {}).items()]
        self.send(("\r\n".join(lines) + "\r\n\r\n").encode())
        status_line = self.f.readline().decode()
        status = int(status_line.split()[1])
        hdrs: list[tuple[str, str]] = []
        while (line := self.f.readline().decode()) not in ("\r\n", "\n", ""):
            k, _, v = line.partition(":")
            hdrs.append((k.strip(), v.strip()))
        d = {k.lower(): v for k, v in hdrs}
        body = b""
        if not 200 <= status < 300 and "content-length" in d:
            body = self.f.read(int(d["content-length"]))
        return Resp(status, d, body, hdrs)

    def start_tls(
        self, server_hostname: str, cafile: str | Path, alpn: list[str] | None = None
    ) -> ssl.SSLSocket:
        ctx = ssl.create_default_context(cafile=str(cafile))
        if alpn:
            ctx.set_alpn_protocols(alpn)
        tls = ctx.wrap_socket(self.sock, server_hostname=server_hostname)
        self.sock = tls
        self.f = tls.makefile("rb")
        return tls

    def request(
        self,
        method: str,
        target: str,
        headers: dict[str, str] | None = None,
        body: bytes = b"",
        chunk: int = 0,
    ) -> Resp:
        """One HTTP/1.1 request on this connection (headers sent exactly as given); with `chunk`,
        the body goes out chunked in pieces of that size instead of with a Content-Length."""
        hdrs = dict(headers or {})
        if chunk:
            hdrs["Transfer-Encoding"] = "chunked"
            pieces = [body[i : i + chunk] for i in range(0, len(body), chunk)]
            body = b"".join(b"%x\r\n%s\r\n" % (len(p), p) for p in pieces) + b"0\r\n\r\n"
        elif body and not any(k.lower() == "content-length" for k in hdrs):
            hdrs["Content-Length"] = str(len(body))
        lines = [f"{method} {target} HTTP/1.1"] + [f"{k}: {v}" for k, v in hdrs.items()]
        self.send(("\r\n".join(lines) + "\r\n\r\n").encode() + body)
        r = http.client.HTTPResponse(_FileSock(self.f), method=method)  # type: ignore[arg-type]
        r.begin()
        data = r.read()
        return Resp(r.status, {k.lower(): v for k, v in r.getheaders()}, data, r.getheaders(), r.reason)


def free_port() -> int:
    """A loopback port nothing listens on (connection refused)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def audit_records(home: Path, **match: Any) -> list[dict[str, Any]]:
    """Proxy audit records (newest last) whose fields equal `match`."""
    db = sqlite3.connect(f"file:{home / 'agent-vault.db'}?mode=ro", uri=True)
    try:
        rows = db.execute("SELECT record FROM audit_events ORDER BY seq").fetchall()
    finally:
        db.close()
    out = [json.loads(r[0]) for r in rows]
    return [r for r in out if all(r.get(k) == v for k, v in match.items())]


def wait_audit(home: Path, timeout: float = 5.0, **match: Any) -> dict[str, Any]:
    """The newest proxy audit record matching `match`, polled until `timeout` (records are written async)."""
    found = wait_until(
        lambda: audit_records(home, **match), f"an audit record matching {match}", timeout=timeout
    )
    return found[-1]
