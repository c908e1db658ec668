"""The real CLI (subprocesses) against the real server: login, credentials, vaults, agents, services, CA.

Every CLI run is a Python start-up, so independent invocations run concurrently (`parallel`).
"""

from __future__ import annotations

import json
import stat
from pathlib import Path

import httpx
import pytest
from helpers.cli_fixtures import (
    SECRET,
    Call,
    assert_clean,
    mserver,
    mupstream,
    parallel,
    proxy_status,
)
from helpers.env import base_env
from helpers.server import OWNER_EMAIL, OWNER_PASSWORD, ServerProc
from helpers.upstream import TLSUpstream

__all__ = ["mserver", "mupstream"]
PW = OWNER_PASSWORD + "\n"


@pytest.fixture(autouse=True)
def _no_leftover_context(mserver: ServerProc) -> None:
    (mserver.home / "cli" / "context").unlink(missing_ok=True)


def test_login_from_stdin_stores_the_token_privately(mserver: ServerProc) -> None:
    login = mserver.login_result  # type: ignore[attr-defined]
    assert login.returncode == 0 and "logged in as owner@example.com" in login.stdout
    session = mserver.home / "cli" / "session.json"
    data = json.loads(session.read_text())
    assert (
        data["token"].startswith("av_usr_") and data["email"] == OWNER_EMAIL and data["addr"] == mserver.api
    )
    assert stat.S_IMODE(session.stat().st_mode) == 0o600
    assert data["token"] not in login.stdout + login.stderr
    other = {**mserver.env, "AGENT_VAULT_HOME": str(mserver.tmp / "other-home")}
    st, bad = parallel(
        mserver,
        Call("auth", "status", "--json"),
        Call(
            "auth",
            "login",
            "--email",
            OWNER_EMAIL,
            "--password-stdin",
            input="wrong-password\n",
            check=False,
            env=other,
        ),
    )
    assert json.loads(st.stdout)["valid"] is True and data["token"] not in st.stdout
    assert bad.returncode == 1 and bad.stderr.startswith("error: ") and bad.stderr.count("\n") == 1
    assert_clean(bad, "wrong-password")


def test_credential_values_never_printed(mserver: ServerProc, tmp_path: Path) -> None:
    value_file = tmp_path / "value.txt"
    value_file.write_text(SECRET + "-file\n")
    sets = parallel(
        mserver,
        Call(
            "vault",
            "credential",
            "set",
            "FROM_STDIN",
            "--stdin",
            "--description",
            "via stdin",
            input=SECRET + "-stdin\n",
        ),
        Call(
            "vault",
            "credential",
            "set",
            "FROM_ENV",
            "--from-env",
            "MY_VALUE",
            env={**mserver.env, "MY_VALUE": SECRET + "-env"},
        ),
        Call("vault", "credential", "set", "FROM_FILE", "--from-file", str(value_file)),
    )
    rotate, listing, as_json, empty, reveal = parallel(
        mserver,
        Call("vault", "credential", "rotate", "FROM_FILE", "--stdin", input=SECRET + "-rotated"),
        Call("vault", "credential", "list", env={**mserver.env, "COLUMNS": "200"}),
        Call("vault", "credential", "list", "--json"),
        Call("vault", "credential", "set", "EMPTY_ONE", "--stdin", input="", check=False),
        Call("vault", "credential", "get", "FROM_ENV", "--reveal", check=False),
    )
    for cp in [*sets, rotate, listing, as_json, empty, reveal]:
        assert_clean(cp, SECRET)
    creds = {c["key"]: c for c in json.loads(as_json.stdout)["credentials"]}
    assert set(creds) >= {"FROM_STDIN", "FROM_ENV", "FROM_FILE"} and "EMPTY_ONE" not in creds
    assert creds["FROM_STDIN"]["description"] == "via stdin" and creds["FROM_ENV"]["has_value"] is True
    assert "FROM_STDIN" in listing.stdout and "FROM_ENV" in listing.stdout
    assert empty.returncode == 1 and "empty" in empty.stderr
    assert reveal.returncode == 1 and "terminal" in reveal.stderr
    assert "rotated FROM_FILE" in rotate.stdout
    with mserver.http() as c:  # stored exactly as given (one trailing newline dropped)
        for key, want in (("FROM_FILE", "-rotated"), ("FROM_STDIN", "-stdin"), ("FROM_ENV", "-env")):
            got = c.post(f"/v1/vaults/default/credentials/{key}/reveal", json={"password": OWNER_PASSWORD})
            assert got.json()["value"] == SECRET + want
    gone = mserver.cli("vault", "credential", "delete", "FROM_ENV", "--yes")
    assert_clean(gone, SECRET)
    with mserver.http() as c:
        keys = [x["key"] for x in c.get("/v1/vaults/default/credentials").json()["credentials"]]
    assert "FROM_ENV" not in keys


