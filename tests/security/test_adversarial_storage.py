"""Someone with the database file, and what agents are handed (SPEC §2.2, §4.3, §7, §14.4, §14.9-§14.11).

Ciphertexts tampered with, swapped between two credentials, copied to another vault or relabelled,
directly in SQLite - live and while the server is down: AAD makes each fail to decrypt, the proxy
answers `credential_corrupt`, no value (neither its own nor the swapped one) goes anywhere, and the
server keeps running. Then: the files and environment an agent gets hold certificates and a session
token only, and every file is created with its SPEC mode even under a permissive umask.
"""

from __future__ import annotations

import re
import sqlite3
from collections.abc import Iterator
from pathlib import Path

import pytest
import trustme
from helpers.server import OWNER_PASSWORD
from security.conftest import (
    Forger,
    Sweep,
    SweptServer,
    header_values,
    mode_problems,
    never_sent,
    new_secret,
    proxy_error,
)

V: dict[str, str] = {}
KEYS = ("A_KEY", "B_KEY", "C_KEY", "D_KEY", "E_KEY", "F_KEY", "G_KEY", "OK_KEY")


@pytest.fixture(scope="module")
def srv(
    tmp_path_factory: pytest.TempPathFactory, upstream_ca: trustme.CA, sweep: Sweep, up: Forger
) -> Iterator[SweptServer]:
    s = SweptServer(tmp_path_factory.mktemp("storage"), upstream_ca, sweep, key_mode="password")
    s.__enter__()
    s.cli_login()
    s.cli("vault", "use", "default")
    with s.http() as c:
        c.post("/v1/vaults", json={"name": "second"}).raise_for_status()
    for key in KEYS:
        V[key] = new_secret()
        s.set_credential(key, V[key], vault="second" if key == "C_KEY" else "default")
        s.add_service(
            {
                "name": key.lower().replace("_", "-"),
                "host": "api.upstream.test",
                "port": up.port,
                "path": f"/echo/{key.lower()}",
                "auth": {"type": "bearer", "token": key},
            },
            vault="second" if key == "C_KEY" else "default",
        )
    try:
        yield s
    finally:
        s.stop()


@pytest.fixture(scope="module")
def token(srv: SweptServer) -> str:
    return srv.make_agent("storage-bot", vaults=("default", "second"))


def _db(srv: SweptServer) -> sqlite3.Connection:
    return sqlite3.connect(srv.home / "agent-vault.db", timeout=10)


def _ct(db: sqlite3.Connection, key: str) -> bytes:
    return bytes(db.execute("SELECT ciphertext FROM credentials WHERE key = ?", (key,)).fetchone()[0])


def _tamper(srv: SweptServer, pairs: tuple[tuple[str, str], ...]) -> None:
    """Swap ciphertexts of each (key, key) pair, straight in the file."""
    db = _db(srv)
    with db:
        for a, b in pairs:
            ca, cb = _ct(db, a), _ct(db, b)
            db.execute("UPDATE credentials SET ciphertext = ? WHERE key = ?", (cb, a))
            db.execute("UPDATE credentials SET ciphertext = ? WHERE key = ?", (ca, b))
    db.close()


def _outcome(srv: SweptServer, token: str, up: Forger, key: str) -> str:
    vault = "second" if key == "C_KEY" else "default"
    with srv.agent_client(token, vault=vault) as c:
        r = c.get(f"https://api.upstream.test:{up.port}/echo/{key.lower()}/x")
    if r.status_code == 200:
        return "200"
    code = proxy_error(r.status_code, dict(r.headers), r.content)
    if code == "credential_corrupt":
        assert r.json()["key"] == key and key in r.json()["message"]
    return code


def test_tampered_and_swapped_ciphertexts_are_refused_live(srv: SweptServer, token: str, up: Forger) -> None:
    up.requests_seen.clear()
    _tamper(srv, (("A_KEY", "B_KEY"),))  # two rows of one vault swap
    db = _db(srv)
    with db:
        c_ct = _ct(db, "C_KEY")
        db.execute(
            "UPDATE credentials SET ciphertext = ? WHERE key = 'C_KEY'", (_ct(db, "D_KEY"),)
        )  # cross-vault
        db.execute("UPDATE credentials SET key_version = 2 WHERE key = 'D_KEY'")  # relabelled
        e = _ct(db, "E_KEY")
        db.execute(
            "UPDATE credentials SET ciphertext = ? WHERE key = 'E_KEY'", (e[:-1] + bytes([e[-1] ^ 1]),)
        )
        db.execute(
            "UPDATE credentials SET ciphertext = ? WHERE key = 'F_KEY'", (e[:11],)
        )  # shorter than a nonce
        db.execute("UPDATE credentials SET ciphertext = ? WHERE key = 'G_KEY'", (b"",))
    db.close()
    srv.set_credential("UNRELATED_KEY", new_secret())  # any admin change reloads the snapshot
    outcomes = {k: _outcome(srv, token, up, k) for k in KEYS}
    assert outcomes == {**dict.fromkeys(KEYS[:-1], "credential_corrupt"), "OK_KEY": "200"}, outcomes
    (ok,) = up.requests_seen.wait_for(1)
    assert header_values(ok, "authorization") == [f"Bearer {V['OK_KEY']}"]
    never_sent(up, *(V[k] for k in KEYS[:-1]))
    assert srv.alive()
    # the owner's reveal of a swapped key does not hand out the other key's value either
    with srv.http(record=False) as c:
        r = c.post("/v1/vaults/default/credentials/A_KEY/reveal", json={"password": OWNER_PASSWORD})
    assert (r.status_code, r.json()["error"], r.json()["key"]) == (502, "credential_corrupt", "A_KEY"), r.text
    assert V["A_KEY"] not in r.text and V["B_KEY"] not in r.text
    srv.sweep.record("reveal of a corrupt credential", r.text)
    db = _db(srv)  # put C back for the restart test
    with db:
        db.execute("UPDATE credentials SET ciphertext = ? WHERE key = 'C_KEY'", (c_ct,))
    db.close()


