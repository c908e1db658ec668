"""Someone with the database file, and what agents are handed (SPEC §2.2, §4.3, §7, §14.4, §14.9-§14.11).

Ciphertexts tampered with, swapped between two credentials, copied to another vault or relabelled,
directly in SQLite - live and while the server is down: AAD makes each fail to decrypt, the proxy
answers `credential_corrupt`, no value (neither its own nor the swapped one) goes anywhere, and the
server keeps running. Then: the files and environment an agent gets hold certificates and a session
token only, and every file is created with its SPEC mode even under a permissive umask. Last, the
database itself (§4.3, §4.4, §14.4): every token the test was handed is stored only as its SHA-256,
every password only as an Argon2id hash, every value only as AES-256-GCM under the DEK with its
identity as AAD (checked by decrypting independently of the product's code).
"""

from __future__ import annotations

import base64
import hashlib
import json
import re
import sqlite3
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import argon2
import httpx
import pytest
import trustme
from argon2.low_level import Type, hash_secret_raw
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from helpers.server import MASTER_PASSWORD, OWNER_EMAIL, OWNER_PASSWORD
from security.conftest import (
    Forger,
    Sweep,
    SweptServer,
    header_values,
    mode_problems,
    never_sent,
    new_secret,
    proxy_error,
    value_forms,
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


# ---- the database at rest (SPEC §4.3, §4.4, §14.4) --------------------------------------------------

INVITEE, INVITEE_PASSWORD = "storage-invitee@example.com", "invitee-password-5521"
NONCE, TAG = 12, 16  # SPEC §4.3: nonce (12 bytes) || ciphertext || tag (16 bytes)


def _every_cell(db: sqlite3.Connection) -> Iterator[tuple[str, bytes]]:
    """(table.column, bytes) of every non-NULL cell of every table."""
    tables = [r[0] for r in db.execute("SELECT name FROM sqlite_master WHERE type = 'table'")]
    for table in tables:
        cur = db.execute(f'SELECT * FROM "{table}"')  # names from sqlite_master
        cols = [d[0] for d in cur.description]
        for row in cur:
            for col, cell in zip(cols, row, strict=True):
                if cell is not None:
                    yield f"{table}.{col}", cell if isinstance(cell, bytes) else str(cell).encode()


def _secrets_handed_out(srv: SweptServer, token: str) -> dict[str, str]:
    """Every kind of token SPEC §2.3 knows, minted through the real API: label -> token text."""
    out = {"owner login": srv.owner_token, "agent": token, "session": srv.session(token)["token"]}
    with srv.http() as c:
        r = c.post(
            "/v1/users/invites",
            json={
                "password": OWNER_PASSWORD,
                "email": INVITEE,
                "role": "member",
                "vaults": [{"vault": "default", "role": "member"}],
            },
        )
        assert r.status_code == 201, r.text
    (out["invite"],) = parse_qs(urlsplit(r.json()["invite_url"]).query)["token"]
    srv.sweep.secret_token("storage invite", out["invite"])
    srv.sweep.secret_token("invitee password", INVITEE_PASSWORD)
    accepted = httpx.post(
        srv.api + f"/v1/invites/{out['invite']}/accept", json={"password": INVITEE_PASSWORD}, trust_env=False
    )
    assert accepted.status_code == 201, accepted.text
    out["accept login"] = srv.sweep.secret_token("invitee accept token", accepted.json()["token"])
    out["invitee login"] = srv.login(INVITEE, INVITEE_PASSWORD)
    with srv.http(token) as c:
        r = c.post(
            "/v1/proposals",
            json={
                "services": [
                    {
                        "action": "set",
                        "name": "at-rest",
                        "host": "api.upstream.test",
                        "auth": {"type": "bearer", "token": "OK_KEY"},
                    }
                ],
                "message": "storage test",
            },
            headers={"X-Vault": "default"},
        )
        assert r.status_code == 201, r.text
    (out["approval"],) = parse_qs(urlsplit(r.json()["approval_url"]).query)["token"]
    srv.sweep.secret_token("storage approval link", out["approval"])
    login = json.loads((srv.home / "cli" / "session.json").read_text())  # AGENT_VAULT_KEYRING=0
    out["cli login"] = login["token"]
    assert all(t.startswith("av_") and len(t) > 40 for t in out.values()), out.keys()
    assert len(set(out.values())) == len(out)
    return out


def _dek(db: sqlite3.Connection) -> tuple[str, bytes]:
    """(instance id, DEK), unwrapped with the master password from the row, as SPEC §4.1 says, with
    argon2 and AES-GCM directly (not the product's code)."""
    (instance_id,) = db.execute("SELECT instance_id FROM instance_state").fetchone()
    rows = db.execute(
        "SELECT wrapped_dek, salt, time_cost, memory_kib, parallelism FROM master_key"
    ).fetchall()
    assert len(rows) == 1
    wrapped, salt, t, m, p = rows[0]
    assert len(salt) == 16 and len(wrapped) == NONCE + 32 + TAG
    kek = hash_secret_raw(MASTER_PASSWORD.encode(), salt, t, m, p, 32, Type.ID)
    dek = AESGCM(kek).decrypt(wrapped[:NONCE], wrapped[NONCE:], f"agent-vault/v1|dek|{instance_id}".encode())
    assert len(dek) == 32  # AES-256
    return str(instance_id), dek


def test_tokens_passwords_and_values_at_rest(srv: SweptServer, token: str, sweep: Sweep) -> None:
    tokens = _secrets_handed_out(srv, token)
    values = {
        "AT_REST_SHORT": sweep.value("AT_REST_SHORT", new_secret()),
        "AT_REST_UTF8": sweep.value("AT_REST_UTF8", "pässwörd-€-" + new_secret()),
        "AT_REST_LONG": sweep.value("AT_REST_LONG", new_secret() * 100),
    }
    for key, value in values.items():
        srv.set_credential(key, value)
    passwords = {"owner": OWNER_PASSWORD, "invitee": INVITEE_PASSWORD, "master": MASTER_PASSWORD}
    db = sqlite3.connect(f"file:{srv.home / 'agent-vault.db'}?mode=ro", uri=True, timeout=10)
    try:
        # tokens: each is stored as the SHA-256 hex of its text, where its kind belongs, and nowhere raw
        where = {"invite": ("invites", "digest"), "approval": ("proposals", "approval_digest")}
        for label, t in tokens.items():
            table, col = where.get(label, ("tokens", "digest"))
            digest = hashlib.sha256(t.encode()).hexdigest()
            n = db.execute(f"SELECT count(*) FROM {table} WHERE {col} = ?", (digest,)).fetchone()[0]
            assert n == 1, f"{label}: its SHA-256 is not in {table}.{col}"
        for table, col in (("tokens", "digest"), ("invites", "digest"), ("proposals", "approval_digest")):
            for (d,) in db.execute(f"SELECT {col} FROM {table} WHERE {col} IS NOT NULL"):
                assert re.fullmatch(r"[0-9a-f]{64}", d), f"{table}.{col} holds something else than a digest"
        # passwords: Argon2id hashes that verify, for the owner and the invitee
        hashes = dict(db.execute("SELECT email, password_hash FROM users").fetchall())
        assert set(hashes) == {OWNER_EMAIL, INVITEE}, set(hashes)
        for email, pw in ((OWNER_EMAIL, OWNER_PASSWORD), (INVITEE, INVITEE_PASSWORD)):
            assert hashes[email].startswith("$argon2id$"), email
            assert argon2.PasswordHasher().verify(hashes[email], pw)
            with pytest.raises(argon2.exceptions.VerifyMismatchError):
                argon2.PasswordHasher().verify(hashes[email], pw + "x")
        # values: nonce || AES-256-GCM ciphertext || tag under the DEK, AAD = the row's identity
        instance_id, dek = _dek(db)
        rows = db.execute(
            "SELECT c.key, c.vault_id, c.key_version, c.ciphertext FROM credentials c "
            "JOIN vaults v ON v.id = c.vault_id WHERE v.name = 'default' AND c.key LIKE 'AT_REST_%'"
        ).fetchall()
        assert {r[0] for r in rows} == set(values)
        for key, vault_id, version, ct in rows:
            raw = values[key].encode()
            assert len(ct) == NONCE + len(raw) + TAG, key
            aad = f"agent-vault/v1|credential|{vault_id}|{key}|{version}".encode()
            assert AESGCM(dek).decrypt(ct[:NONCE], ct[NONCE:], aad) == raw, key
            for other in (f"{vault_id + 1}|{key}|{version}", f"{vault_id}|OK_KEY|{version}"):
                with pytest.raises(InvalidTag):  # bound to its vault and key: moved elsewhere, it fails
                    AESGCM(dek).decrypt(ct[:NONCE], ct[NONCE:], f"agent-vault/v1|credential|{other}".encode())
        nonces = [bytes(ct[:NONCE]) for (ct,) in db.execute("SELECT ciphertext FROM credentials") if ct]
        assert len(set(nonces)) == len(nonces)  # a fresh nonce per encryption
        (sealed_ca,) = db.execute("SELECT ca_key_sealed FROM instance_state").fetchone()
        ca_key = AESGCM(dek).decrypt(
            sealed_ca[:NONCE], sealed_ca[NONCE:], f"agent-vault/v1|ca-key|{instance_id}".encode()
        )
        assert b"PRIVATE KEY" in ca_key or ca_key[:1] == b"\x30"  # PEM or DER: the CA key is the plaintext
        # nothing in any cell of any table is a token, password, value or the DEK in clear
        forbidden: dict[bytes, str] = {t.encode(): f"token {label}" for label, t in tokens.items()}
        forbidden |= {pw.encode(): f"{who} password" for who, pw in passwords.items()}
        forbidden |= {dek: "DEK", base64.b64encode(dek): "DEK (base64)", dek.hex().encode(): "DEK (hex)"}
        forbidden |= {b"PRIVATE KEY": "CA private key"}
        for key, value in {**V, **values}.items():
            forbidden |= {f.encode(): f"value {key}" for f in value_forms(value)}
        hits = {(col, what) for col, cell in _every_cell(db) for s, what in forbidden.items() if s in cell}
    finally:
        db.close()
    assert not hits, sorted(hits)
    # and not in the raw files either (WAL and freed pages included)
    for f in sorted(srv.home.glob("agent-vault.db*")):
        data = f.read_bytes()
        assert not [what for s, what in forbidden.items() if s in data], f.name