def test_errors_are_one_line_with_the_right_exit_code(mserver: ServerProc) -> None:
    mserver.cli("vault", "create", "dup-vault")
    dup, bad1, bad2, unknown, nokey, as_json, wrong_pw = parallel(
        mserver,
        Call("vault", "create", "dup-vault", check=False),
        Call("vault", "create", "Bad_Name", check=False),
        Call("vault", "create", "users", check=False),
        Call("vault", "list", "--frobnicate", check=False),
        Call("vault", "credential", "set", "lower_case", "--stdin", input="x", check=False),
        Call("--json", "vault", "create", "dup-vault", check=False),
        Call("vault", "delete", "dup-vault", "--yes", "--password-stdin", input="nope\n", check=False),
    )
    for cp in (dup, bad1, bad2, unknown, nokey, wrong_pw):
        assert cp.stderr.startswith("error: ") and cp.stderr.count("\n") == 1, cp.stderr
        assert cp.stdout == ""
    for cp in (dup, bad1, bad2, nokey, as_json, wrong_pw):
        assert cp.returncode == 1, cp.stderr
        assert_clean(cp, "nope")
    assert (
        "already exists" in dup.stderr and "invalid vault name" in bad1.stderr and "reserved" in bad2.stderr
    )
    assert unknown.returncode == 2
    assert "invalid credential key" in nokey.stderr
    assert json.loads(as_json.stderr)["error"] == "conflict"
    assert "password confirmation failed" in wrong_pw.stderr


def test_agent_token_printed_once_and_rotation_kills_the_old_one(
    mserver: ServerProc, mupstream: TLSUpstream
) -> None:
    url = f"https://localhost:{mupstream.port}/echo/agent"
    created = mserver.cli(
        "agent", "create", "cli-bot", "--vault", "default:proxy", "--password-stdin", input=PW
    )
    token = created.stdout.strip()
    assert token.startswith("av_agt_") and created.stdout.count("av_agt_") == 1
    assert "shown once" in created.stderr and token not in created.stderr
    listing, info, sess = parallel(
        mserver,
        Call("agent", "list", "--json"),
        Call("agent", "info", "cli-bot"),
        Call("session", "create", "--ttl", "10m", "--agent", "cli-bot", "--label", "box"),
    )
    assert token not in listing.stdout + listing.stderr + info.stdout + info.stderr
    session = sess.stdout.strip()
    assert session.startswith("av_sess_") and sess.stdout.count("\n") == 1 and "box" not in sess.stdout
    assert proxy_status(mserver, session, url) == 200
    agents = {a["name"]: a for a in json.loads(listing.stdout)["agents"]}
    assert agents["cli-bot"]["vaults"] == [{"name": "default", "role": "proxy"}]
    assert proxy_status(mserver, token, url) == 200

    rotated = mserver.cli("agent", "rotate", "cli-bot", "--password-stdin", input=PW)
    new = rotated.stdout.strip()
    assert new.startswith("av_agt_") and new != token
    assert proxy_status(mserver, token, url) == 407  # at once: no grace
    assert proxy_status(mserver, new, url) == 200
    sessions = json.loads(mserver.cli("vault", "session", "list", "--json").stdout)["sessions"]
    sid = next(x["id"] for x in sessions if x["label"] == "box")
    mserver.cli("vault", "session", "revoke", str(sid))
    assert proxy_status(mserver, session, url) == 407
    mserver.cli("agent", "delete", "cli-bot", "--yes")
    assert proxy_status(mserver, new, url) == 407