def test_files_and_environment_handed_to_agents_hold_certificates_only(
    srv: SweptServer, token: str, tmp_path: Path
) -> None:
    out = tmp_path / "fetched"
    srv.cli("ca", "fetch", "-o", str(out))
    run = srv.cli("vault", "run", "--", "sh", "-c", 'env; cat "$SSL_CERT_FILE"')
    with srv.http() as c:
        served = c.get("/v1/mitm/ca.pem").text
    handed = {"GET /v1/mitm/ca.pem": served, "vault run child": run.stdout}
    for f in [*out.rglob("*"), *(srv.home / "certs").rglob("*")]:
        if f.is_file():
            handed[str(f)] = f.read_text()
    for where, text in handed.items():
        blocks = re.findall(r"-----BEGIN ([A-Z0-9 ]+)-----", text)
        assert set(blocks) <= {"CERTIFICATE", "TRUSTED CERTIFICATE"}, (where, set(blocks))
        assert "PRIVATE KEY" not in text and "av_agt_" not in text and "av_usr_" not in text, where
        assert not any(v in text for v in V.values()), where
    assert "BEGIN CERTIFICATE" in served and "AGENT_VAULT_TOKEN=av_sess_" in run.stdout
    # the CA key exists only encrypted at rest
    for f in srv.home.rglob("*"):
        if f.is_file() and f.parent.name != "run":
            assert b"PRIVATE KEY" not in f.read_bytes(), f


def test_file_modes_under_a_permissive_umask(srv: SweptServer) -> None:
    """Server and CLI ran under umask 0 (see SweptServer): every mode below was chosen by the product."""
    home = srv.home
    expected = {
        "agent-vault.db",
        "instance.json",
        "audit.head",
        "cli/session.json",
        "cli/context",
        "certs/ca-cert.pem",
        "certs/ca-bundle.pem",
    }
    present = {str(p.relative_to(home)) for p in home.rglob("*") if p.is_file()}
    assert expected <= present, expected - present
    assert mode_problems(home) == []
    assert not (home / "dek.key").exists()  # password mode: the DEK is only stored wrapped
    assert not (home / "ca").exists()  # the CA (key sealed) lives in the database


def test_secrets_are_never_taken_from_argv(srv: SweptServer, sweep: Sweep) -> None:
    value = sweep.value("argv attempt", new_secret())
    cp = srv.cli("vault", "credential", "set", "ARGV_KEY", value, check=False)
    assert cp.returncode == 2 and value not in cp.stderr + cp.stdout  # refused, and not echoed back
    with srv.http() as c:
        keys = [x["key"] for x in c.get("/v1/vaults/default/credentials").json()["credentials"]]
    assert "ARGV_KEY" not in keys


def test_swapped_at_rest_then_restarted(srv: SweptServer, token: str, up: Forger) -> None:
    srv.stop()
    run = srv.home / "run"
    assert not run.exists() or not any(run.iterdir())  # the engine's scratch is wiped at shutdown
    _tamper(srv, (("A_KEY", "B_KEY"), ("OK_KEY", "C_KEY")))  # A/B back in place; OK <-> C across vaults
    srv.start()
    up.requests_seen.clear()
    outcomes = {k: _outcome(srv, token, up, k) for k in ("A_KEY", "B_KEY", "C_KEY", "OK_KEY")}
    assert outcomes == {
        "A_KEY": "200",
        "B_KEY": "200",
        "C_KEY": "credential_corrupt",
        "OK_KEY": "credential_corrupt",
    }, outcomes
    sent = sorted(header_values(r, "authorization")[0] for r in up.requests_seen.wait_for(2))
    assert sent == sorted([f"Bearer {V['A_KEY']}", f"Bearer {V['B_KEY']}"])
    never_sent(up, V["C_KEY"], V["OK_KEY"])
    srv.set_credential("OK_KEY", V["OK_KEY"])  # an admin repairs by setting the value again
    assert _outcome(srv, token, up, "OK_KEY") == "200"
    assert "Traceback" not in srv.stderr_text()
