"""`doctor`: checks a user can act on. Exit 1 if any check fails (warnings do not fail)."""

from __future__ import annotations

import os
import re
import shutil
import socket
import subprocess
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from agent_vault.cli import G, app, loginstore
from agent_vault.cli.certs import fetch_ca
from agent_vault.cli.client import ApiError, Client
from agent_vault.cli.common import client, exit_with
from agent_vault.cli.output import out
from agent_vault.errors import AgentVaultError
from agent_vault.isolate.sandbox import bwrap_version, probe

Check = dict[str, str]
SECRET_FILES = (
    "instance.json",
    "dek.key",
    "audit.head",
    "agent-vault.db",
    "agent-vault.db-wal",
    "agent-vault.db-shm",
    "ca/ca-key.enc",
    "cli/session.json",
    "cli/context",
)
PRIVATE_DIRS = ("", "cli", "run", "ca")
PUBLIC_FILES = ("certs/ca-cert.pem", "certs/ca-bundle.pem")  # 0644 (SPEC §2.2): what agents' clients trust
PROXY_VARS = ("HTTPS_PROXY", "HTTP_PROXY", "ALL_PROXY")


def _check(name: str, status: str, detail: str) -> Check:
    return {"check": name, "status": status, "detail": detail}


def check_home(home: Path) -> Check:
    if not home.exists():
        return _check("home", "warn", f"{home} does not exist yet")
    loose = []
    for d in PRIVATE_DIRS:
        p = home / d
        if p.is_dir() and p.stat().st_mode & 0o077:
            loose.append(f"{p} is {oct(p.stat().st_mode & 0o777)} (want 0700)")
    for f in SECRET_FILES:
        p = home / f
        if p.is_file() and p.stat().st_mode & 0o077:
            loose.append(f"{p} is {oct(p.stat().st_mode & 0o777)} (want 0600)")
    for f in PUBLIC_FILES:  # readable by all, but writable by others means anyone can add a CA to trust
        p = home / f
        if p.is_file() and p.stat().st_mode & 0o022:
            loose.append(f"{p} is {oct(p.stat().st_mode & 0o777)} (want 0644)")
    if loose:
        return _check("home", "fail", "; ".join(loose))
    return _check("home", "ok", f"{home}: permissions are tight")


def check_env_proxies(env: dict[str, str], ours: str | None) -> Check:
    problems, notes = [], []
    for name in PROXY_VARS:
        values = {k: v for k, v in env.items() if k.upper() == name and v}
        if len(set(values.values())) > 1:
            problems.append(f"{' and '.join(sorted(values))} differ")
        for k, v in values.items():
            target = urlsplit(v if "://" in v else "http://" + v)
            where = f"{target.hostname}:{target.port}"
            if ours and where != ours:
                notes.append(f"{k} points at {where}, not agent-vault's proxy {ours}")
    if problems:
        return _check("proxy env", "fail", "conflicting: " + "; ".join(problems))
    if notes:
        return _check("proxy env", "warn", "; ".join(sorted(set(notes))))
    return _check("proxy env", "ok", "no conflicting *_PROXY variables")


def node_version_ok(text: str) -> bool | None:
    m = re.match(r"v?(\d+)\.(\d+)", text.strip())
    if not m:
        return None
    major, minor = int(m.group(1)), int(m.group(2))
    return major >= 24 or (major == 22 and minor >= 21)