def test_vault_grants(mserver: ServerProc) -> None:
    with mserver.http() as c:
        c.post("/v1/vaults", json={"name": "grant-vault"}).raise_for_status()
    mserver.make_agent("grant-bot")
    v = ("--vault", "grant-vault")
    added, set_role = parallel(
        mserver,
        Call("vault", "agent", "add", "grant-bot", *v, "--role", "member", "--password-stdin", input=PW),
        Call(
            "agent",
            "set-role",
            "grant-bot",
            "--vault",
            "default",
            "--role",
            "member",
            "--password-stdin",
            input=PW,
        ),
    )
    assert "role member on vault grant-vault" in added.stdout
    listed, bad = parallel(
        mserver,
        Call("vault", "agent", "list", *v, "--json"),
        Call(
            "vault",
            "agent",
            "add",
            "grant-bot",
            *v,
            "--role",
            "admin",
            "--password-stdin",
            input=PW,
            check=False,
        ),
    )
    assert json.loads(listed.stdout)["agents"] == [{"name": "grant-bot", "role": "member"}]
    assert bad.returncode == 2 and bad.stderr.startswith("error: ")
    with mserver.http() as c:
        vaults = c.get("/v1/agents/grant-bot").json()["vaults"]
    assert vaults == [{"name": "default", "role": "member"}, {"name": "grant-vault", "role": "member"}]
    mserver.cli("vault", "agent", "remove", "grant-bot", *v, "--password-stdin", input=PW)
    with mserver.http() as c:
        assert c.get("/v1/vaults/grant-vault/agents").json()["agents"] == []


def test_vault_lifecycle_context_and_settings(mserver: ServerProc) -> None:
    with mserver.http() as c:
        c.post("/v1/vaults", json={"name": "team-x"}).raise_for_status()
    used = mserver.cli("vault", "use", "team-x")
    ctx = mserver.home / "cli" / "context"
    assert "team-x" in used.stdout and ctx.read_text().strip() == "team-x"
    assert stat.S_IMODE(ctx.stat().st_mode) == 0o600
    cur, cur_env, changed = parallel(
        mserver,
        Call("--json", "vault", "current"),
        Call("vault", "current", env={**mserver.env, "AGENT_VAULT_VAULT": "default"}),
        Call(
            "vault",
            "settings",
            "--unmatched-policy",
            "deny",
            "--enforcement",
            "dry-run",
            "--password-stdin",
            input=PW,
        ),
    )
    assert json.loads(cur.stdout) == {"vault": "team-x", "source": str(ctx)}
    assert cur_env.stdout.startswith("default (from AGENT_VAULT_VAULT)")
    assert "unmatched_policy: deny" in changed.stdout and "enforcement: dry-run" in changed.stdout
    mserver.cli("vault", "rename", "team-x", "team-y", "--password-stdin", input=PW)
    assert ctx.read_text().strip() == "team-y"
    disc = json.loads(mserver.cli("vault", "discover", "--json").stdout)
    assert disc["vault"] == "team-y" and disc["unmatched_policy"] == "deny"
    mserver.cli("vault", "delete", "team-y", "--yes", "--password-stdin", input=PW)
    with mserver.http() as c:
        names = [v["name"] for v in c.get("/v1/vaults").json()["vaults"]]
    assert "team-y" not in names and "team-x" not in names


def _services(server: ServerProc, vault: str) -> list[dict[str, object]]:
    with server.http() as c:
        return list(c.get(f"/v1/vaults/{vault}/services").json()["services"])


