"""The real CLI (subprocesses, some on a pseudo-terminal) against the real server, where a terminal is
missing, a password is missing, or the server is not where the defaults say:

* a step-up command without a terminal and without --password-stdin sends no password: the server
  refuses it without counting it as a failed login (scripts cannot lock the owner out), and the one
  error line says to pass --password-stdin; wrong passwords still count, and the 429 line says how long;
* the CLI talks to the server running for its home (its ports from `<home>/server.json`), not to a
  stale login's old address, and checks the server answers before asking for a password;
* the first `server` start on a terminal runs init and says the server is starting.
"""

from __future__ import annotations

import json
import re
import signal
import socket
import subprocess
from pathlib import Path

import httpx
from helpers.cli_fixtures import Call, parallel, run_cli
from helpers.env import base_env
from helpers.server import OWNER_EMAIL, OWNER_PASSWORD, ServerProc
from helpers.terminal import Term

PW = OWNER_PASSWORD + "\n"
WRONG = "wrong-password-123\n"
RETRY_AFTER = re.compile(r"retry after (\d+m )?\d+s")


def _login(server: ServerProc) -> None:
    server.cli("auth", "login", "--email", OWNER_EMAIL, "--password-stdin", input=PW)


def _one_line(cp: subprocess.CompletedProcess[str]) -> str:
    assert cp.returncode == 1, cp
    lines = cp.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), cp.stderr
    assert "Traceback" not in cp.stderr
    return lines[0]


def _failed_logins(server: ServerProc) -> list[dict[str, object]]:
    with server.http() as c:
        c.post("/v1/audit/verify", json={}).raise_for_status()  # flushes the audit writer first
        r = c.get("/v1/audit", params={"kind": "auth.login_failed", "limit": 1000})
        r.raise_for_status()
        return list(r.json()["records"])


def test_step_up_without_a_terminal_is_not_a_failed_login(server: ServerProc) -> None:
    _login(server)
    # `for i in $(seq 12); do agent-vault agent create b$i </dev/null; done`, more than the limit (10)
    no_password = [Call("agent", "create", f"bot-{i}", input="", check=False) for i in range(12)]
    for cp in parallel(server, *no_password):
        line = _one_line(cp)
        assert "--password-stdin" in line and "step-up" in line, line
        assert "too many" not in line
    assert _failed_logins(server) == []
    ok = server.cli("agent", "create", "bot-ok", "--password-stdin", input=PW)
    assert "av_agt_" in ok.stdout
    elsewhere = {**server.env, "AGENT_VAULT_HOME": str(server.tmp / "second-home")}
    server.cli("auth", "login", "--email", OWNER_EMAIL, "--password-stdin", input=PW, env=elsewhere)
    with server.http() as c:
        names = {a["name"] for a in c.get("/v1/agents").json()["agents"]}
    assert "bot-ok" in names and not any(n.startswith("bot-") and n != "bot-ok" for n in names)


def test_wrong_step_up_passwords_still_lock_out_and_the_error_says_how_long(server: ServerProc) -> None:
    _login(server)
    wrong = [
        Call("agent", "create", f"bot-{i}", "--password-stdin", input=WRONG, check=False) for i in range(10)
    ]
    for cp in parallel(server, *wrong):
        assert "password confirmation failed" in _one_line(cp)
    assert len(_failed_logins(server)) == 10
    # now even the right password is refused, and the line says for how long (not "the given delay")
    late = _one_line(server.cli("agent", "create", "late", "--password-stdin", input=PW, check=False))
    assert "too many failed password attempts" in late and RETRY_AFTER.search(late), late
    elsewhere = {**server.env, "AGENT_VAULT_HOME": str(server.tmp / "second-home")}
    login = server.cli(
        "auth", "login", "--email", OWNER_EMAIL, "--password-stdin", input=PW, env=elsewhere, check=False
    )
    assert RETRY_AFTER.search(_one_line(login))
    as_json = server.cli("--json", "agent", "create", "late", "--password-stdin", input=PW, check=False)
    body = json.loads(as_json.stderr)
    assert body["error"] == "rate_limited" and isinstance(body["retry_after"], int)