def check_node() -> Check:
    node = shutil.which("node")
    if node is None:
        return _check("node", "ok", "node not installed")
    try:
        version = subprocess.run(
            [node, "--version"], capture_output=True, text=True, timeout=10
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return _check("node", "warn", "cannot run node --version")
    if node_version_ok(version):
        return _check("node", "ok", f"node {version} honours NODE_USE_ENV_PROXY")
    return _check(
        "node",
        "warn",
        f"node {version}: fetch() ignores NODE_USE_ENV_PROXY before 22.21 / 24; "
        "upgrade Node or configure a proxy agent",
    )


def check_isolate() -> Check:
    """Whether `vault run --isolate` can create its sandbox here (a warning when not: it is opt-in)."""
    try:
        bwrap = probe(os.environ.get("PATH"))
    except AgentVaultError as e:
        return _check("isolate", "warn", f"{e.message} ({e.hint})")
    return _check("isolate", "ok", f"{bwrap_version(bwrap)}: 'vault run --isolate' works here")


def proxy_probe(host: str, port: int, timeout: float = 3.0) -> str:
    """The status line of an unauthenticated CONNECT (a live agent-vault proxy answers 407)."""
    with socket.create_connection((host, port), timeout=timeout) as s:
        s.sendall(b"CONNECT doctor.invalid:443 HTTP/1.1\r\nHost: doctor.invalid:443\r\n\r\n")
        data = b""
        while b"\r\n" not in data and len(data) < 4096:
            chunk = s.recv(1024)
            if not chunk:
                break
            data += chunk
    return data.split(b"\r\n", 1)[0].decode("latin-1")


def _ca_checks(c: Client, checks: list[Check]) -> str | None:
    from cryptography import x509

    try:
        ca = fetch_ca(c)
    except AgentVaultError as e:
        checks.append(_check("ca", "fail", e.message))
        return None
    cert = x509.load_pem_x509_certificate(ca.pem)
    left = cert.not_valid_after_utc - datetime.now(UTC)
    if left.total_seconds() <= 0:
        checks.append(
            _check("ca", "fail", f"the CA expired on {cert.not_valid_after_utc:%Y-%m-%d}; run 'ca rotate'")
        )
    elif left.days < 30:
        checks.append(_check("ca", "warn", f"the CA expires in {left.days} days; plan 'ca rotate'"))
    else:
        checks.append(_check("ca", "ok", f"valid until {cert.not_valid_after_utc:%Y-%m-%d}"))
    local = G.home / "certs" / "ca-cert.pem"
    if local.is_file() and local.read_bytes().strip() != ca.pem.strip():
        checks.append(
            _check("ca files", "warn", f"{local} is not the server's CA; run 'agent-vault ca fetch'")
        )
    host = urlsplit(c.addr).hostname or "127.0.0.1"
    if ca.proxy_port is None:
        checks.append(_check("proxy", "fail", "the server did not report a proxy port"))
        return None
    try:
        line = proxy_probe(host, ca.proxy_port)
    except OSError as e:
        checks.append(
            _check("proxy", "fail", f"cannot connect to {host}:{ca.proxy_port} ({e.strerror or e})")
        )
        return f"{host}:{ca.proxy_port}"
    ok = " 407 " in f"{line} "
    checks.append(
        _check(
            "proxy",
            "ok" if ok else "fail",
            f"{host}:{ca.proxy_port} answered {line!r}" + ("" if ok else " (expected 407)"),
        )
    )
    return f"{host}:{ca.proxy_port}"


@app.command("doctor")
def doctor() -> None:
    """Check home permissions, server, CA, proxy, *_PROXY variables, Node, --isolate; exit 1 on a failure."""
    checks: list[Check] = [check_home(G.home)]
    checks.append(loginstore.check(G.home))  # OS keyring or the 0600 file
    c = client()
    proxy: str | None = None
    try:
        st = c.request("GET", "/v1/status", auth=False)
        checks.append(_check("server", "ok", f"{c.addr} (version {st.get('version')})"))
    except AgentVaultError as e:
        checks.append(_check("server", "fail", e.message))
    else:
        checks.append(_login_check(c))
        proxy = _ca_checks(c, checks)
    checks.append(check_env_proxies(dict(os.environ), proxy))
    checks.append(check_node())
    checks.append(check_isolate())
    failed = [x for x in checks if x["status"] == "fail"]
    out.table({"ok": not failed, "checks": checks}, checks, ["check", "status", "detail"])
    if failed:
        exit_with(1)


def _login_check(c: Client) -> Check:
    if not c.token:
        return _check("login", "warn", "not logged in ('agent-vault auth login')")
    try:
        me: dict[str, Any] = c.get("/v1/auth/me")
    except ApiError as e:
        if e.status != 401:  # rate limited, a server error: the token may be fine
            return _check("login", "warn", f"the login could not be checked ({e.message})")
        # a token that is set but refused fails every command that needs it: a failure, not a warning
        if c.auth_source == "AGENT_VAULT_TOKEN":
            return _check("login", "fail", f"the token from AGENT_VAULT_TOKEN is rejected ({e.message})")
        return _check(
            "login", "fail", f"the stored login is rejected ({e.message}; 'agent-vault auth login')"
        )
    return _check("login", "ok", f"{me.get('kind')} {me.get('name')}")