def test_services_from_flags_catalog_and_files(mserver: ServerProc, tmp_path: Path) -> None:
    with mserver.http() as c:
        c.post("/v1/vaults", json={"name": "svc-vault"}).raise_for_status()
    v = ("--vault", "svc-vault")
    parallel(
        mserver,
        Call(
            "vault",
            "service",
            "add",
            "echo-api",
            *v,
            "--host",
            "localhost",
            "--port",
            "8443",
            "--path",
            "/api/*",
            "--method",
            "get",
            "--auth-type",
            "bearer",
            "--token-key",
            "ECHO_TOKEN",
            "--password-stdin",
            input=PW,
        ),
        Call(
            "vault",
            "service",
            "add",
            "github",
            *v,
            "--from-catalog",
            "github",
            "--disabled",
            "--password-stdin",
            input=PW,
        ),
    )
    services_file = tmp_path / "more.yaml"
    services_file.write_text(
        "services:\n"
        "  - {name: echo-api, host: localhost, port: 8443, path: /v3,\n"
        "     auth: {type: bearer, token: ECHO_TOKEN}}\n"
        "  - {name: anthropic, host: api.anthropic.com,\n"
        "     auth: {type: api-key, key: ANTHROPIC_API_KEY, header: x-api-key}}\n"
    )
    invalid = tmp_path / "bad.yaml"
    invalid.write_text("services:\n  - {name: wild, host: '*', auth: {type: passthrough}}\n")
    patched, dry, bad = parallel(
        mserver,
        Call(
            "vault",
            "service",
            "set",
            "echo-api",
            *v,
            "--no-redact",
            "--path",
            "/v2",
            "--password-stdin",
            input=PW,
        ),
        Call("vault", "service", "import", str(services_file), *v, "--dry-run", "--json"),
        Call("vault", "service", "import", str(invalid), *v, "--dry-run", check=False),
    )
    assert "updated service echo-api" in patched.stdout
    assert json.loads(dry.stdout)["plan"][1] == {"action": "add", "name": "anthropic"}
    assert bad.returncode == 1 and "services[0] (wild)" in bad.stderr
    assert_clean(bad)
    shown = {s["name"]: s for s in _services(mserver, "svc-vault")}
    assert len(shown) == 2  # the dry run changed nothing
    echo = shown["echo-api"]
    assert (echo["path"], echo["methods"], echo["redact_response"], echo["port"]) == (
        "/v2",
        ["GET"],
        False,
        8443,
    )
    assert echo["auth"] == {"type": "bearer", "token": "ECHO_TOKEN"}
    assert shown["github"]["host"] == "api.github.com" and shown["github"]["enabled"] is False

    mserver.cli("vault", "service", "import", str(services_file), *v, "--password-stdin", input=PW)
    listed = _services(mserver, "svc-vault")
    assert {(s["name"], s["path"]) for s in listed} == {
        ("echo-api", "/v3"),
        ("github", "/"),
        ("anthropic", "/"),
    }
    assert listed[-1]["name"] == "anthropic"  # new services are appended
    exported = tmp_path / "export.toml"
    mserver.cli("vault", "service", "export", *v, "--format", "toml", "-o", str(exported))
    with mserver.http() as c:  # replace with one service, then restore everything from the TOML export
        c.put("/v1/vaults/svc-vault/services", json={"password": OWNER_PASSWORD, "services": [listed[0]]})
    replaced = mserver.cli(
        "vault", "service", "import", str(exported), *v, "--replace", "--password-stdin", input=PW
    )
    assert f"unchanged {listed[0]['name']}" in replaced.stdout
    assert all(f"add {x['name']}" in replaced.stdout for x in listed[1:])
    assert _services(mserver, "svc-vault") == listed


def test_user_invite_accept_and_remote_agent_ca_fetch(mserver: ServerProc, tmp_path: Path) -> None:
    invited = mserver.cli(
        "user", "invite", "dev@example.com", "--vault", "default:member", "--password-stdin", input=PW
    )
    url = invited.stdout.strip()
    assert "token=av_inv_" in url
    dev_env = base_env(tmp_path, AGENT_VAULT_HOME=str(tmp_path / "dev-home"))
    # A remote agent: only AGENT_VAULT_ADDR + AGENT_VAULT_TOKEN, and its own empty home.
    token = mserver.make_agent("remote-bot")
    agent_home = tmp_path / "agent-home"
    agent_env = base_env(
        tmp_path, AGENT_VAULT_HOME=str(agent_home), AGENT_VAULT_ADDR=mserver.api, AGENT_VAULT_TOKEN=token
    )
    accepted, fetched = parallel(
        mserver,
        Call("user", "accept", url, "--password-stdin", input="dev-password-123\n", env=dev_env),
        Call("ca", "fetch", env=agent_env),
    )
    assert "dev@example.com" in accepted.stdout
    me, path = parallel(
        mserver, Call("auth", "status", "--json", env=dev_env), Call("ca", "path", "--bundle", env=agent_env)
    )
    me_data = json.loads(me.stdout)
    assert me_data["name"] == "dev@example.com" and me_data["vaults"] == [
        {"name": "default", "role": "member"}
    ]

    logout = mserver.cli("auth", "logout", env=dev_env)
    assert "logged out dev@example.com" in logout.stdout
    assert not (tmp_path / "dev-home" / "cli" / "session.json").exists()

    cert, bundle = agent_home / "certs" / "ca-cert.pem", agent_home / "certs" / "ca-bundle.pem"
    ca = httpx.get(mserver.api + "/v1/mitm/ca.pem").content
    assert cert.read_bytes().strip() == ca.strip()
    assert bundle.read_bytes().rstrip().endswith(ca.strip())
    assert bundle.read_bytes().count(b"BEGIN CERTIFICATE") > 10  # the system roots come first
    for f in (cert, bundle):
        assert stat.S_IMODE(f.stat().st_mode) == 0o644
    assert str(bundle) in fetched.stdout and path.stdout.strip() == str(bundle)
    assert_clean(fetched, token)