def _cli(env: dict[str, str], *args: str, input: str | None = None) -> subprocess.CompletedProcess[str]:
    """The CLI with `env` as is: no AGENT_VAULT_ADDR (ServerProc.cli would add one)."""
    return run_cli(list(args), env, input=input, timeout=60)


def test_the_cli_talks_to_this_homes_server_not_to_a_stale_login(server: ServerProc) -> None:
    assert not server.api.endswith(":14321")  # an ephemeral port: the default would miss it
    assert "AGENT_VAULT_ADDR" not in server.env
    with socket.socket() as trap:  # where an old login points: whoever listens there now must get nothing
        trap.bind(("127.0.0.1", 0))
        trap.listen(8)
        trap.setblocking(False)
        stale = f"http://127.0.0.1:{trap.getsockname()[1]}"
        session = server.home / "cli" / "session.json"
        session.parent.mkdir(mode=0o700, exist_ok=True)
        session.write_text(
            json.dumps(
                {"addr": stale, "token": "av_usr_" + "s" * 43, "email": OWNER_EMAIL, "expires_at": None}
            )
        )
        session.chmod(0o600)
        login = _cli(server.env, "auth", "login", "--email", OWNER_EMAIL, "--password-stdin", input=PW)
        assert login.returncode == 0, login.stderr
        assert f"at {server.api}" in login.stdout
        assert json.loads(session.read_text())["addr"] == server.api
        made = _cli(server.env, "agent", "create", "via-state-file", "--password-stdin", input=PW)
        assert made.returncode == 0 and "av_agt_" in made.stdout, made.stderr
        st = _cli(server.env, "--json", "auth", "status")
        assert st.returncode == 0 and json.loads(st.stdout)["addr"] == server.api, st
        try:
            trap.accept()
            raise AssertionError("the CLI connected to the stale login's address")
        except BlockingIOError:
            pass


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_an_unreachable_server_is_reported_before_the_password_prompt(tmp_path: Path) -> None:
    addr = f"http://127.0.0.1:{_closed_port()}"
    for args in (["agent", "create", "bot-1"], ["auth", "login", "--email", OWNER_EMAIL]):
        t = Term(args, base_env(tmp_path, AGENT_VAULT_ADDR=addr))
        rc, text = t.finish()
        assert rc == 1, (args, text)
        assert f"cannot reach the server at {addr}" in text, (args, text)
        assert "password" not in text.lower() and "Traceback" not in text, (args, text)


def test_first_start_on_a_terminal_says_the_server_is_starting(tmp_path: Path) -> None:
    env = base_env(tmp_path, AGENT_VAULT_HOME=str(tmp_path / "home"))
    t = Term(["server", "--port", "0", "--proxy-port", "0"], env, timeout=120)
    try:
        for prompt, answer in (
            ("Owner email", OWNER_EMAIL),
            ("Login password (8+ characters): ", OWNER_PASSWORD),
            ("Repeat: ", OWNER_PASSWORD),
            ("Master password (12+ characters): ", "first-master-password-1"),
            ("Repeat: ", "first-master-password-1"),
        ):
            t.expect(prompt)
            t.send(answer)
        report = t.expect("agent-vault ready api=")
        assert "initialised" in report and "starting the server" in report, report
        assert "start it with" not in report
        api = t.expect(" ").strip()
        assert httpx.get(api + "/v1/status", trust_env=False).status_code == 200
    finally:
        if t.proc.poll() is None:
            t.proc.send_signal(signal.SIGTERM)
        rc, _ = t.finish()
    assert rc == 0


def test_status_follows_the_project_files_addr(server: ServerProc, tmp_path: Path) -> None:
    """`.agent-vault.toml`'s `addr` picks the server for `status` as for every other command (it said
    "no agent-vault server is running" for a home without one, ignoring the project file)."""
    project = tmp_path / "project"
    project.mkdir()
    (project / ".agent-vault.toml").write_text(f'addr = "{server.api}"\n')
    env = base_env(tmp_path / "elsewhere")  # another home, where no server runs
    st = run_cli(["--json", "status"], env, cwd=project)
    assert st.returncode == 0, st.stderr
    assert json.loads(st.stdout)["addr"] == server.api
    outside = run_cli(["status"], env, cwd=tmp_path)
    assert outside.returncode == 1 and "no agent-vault server is running" in outside.stderr
