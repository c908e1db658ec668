"""The PostgreSQL backend end to end: `init` once against a real PostgreSQL, the real `server` on a
fresh home with only the master password, a real client through the proxy; `migrate-db` from a SQLite
home, then `server` on the target injecting and `logs verify` passing; one-line errors that never
show the URL's password."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import httpx
import psycopg
import trustme
from helpers.env import base_env
from helpers.server import MASTER_PASSWORD, OWNER_EMAIL, OWNER_PASSWORD, ServerProc
from helpers.upstream import TLSUpstream

SECRET = "sk-pg-very-secret-value-481"
URL_PASSWORD = "url-pw-Xq93-never-shown"


def _proc(tmp: Path, name: str, upstream_ca: trustme.CA, url: str | None) -> ServerProc:
    d = tmp / name
    d.mkdir()
    return ServerProc(d, upstream_ca, key_mode="password", env={"DATABASE_URL": url} if url else None)


def _configure(s: ServerProc, upstream: TLSUpstream) -> str:
    s.set_credential("API_TOKEN", SECRET)
    s.add_service(
        {
            "name": "echo-api",
            "host": "localhost",
            "port": upstream.port,
            "auth": {"type": "bearer", "token": "API_TOKEN"},
        }
    )
    return s.make_agent("pg-bot")


def _injects(s: ServerProc, token: str, upstream: TLSUpstream) -> None:
    with httpx.Client(proxy=s.proxy_url(token), verify=str(s.ca_bundle), trust_env=False, timeout=30) as c:
        r = c.get(f"https://localhost:{upstream.port}/echo/hello", headers={"Authorization": "Bearer fake"})
    assert r.status_code == 200, r.text
    got = dict((k.lower(), v) for k, v in upstream.requests_seen.wait_for(1)[-1]["headers"])
    assert got["authorization"] == f"Bearer {SECRET}" and SECRET not in r.text


def _owner_env(s: ServerProc) -> dict[str, str]:
    return {**s.env, "AGENT_VAULT_ADDR": s.api, "AGENT_VAULT_TOKEN": s.owner_token}


def _verified(s: ServerProc) -> int:
    out = s.cli("logs", "verify", env=_owner_env(s)).stdout
    m = re.fullmatch(r"ok: (\d+) records, head [0-9a-f]{64}\n", out)
    assert m, out
    return int(m.group(1))


def _run(env: dict[str, str], *args: str, stdin: str = "") -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "agent_vault", *args],
        input=stdin,
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )


def test_init_once_then_servers_on_fresh_homes_share_the_instance(
    pg: Any, tmp_path: Path, upstream_ca: trustme.CA, upstream: TLSUpstream
) -> None:
    url = pg.new_database()
    a = _proc(tmp_path, "a", upstream_ca, url)
    a.init()
    assert not a.home.exists() or sorted(p.name for p in a.home.iterdir()) == []  # nothing of it is local
    again = a.cli(
        "init", "--owner-email", OWNER_EMAIL, "--password-stdin", input=OWNER_PASSWORD + "\n", check=False,
        env={**a.env, "AGENT_VAULT_MASTER_PASSWORD": MASTER_PASSWORD},
    )  # fmt: skip
    assert again.returncode == 1 and again.stdout == ""
    assert re.fullmatch(
        r"error: the database already holds agent-vault instance [0-9a-f]{8} \(.*\)\n", again.stderr
    )
    a.start()
    try:
        token = _configure(a, upstream)
        _injects(a, token, upstream)
        ca = a.ca_bundle.read_bytes()
    finally:
        assert a.stop() == 0
    b = _proc(tmp_path, "b", upstream_ca, url)  # another machine: a fresh home, the master password only
    b.start()
    try:
        assert b.ca_bundle.read_bytes() == ca  # the same CA, from the database
        _injects(b, token, upstream)  # the agent token, service and credential made through `a`
        assert _verified(b) >= 4
    finally:
        assert b.stop() == 0
    for s in (a, b):
        assert SECRET not in s.stderr_text()
    assert not (b.home / "instance.json").exists() and not (b.home / "agent-vault.db").exists()


def test_passwordless_and_unreachable_databases_are_one_line_errors(pg: Any, tmp_path: Path) -> None:
    env = base_env(tmp_path, DATABASE_URL=pg.new_database())
    init = _run(env, "init", "--key-mode", "passwordless", "--owner-email", OWNER_EMAIL, "--password-stdin",
                stdin=OWNER_PASSWORD + "\n")  # fmt: skip
    assert init.returncode == 1 and init.stderr.startswith(
        "error: passwordless mode is not available with PostgreSQL"
    )
    assert len(init.stderr.strip().splitlines()) == 1
    bad = f"postgresql://postgres:{URL_PASSWORD}@127.0.0.1:1/nothing"
    for args in (
        ("server", "--port", "0", "--proxy-port", "0"),
        ("init", "--owner-email", OWNER_EMAIL, "--password-stdin"),
    ):
        cp = _run({**env, "DATABASE_URL": bad, "AGENT_VAULT_MASTER_PASSWORD": MASTER_PASSWORD}, *args,
                  stdin=OWNER_PASSWORD + "\n")  # fmt: skip
        assert cp.returncode == 1, cp.stderr
        lines = cp.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith(
            "error: cannot open the database postgresql://postgres:***@"
        )
        assert URL_PASSWORD not in cp.stderr + cp.stdout
    flag = _run(
        env, "server", "--database-url", "postgresql://x@127.0.0.1:1/y", "--port", "0", "--proxy-port", "0"
    )
    assert flag.returncode == 1 and "cannot open the database" in flag.stderr
    empty = _run(
        {**env, "DATABASE_URL": pg.new_database(), "AGENT_VAULT_MASTER_PASSWORD": MASTER_PASSWORD}, "server"
    )
    assert empty.returncode == 1
    assert empty.stderr.startswith("error: the PostgreSQL database holds no agent-vault instance")


def test_migrate_db_moves_a_sqlite_instance_that_then_serves_and_verifies(
    pg: Any, tmp_path: Path, upstream_ca: trustme.CA, upstream: TLSUpstream
) -> None:
    old = _proc(tmp_path, "old", upstream_ca, None)
    with old:
        token = _configure(old, upstream)
        _injects(old, token, upstream)
        records = _verified(old)
    url = pg.new_database()
    moved = old.cli("migrate-db", "--to", url)
    assert re.fullmatch(
        r"copied instance [0-9a-f]{8} \(\d+ rows, \d+ audit records\) into postgresql://.*\n", moved.stdout
    )
    twice = old.cli("migrate-db", "--to", url, check=False)
    assert twice.returncode == 1 and twice.stderr.startswith("error: the target database is not empty")
    usage = old.cli("migrate-db", "--to", "mysql://x/y", check=False)
    assert usage.returncode == 2
    new = _proc(tmp_path, "new", upstream_ca, url)
    new.start()
    try:
        _injects(new, token, upstream)  # ids, sealed values, the CA and the agent's token moved as they were
        assert _verified(new) > records  # the chain copied from SQLite goes on in PostgreSQL
        with new.http() as c:  # a new row gets a fresh id (the identity sequences were reset)
            r = c.post("/v1/vaults", json={"name": "after-move"})
            assert r.status_code in (200, 201), r.text
    finally:
        assert new.stop() == 0
    assert SECRET not in new.stderr_text()


def test_detached_server_gets_the_url_through_its_environment_never_argv(pg: Any, tmp_path: Path) -> None:
    """PostgreSQL here trusts loopback, so a URL with a password connects: the password must not reach
    the detached child's argv, the log or any output."""
    url = pg.new_database().replace("postgresql://postgres@", f"postgresql://postgres:{URL_PASSWORD}@")
    env = base_env(tmp_path, DATABASE_URL=url, AGENT_VAULT_MASTER_PASSWORD=MASTER_PASSWORD)
    init = _run(env, "init", "--owner-email", OWNER_EMAIL, "--password-stdin", stdin=OWNER_PASSWORD + "\n")
    assert init.returncode == 0, init.stderr
    started = _run(env, "server", "--detach", "--port", "0", "--proxy-port", "0")
    assert started.returncode == 0, started.stderr
    home = Path(env["AGENT_VAULT_HOME"])
    pid = int((home / "server.lock").read_text().split()[0])
    try:
        argv = Path(f"/proc/{pid}/cmdline").read_bytes().decode()
        assert "postgresql" not in argv and URL_PASSWORD not in argv
        assert URL_PASSWORD not in started.stdout + started.stderr
    finally:
        stopped = _run(env, "server", "stop")
    assert stopped.returncode == 0, stopped.stderr
    assert URL_PASSWORD not in (home / "server.log").read_text()


def test_migrate_db_refuses_a_passwordless_instance_and_leaves_the_target_empty(
    pg: Any, tmp_path: Path
) -> None:
    env = base_env(tmp_path)
    init = _run(env, "init", "--key-mode", "passwordless", "--owner-email", OWNER_EMAIL, "--password-stdin",
                stdin=OWNER_PASSWORD + "\n")  # fmt: skip
    assert init.returncode == 0, init.stderr
    url = pg.new_database()
    cp = _run(env, "migrate-db", "--to", url)
    assert cp.returncode == 1 and cp.stdout == ""
    assert cp.stderr.startswith("error: passwordless mode is not available with PostgreSQL")
    assert "master-password set" in cp.stderr and len(cp.stderr.strip().splitlines()) == 1
    with psycopg.connect(url) as conn:
        tables = conn.execute("SELECT count(*) FROM pg_tables WHERE schemaname = 'public'").fetchone()
    assert tables == (0,)  # refused before the target was even opened
