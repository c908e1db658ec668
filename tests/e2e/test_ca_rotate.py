"""`agent-vault ca rotate` against the real server (SPEC §4.3, §9): new proxied TLS connections are signed
by the new CA at once, without a restart; a client trusting only the old CA fails verification, one
trusting the CA fetched from /v1/mitm/ca.pem afterwards succeeds, and the credential is still injected.
The new CA survives a restart (it is what the server stored)."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import httpx
from helpers.server import OWNER_EMAIL, OWNER_PASSWORD, ServerProc
from helpers.upstream import TLSUpstream

VALUE = "rotate-secret-value-0001"


def _curl(srv: ServerProc, token: str, bundle: Path, url: str) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run(
        [
            "/usr/bin/curl",
            "-sS",
            "--fail-with-body",
            "-x",
            srv.proxy,
            "--proxy-user",
            f"{token}:default",
            "--cacert",
            str(bundle),
            url,
        ],
        capture_output=True,
        timeout=30,
        env={"PATH": "/usr/bin"},
    )


def _injected(up: TLSUpstream) -> list[str]:
    """The Authorization header of the newest request the upstream saw (the echo is redacted)."""
    sent = up.requests_seen.wait_for(1)[-1]
    return [v for k, v in sent["headers"] if k.lower() == "authorization"]


def _ca_pem(srv: ServerProc) -> bytes:
    return httpx.get(srv.api + "/v1/mitm/ca.pem", trust_env=False).content


def test_rotation_resigns_new_connections_without_a_restart(
    server: ServerProc, upstream: TLSUpstream, tmp_path: Path
) -> None:
    server.set_credential("ROT_KEY", VALUE)
    server.add_service(
        {
            "name": "rot-api",
            "host": "localhost",
            "port": upstream.port,
            "auth": {"type": "bearer", "token": "ROT_KEY"},
        }
    )
    token = server.make_agent("rot-bot")
    url = f"https://localhost:{upstream.port}/echo/rotate"
    upstream_ca = server.upstream_ca_file.read_bytes()
    old_bundle = tmp_path / "old-bundle.pem"
    old_bundle.write_bytes(_ca_pem(server) + upstream_ca)
    before = _curl(server, token, old_bundle, url)
    assert before.returncode == 0, before.stderr
    assert _injected(upstream) == [f"Bearer {VALUE}"]
    upstream.requests_seen.clear()

    server.cli("auth", "login", "--email", OWNER_EMAIL, "--password-stdin", input=OWNER_PASSWORD + "\n")
    server.cli("ca", "fetch")  # this machine's copy, refreshed by `ca rotate`
    local = server.home / "certs" / "ca-cert.pem"
    assert local.read_bytes().strip() == old_bundle.read_bytes()[: len(local.read_bytes())].strip()
    cp = server.cli("--json", "ca", "rotate", "--yes", "--password-stdin", input=OWNER_PASSWORD + "\n")
    rotated = json.loads(cp.stdout)
    assert set(rotated) == {"fingerprint_sha256", "not_after"}
    assert OWNER_PASSWORD not in cp.stdout + cp.stderr

    new_pem = _ca_pem(server)
    assert new_pem != old_bundle.read_bytes()[: len(new_pem)]
    new_bundle = tmp_path / "new-bundle.pem"
    new_bundle.write_bytes(new_pem + upstream_ca)
    stale = _curl(server, token, old_bundle, url)
    assert stale.returncode == 60, (stale.returncode, stale.stderr)  # CURLE_PEER_FAILED_VERIFICATION
    assert upstream.requests_seen.snapshot() == []  # nothing was sent over the refused handshake
    fresh = _curl(server, token, new_bundle, url)
    assert fresh.returncode == 0, fresh.stderr
    assert _injected(upstream) == [f"Bearer {VALUE}"]

    assert local.read_bytes().strip() == new_pem.strip()
    with server.http() as c:
        rec = c.get("/v1/audit", params={"kind": "ca.rotate"}).json()["records"]
    assert [r["details"]["fingerprint_sha256"] for r in rec] == [rotated["fingerprint_sha256"]]
    assert "PRIVATE KEY" not in json.dumps(rec)
    assert VALUE not in server.stderr_text()

    # stored where the old one lived: a restarted server serves and signs with the new CA
    assert server.stop() == 0
    server.start()
    assert _ca_pem(server) == new_pem
    again = _curl(server, token, new_bundle, url)
    assert again.returncode == 0, again.stderr
