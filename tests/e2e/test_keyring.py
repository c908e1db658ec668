"""The OS keyring (SPEC §4.2 key mode `keyring`, §4.4 CLI login) against a REAL keyring backend:
keyrings.alt's PlaintextKeyring, a file under the test's own XDG_DATA_HOME, selected with keyring's
PYTHON_KEYRING_BACKEND. A keyring that fails (its data folder is a plain file, so every write fails)
falls back with one note; the real server and CLI run as subprocesses."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import trustme
from helpers.cli_fixtures import run_cli
from helpers.env import base_env
from helpers.server import MASTER_PASSWORD, OWNER_EMAIL, OWNER_PASSWORD, ServerProc

from agent_vault.cli.loginstore import keyring_user

BACKEND = "keyrings.alt.file.PlaintextKeyring"


def keyring_env(tmp: Path, *, broken: bool = False) -> dict[str, str]:
    data = tmp / ("xdg-broken" if broken else "xdg-data")
    if broken:
        data.write_text("not a folder: every keyring write fails\n")
    return {"AGENT_VAULT_KEYRING": "1", "PYTHON_KEYRING_BACKEND": BACKEND, "XDG_DATA_HOME": str(data)}


def keyring_get(env: dict[str, str], username: str) -> str | None:
    code = "import keyring, sys; v = keyring.get_password('agent-vault', sys.argv[1]); print(v or '')"
    cp = subprocess.run(
        [sys.executable, "-c", code, username],
        env=env,
        capture_output=True,
        text=True,
        check=True,
        timeout=30,
    )
    return cp.stdout.strip() or None


def _login(s: ServerProc, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return s.cli(
        "--json",
        "auth",
        "login",
        "--email",
        OWNER_EMAIL,
        "--password-stdin",
        input=OWNER_PASSWORD + "\n",
        env=env,
    )


def _doctor_line(s: ServerProc, env: dict[str, str] | None = None) -> dict[str, str]:
    cp = s.cli("--json", "doctor", env=env, check=False)
    checks = json.loads(cp.stdout)["checks"]
    return next(c for c in checks if c["check"] == "login store")


def test_key_mode_keyring_init_unlock_and_restart(tmp_path: Path, upstream_ca: trustme.CA) -> None:
    s = ServerProc(tmp_path, upstream_ca, key_mode="keyring", env=keyring_env(tmp_path))
    s.master_env = False
    try:
        s.init()
        instance_id = json.loads((s.home / "instance.json").read_text())["instance_id"]
        assert keyring_get(s.env, f"master-password:{instance_id}") == MASTER_PASSWORD
        s.start()  # no AGENT_VAULT_MASTER_PASSWORD, no stdin, no terminal: the keyring unlocks it
        assert json.loads((s.home / "server.json").read_text())["key_mode"] == "keyring"
        s.set_credential("KR_KEY", "keyring-mode-value-0001")
        assert s.stop() == 0
        s.start()  # restart: unlocked from the keyring again, the value still decrypts
        with s.http() as c:
            rows = c.get("/v1/vaults/default/credentials").json()["credentials"]
        assert [r["key"] for r in rows if r["has_value"]] == ["KR_KEY"]
        assert "note:" not in s.stderr_text()
        assert s.stop() == 0
        # The entry gone: one note, then the password sources of mode `password` (none here: exit 1).
        (tmp_path / "xdg-data" / "python_keyring" / "keyring_pass.cfg").unlink()
        cp = subprocess.run(
            [sys.executable, "-m", "agent_vault", "server", "--port", "0", "--proxy-port", "0"],
            env=s.env,
            capture_output=True,
            text=True,
            stdin=subprocess.DEVNULL,
            timeout=60,
        )
        assert cp.returncode == 1 and cp.stdout == ""
        assert cp.stderr.count("no master password in the OS keyring") == 1
        assert "Traceback" not in cp.stderr and MASTER_PASSWORD not in cp.stderr
    finally:
        s.stop()


def test_key_mode_keyring_with_a_failing_keyring_falls_back(tmp_path: Path, upstream_ca: trustme.CA) -> None:
    s = ServerProc(tmp_path, upstream_ca, key_mode="keyring", env=keyring_env(tmp_path, broken=True))
    env = dict(s.env, AGENT_VAULT_MASTER_PASSWORD=MASTER_PASSWORD)
    cp = s.cli(
        "init",
        "--key-mode",
        "keyring",
        "--owner-email",
        OWNER_EMAIL,
        "--password-stdin",
        input=OWNER_PASSWORD + "\n",
        env=env,
    )
    assert "NOT in the OS keyring" in cp.stderr and "Traceback" not in cp.stderr
    assert MASTER_PASSWORD not in cp.stderr + cp.stdout
    try:
        s.start()  # the master password from the environment (it comes before the keyring anyway)
        assert json.loads((s.home / "server.json").read_text())["key_mode"] == "keyring"
        assert "Traceback" not in s.stderr_text()
    finally:
        s.stop()


def test_cli_login_in_the_keyring_status_doctor_and_logout(tmp_path: Path, upstream_ca: trustme.CA) -> None:
    with ServerProc(tmp_path, upstream_ca, env=keyring_env(tmp_path)) as s:
        info = json.loads(_login(s).stdout)
        assert info["stored_in"] == "OS keyring"
        session = s.home / "cli" / "session.json"
        pointer = json.loads(session.read_text())
        assert "token" not in pointer and pointer["stored_in"] == "keyring"
        assert "av_usr_" not in session.read_text()
        entry = keyring_get(s.env, keyring_user(s.home, s.api))
        assert entry is not None and keyring_get(s.env, f"session:{s.api}") is None  # per home
        token = json.loads(entry)["token"]
        assert token.startswith("av_usr_") and json.loads(entry)["email"] == OWNER_EMAIL
        status = json.loads(s.cli("--json", "auth", "status").stdout)
        assert status["valid"] is True and status["source"] == "OS keyring"
        assert s.cli("vault", "credential", "list").returncode == 0  # the token is read back
        line = _doctor_line(s)
        # keyrings.alt's PlaintextKeyring keeps it base64 in a file: doctor warns (real keyrings: ok)
        assert line["status"] == "warn" and line["detail"] == f"OS keyring ({BACKEND}): UNENCRYPTED on disk"
        s.cli("auth", "logout")
        assert keyring_get(s.env, keyring_user(s.home, s.api)) is None and not session.exists()
        with s.http(token) as c:
            assert c.get("/v1/auth/me").status_code == 401  # revoked on the server too


def test_cli_login_falls_back_to_the_file(tmp_path: Path, upstream_ca: trustme.CA) -> None:
    with ServerProc(tmp_path, upstream_ca) as s:  # base env: AGENT_VAULT_KEYRING=0
        cp = _login(s)
        session = s.home / "cli" / "session.json"
        assert json.loads(cp.stdout)["stored_in"] == str(session)
        assert "note:" not in cp.stderr  # switched off: no note
        assert json.loads(session.read_text())["token"].startswith("av_usr_")
        assert session.stat().st_mode & 0o777 == 0o600
        assert _doctor_line(s)["detail"].startswith(f"file {session} (0600)")
        s.cli("auth", "logout")
        assert not session.exists()


def test_a_failing_keyring_is_one_note_and_the_file(tmp_path: Path, upstream_ca: trustme.CA) -> None:
    with ServerProc(tmp_path, upstream_ca, env=keyring_env(tmp_path, broken=True)) as s:
        cp = _login(s)
        session = s.home / "cli" / "session.json"
        assert cp.stderr.count("note: the OS keyring failed") == 1 and "Traceback" not in cp.stderr
        assert "av_usr_" not in cp.stderr + cp.stdout
        assert json.loads(session.read_text())["token"].startswith("av_usr_")
        assert s.cli("vault", "credential", "list").returncode == 0
        assert "file" in _doctor_line(s)["detail"]
        s.cli("auth", "logout")
        assert not session.exists()


def test_leaving_key_mode_keyring_removes_the_entry(tmp_path: Path, upstream_ca: trustme.CA) -> None:
    s = ServerProc(tmp_path, upstream_ca, key_mode="keyring", env=keyring_env(tmp_path))
    s.init()
    instance_id = json.loads((s.home / "instance.json").read_text())["instance_id"]
    assert keyring_get(s.env, f"master-password:{instance_id}") == MASTER_PASSWORD
    env = dict(s.env, AGENT_VAULT_MASTER_PASSWORD=MASTER_PASSWORD)
    cp = s.cli("master-password", "remove", "--yes", env=env)
    assert "passwordless" in cp.stdout + cp.stderr
    assert keyring_get(s.env, f"master-password:{instance_id}") is None
    cp = s.cli("master-password", "set", "--keyring", "--password-stdin", input="another-master-pass-1\n")
    assert "stored in the OS keyring" in cp.stderr
    assert keyring_get(s.env, f"master-password:{instance_id}") == "another-master-pass-1"


def _detach(s: ServerProc, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "agent_vault", "server", "--detach", "--port", "0", "--proxy-port", "0"],
        env=env,
        capture_output=True,
        text=True,
        stdin=subprocess.DEVNULL,
        timeout=60,
    )


def test_detach_in_key_mode_keyring(tmp_path: Path, upstream_ca: trustme.CA) -> None:
    s = ServerProc(tmp_path, upstream_ca, key_mode="keyring", env=keyring_env(tmp_path))
    s.init()
    cp = _detach(s, s.env)  # no other source, no terminal: the keyring's password
    assert cp.returncode == 0, cp.stderr
    try:
        pid = json.loads((s.home / "server.json").read_text())["pid"]
        assert MASTER_PASSWORD.encode() not in Path(f"/proc/{pid}/environ").read_bytes()
    finally:
        assert s.cli("server", "stop").returncode == 0
    # a failing keyring: its reason in the one error line, and no advice to pass the --detach given
    cp = _detach(s, dict(s.env, PYTHON_KEYRING_BACKEND="no.such.Backend"))
    errors = [x for x in cp.stderr.splitlines() if x.startswith("error:")]
    assert cp.returncode == 1 and len(errors) == 1 and cp.stdout == "", cp.stderr
    assert "the OS keyring is unavailable (the keyring backend cannot load" in errors[0], errors
    assert "--password-stdin" in errors[0]
    assert "--detach" not in cp.stderr and "Traceback" not in cp.stderr
    (tmp_path / "xdg-data" / "python_keyring" / "keyring_pass.cfg").unlink()  # the entry gone
    cp = _detach(s, s.env)
    assert cp.returncode == 1 and "no master password in the OS keyring" in cp.stderr, cp.stderr
    assert "--detach" not in cp.stderr


USER2, USER2_PASSWORD = "second@example.com", "second-user-pw-1"


def keyring_set(env: dict[str, str], username: str, value: str) -> None:
    code = "import keyring, sys; keyring.set_password('agent-vault', sys.argv[1], sys.stdin.read())"
    subprocess.run(
        [sys.executable, "-c", code, username], env=env, input=value, check=True, timeout=30, text=True
    )


def _second_user(s: ServerProc) -> None:
    with s.http() as c:
        inv = c.post(
            "/v1/users/invites",
            json={
                "password": OWNER_PASSWORD,
                "email": USER2,
                "vaults": [{"vault": "default", "role": "admin"}],
            },
        )
        inv.raise_for_status()
        c.post(
            f"/v1/invites/{inv.json()['token']}/accept", json={"password": USER2_PASSWORD}
        ).raise_for_status()


def _status(s: ServerProc, env: dict[str, str]) -> tuple[int, dict[str, object], str]:
    cp = s.cli("--json", "auth", "status", env=env, check=False)
    assert "Traceback" not in cp.stderr and "av_usr_" not in cp.stdout + cp.stderr
    return cp.returncode, json.loads(cp.stdout), cp.stderr


def test_logins_from_two_homes_to_one_server_stay_apart(tmp_path: Path, upstream_ca: trustme.CA) -> None:
    with ServerProc(tmp_path, upstream_ca, env=keyring_env(tmp_path)) as s:
        _second_user(s)
        home_b = tmp_path / "home-b"
        env_b = dict(s.env, AGENT_VAULT_HOME=str(home_b))
        assert json.loads(_login(s).stdout)["stored_in"] == "OS keyring"  # home A: the owner
        cp = s.cli(
            "--json",
            "auth",
            "login",
            "--email",
            USER2,
            "--password-stdin",
            input=USER2_PASSWORD + "\n",
            env=env_b,
        )
        assert json.loads(cp.stdout)["stored_in"] == "OS keyring"  # home B: another user, same server
        code, a, _ = _status(s, s.env)
        assert code == 0 and a["email"] == OWNER_EMAIL and a["name"] == OWNER_EMAIL  # not B's user
        code, b, _ = _status(s, env_b)
        assert code == 0 and b["email"] == USER2 and b["name"] == USER2
        s.cli("auth", "logout", env=env_b)
        code, a, _ = _status(s, s.env)  # B's logout left A's login alone
        assert code == 0 and a["name"] == OWNER_EMAIL


def test_an_older_versions_shared_entry_is_taken_over_only_by_its_own_user(
    tmp_path: Path, upstream_ca: trustme.CA
) -> None:
    with ServerProc(tmp_path, upstream_ca, env=keyring_env(tmp_path)) as s:
        _second_user(s)
        legacy = f"session:{s.api}"
        keyring_set(s.env, legacy, s.login())  # an older version's entry: the owner's bare token
        home_b = tmp_path / "home-b"
        for home, email in ((home_b, USER2), (s.home, OWNER_EMAIL)):  # the pointers older versions wrote
            (home / "cli").mkdir(parents=True, exist_ok=True)
            pointer = {"addr": s.api, "email": email, "expires_at": None, "stored_in": "keyring"}
            (home / "cli" / "session.json").write_text(json.dumps(pointer))
        code, b, err = _status(s, dict(s.env, AGENT_VAULT_HOME=str(home_b)))  # not B's user: not used
        assert code == 1 and b["valid"] is False and "not used" in err and len(err.strip().splitlines()) == 1
        assert keyring_get(s.env, legacy) is not None  # left alone for the home it belongs to
        code, a, _ = _status(s, s.env)  # A's user: taken over, once
        assert code == 0 and a["name"] == OWNER_EMAIL
        assert keyring_get(s.env, legacy) is None
        assert json.loads(keyring_get(s.env, keyring_user(s.home, s.api)) or "{}")["email"] == OWNER_EMAIL
        assert _status(s, s.env)[0] == 0


def test_an_entry_of_another_user_than_the_pointer_is_not_used(
    tmp_path: Path, upstream_ca: trustme.CA
) -> None:
    with ServerProc(tmp_path, upstream_ca, env=keyring_env(tmp_path)) as s:
        _second_user(s)
        _login(s)
        entry = json.dumps({"email": USER2, "token": s.login(USER2, USER2_PASSWORD)})
        keyring_set(s.env, keyring_user(s.home, s.api), entry)
        code, a, err = _status(s, s.env)
        assert code == 1 and a["valid"] is False and a["email"] == OWNER_EMAIL
        assert f"is {USER2}'s" in err and "agent-vault auth login" in err


# -- the Secret Service (gnome-keyring on a private D-Bus session), when installed (.ci/run installs it)

SECRET_SERVICE = "keyring.backends.SecretService.Keyring"
needs_secret_service = pytest.mark.skipif(
    not (shutil.which("dbus-run-session") and shutil.which("gnome-keyring-daemon")),
    reason="dbus-run-session / gnome-keyring-daemon not installed",
)


def _ss_cli(
    s: ServerProc, tmp: Path, *args: str, unlock: bool, stdin: str | None = None
) -> subprocess.CompletedProcess[str]:
    """The real CLI inside its own D-Bus session with gnome-keyring's Secret Service; its keyrings live
    under tmp (XDG_DATA_HOME), unlocked with a test password or left locked (no prompter: it fails)."""
    run = tmp / "xdg-run"
    run.mkdir(mode=0o700, exist_ok=True)
    env = dict(
        s.env,
        AGENT_VAULT_ADDR=s.api,
        AGENT_VAULT_KEYRING="1",
        PYTHON_KEYRING_BACKEND=SECRET_SERVICE,
        XDG_DATA_HOME=str(tmp / "xdg-ss"),
        XDG_RUNTIME_DIR=str(run),
    )
    start = (
        "printf keyring-test-pw | gnome-keyring-daemon --unlock --components=secrets"
        if unlock
        else "gnome-keyring-daemon --start --components=secrets"
    )
    script = f'{start} >/dev/null 2>&1; exec "$@"'
    return subprocess.run(
        ["dbus-run-session", "--", "sh", "-c", script, "sh", sys.executable, "-m", "agent_vault", *args],
        env=env,
        input=stdin,
        capture_output=True,
        text=True,
        timeout=60,
    )


@needs_secret_service
def test_cli_login_in_the_secret_service_and_a_locked_one(tmp_path: Path, upstream_ca: trustme.CA) -> None:
    with ServerProc(tmp_path, upstream_ca) as s:
        login = ("--json", "auth", "login", "--email", OWNER_EMAIL, "--password-stdin")
        cp = _ss_cli(s, tmp_path, *login, unlock=True, stdin=OWNER_PASSWORD + "\n")
        assert cp.returncode == 0, cp.stderr
        assert json.loads(cp.stdout)["stored_in"] == "OS keyring"
        session = s.home / "cli" / "session.json"
        assert "av_usr_" not in session.read_text()
        cp = _ss_cli(s, tmp_path, "--json", "auth", "status", unlock=True)  # a new session reads it back
        assert cp.returncode == 0 and json.loads(cp.stdout)["source"] == "OS keyring", cp.stderr
        cp = _ss_cli(s, tmp_path, "--json", "doctor", unlock=True)
        line = next(c for c in json.loads(cp.stdout)["checks"] if c["check"] == "login store")
        assert line["detail"] == f"OS keyring ({SECRET_SERVICE})"
        # Locked (no prompter can unlock it): reading says so once; a new login goes to the file.
        cp = _ss_cli(s, tmp_path, "--json", "auth", "status", unlock=False)
        assert cp.returncode == 1 and cp.stderr.count("note: the CLI login is in the OS keyring") == 1
        assert "Traceback" not in cp.stderr
        cp = _ss_cli(s, tmp_path, *login, unlock=False, stdin=OWNER_PASSWORD + "\n")
        assert cp.returncode == 0 and cp.stderr.count("note: the OS keyring failed (") == 1, cp.stderr
        assert "Traceback" not in cp.stderr and json.loads(session.read_text())["token"].startswith("av_usr_")
        cp = _ss_cli(s, tmp_path, "auth", "logout", unlock=True)
        assert cp.returncode == 0 and not session.exists()


def test_init_warns_when_the_keyring_backend_keeps_secrets_in_plaintext(tmp_path: Path) -> None:
    """keyrings.alt's PlaintextKeyring stores the master password base64 in a file: `init --key-mode
    keyring` says so in one warning line (it used to store it silently, and doctor said `ok`)."""
    env = base_env(
        tmp_path, AGENT_VAULT_HOME=str(tmp_path / "home"), AGENT_VAULT_MASTER_PASSWORD=MASTER_PASSWORD
    ) | keyring_env(tmp_path)
    args = ["init", "--key-mode", "keyring", "--owner-email", OWNER_EMAIL, "--password-stdin"]
    cp = run_cli(args, env, input=OWNER_PASSWORD + "\n")
    assert cp.returncode == 0, cp.stderr
    assert f"the keyring backend {BACKEND} stores it UNENCRYPTED on disk" in cp.stderr
    assert MASTER_PASSWORD not in cp.stderr + cp.stdout and "Traceback" not in cp.stderr