def test_doctor(mserver: ServerProc) -> None:
    cp, broken = parallel(
        mserver,
        Call("doctor", "--json", check=False),
        Call(
            "doctor",
            env={**mserver.env, "HTTPS_PROXY": "http://a:1", "https_proxy": "http://b:2"},
            check=False,
        ),
    )
    checks = {c["check"]: c for c in json.loads(cp.stdout)["checks"]}
    for name in ("home", "server", "login", "ca", "proxy"):
        assert checks[name]["status"] == "ok", checks[name]
    assert "407" in checks["proxy"]["detail"]
    assert cp.returncode == (1 if any(c["status"] == "fail" for c in checks.values()) else 0)
    assert broken.returncode == 1 and "conflicting" in broken.stdout


def _pty_cli(
    server: ServerProc, args: list[str], answers: list[tuple[bytes, bytes]], timeout: float = 30
) -> bytes:
    """Run the CLI on a pseudo-terminal (a real TTY with a controlling terminal); answer prompts in order."""
    import os
    import pty
    import select
    import sys
    import time

    env = {**server.env, "AGENT_VAULT_ADDR": server.api, "COLUMNS": "200"}
    pid, fd = pty.fork()
    if pid == 0:  # child
        os.execve(sys.executable, [sys.executable, "-m", "agent_vault", *args], env)
    seen = since_answer = b""
    end = time.monotonic() + timeout
    try:
        while time.monotonic() < end:
            if answers and answers[0][0] in since_answer:
                os.write(fd, answers.pop(0)[1])
                since_answer = b""
            r, _, _ = select.select([fd], [], [], 0.2)
            if r:
                try:
                    chunk = os.read(fd, 4096)
                except OSError:  # EIO: the child closed the terminal
                    break
                if not chunk:
                    break
                seen += chunk
                since_answer += chunk
    finally:
        os.close(fd)
        _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0, seen
    return seen


def test_reveal_on_a_terminal_after_typed_confirmation(mserver: ServerProc) -> None:
    mserver.set_credential("REVEAL_ME", SECRET + "-reveal")
    out = _pty_cli(
        mserver,
        ["vault", "credential", "get", "REVEAL_ME", "--reveal"],
        [(b"Type REVEAL_ME to confirm", b"REVEAL_ME\n"), (b"password", OWNER_PASSWORD.encode() + b"\n")],
    )
    assert (SECRET + "-reveal").encode() in out
    assert OWNER_PASSWORD.encode() not in out  # hidden input is not echoed


def test_user_accept_takes_the_invite_from_stdin_never_needing_argv(
    mserver: ServerProc, tmp_path: Path
) -> None:
    """SPEC §14.11: the invite token can stay off the command line (`--invite-stdin`, then the password
    on the next line); without it and without a terminal, a one-line error names both ways."""
    invited = mserver.cli(
        "user", "invite", "stdin-dev@example.com", "--vault", "default:member", "--password-stdin", input=PW
    )
    url = invited.stdout.strip()
    env = base_env(tmp_path, AGENT_VAULT_HOME=str(tmp_path / "stdin-dev-home"))
    missing = mserver.cli("user", "accept", "--password-stdin", input="x\n", env=env, check=False)
    assert missing.returncode != 0 and "--invite-stdin" in missing.stderr, missing.stderr
    assert "Traceback" not in missing.stderr
    accepted = mserver.cli(
        "user", "accept", "--invite-stdin", "--password-stdin", input=f"{url}\nstdin-dev-pass-1\n", env=env
    )
    assert "stdin-dev@example.com" in accepted.stdout
    me = json.loads(mserver.cli("auth", "status", "--json", env=env).stdout)
    assert me["name"] == "stdin-dev@example.com"
