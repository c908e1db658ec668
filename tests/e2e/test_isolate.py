"""`vault run --isolate` (issue #17) end to end: the real server, the real CLI, bubblewrap, real clients.

Inside the sandbox the proxy works (curl, Python, git are injected); every way around it fails: a client
told to skip the proxy, a client without the proxy variables, raw connects to loopback services and
other addresses, DNS, reading the CLI login, seeing other processes. Exit codes and signals pass through;
where bubblewrap or user namespaces are missing, `--isolate` refuses with one line and runs nothing.
"""

from __future__ import annotations

import fcntl
import json
import os
import shutil
import signal
import struct
import subprocess
import sys
import tempfile
import termios
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import trustme
from helpers.cli_fixtures import SECRET, Call, assert_clean, mserver, mupstream, parallel, proxy_status
from helpers.server import ServerProc
from helpers.terminal import Term
from helpers.upstream import GitHttpUpstream, TLSUpstream, make_bare_repo
from helpers.wait import wait_until

__all__ = ["mserver", "mupstream"]
CURL = "/usr/bin/curl"
GIT_TOKEN = "ghp-isolate-git-token-8c41"
ISO = ("run", "--isolate", "--quiet", "--")


@pytest.fixture(scope="module")
def echo(mserver: ServerProc, mupstream: TLSUpstream) -> str:
    mserver.set_credential("API_TOKEN", SECRET)
    mserver.add_service(
        {
            "name": "echo-api",
            "host": "localhost",
            "port": mupstream.port,
            "auth": {"type": "bearer", "token": "API_TOKEN"},
        }
    )
    return f"https://localhost:{mupstream.port}/echo"


@pytest.fixture(scope="module")
def git_up(
    mserver: ServerProc, upstream_ca: trustme.CA, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[GitHttpUpstream]:
    repos = tmp_path_factory.mktemp("isolate-repos")
    make_bare_repo(repos / "small.git", commits=2)
    with GitHttpUpstream(repos, password=GIT_TOKEN, ca=upstream_ca) as git:
        mserver.set_credential("GIT_TOKEN", GIT_TOKEN)
        mserver.add_service(
            {
                "name": "git",
                "host": "localhost",
                "port": git.port,
                "auth": {"type": "basic", "username_literal": "x-access-token", "password": "GIT_TOKEN"},
            }
        )
        yield git


def authorization(body: str) -> str:
    return str(json.loads(body)["headers"]["authorization"])


def test_curl_python_and_git_through_the_proxy_are_injected(
    mserver: ServerProc, mupstream: TLSUpstream, echo: str, git_up: GitHttpUpstream, tmp_path: Path
) -> None:
    mupstream.requests_seen.clear()
    script = (
        "import json, urllib.request; "
        f"print(json.load(urllib.request.urlopen({echo + '/py'!r}))['headers']['authorization'])"
    )
    clone = tmp_path / "clone"
    curl, py, git = parallel(
        mserver,
        Call("vault", "run", "--isolate", "--", CURL, "-sS", echo + "/curl"),
        Call(*ISO, sys.executable, "-c", script),
        Call(*ISO, "git", "clone", "-q", f"https://localhost:{git_up.port}/small.git", str(clone)),
    )
    assert authorization(curl.stdout) == "Bearer [REDACTED:API_TOKEN]"
    assert "isolated: the proxy is the only way out" in curl.stderr
    assert py.stdout.strip() == "Bearer [REDACTED:API_TOKEN]"
    seen = {r["path"]: dict(r["headers"]) for r in mupstream.requests_seen.wait_for(2)}
    assert {k: {h.lower(): v for h, v in hs.items()}["authorization"] for k, hs in seen.items()} == {
        "/echo/curl": f"Bearer {SECRET}",
        "/echo/py": f"Bearer {SECRET}",
    }
    assert (clone / "file-1.txt").read_text() == "content 1\n"  # only injection makes the clone work
    assert git_up.auth_failures == 0
    for cp in (curl, py, git):
        assert_clean(cp, SECRET, GIT_TOKEN)


def test_every_way_around_the_proxy_fails(mserver: ServerProc, mupstream: TLSUpstream, echo: str) -> None:
    """One sandboxed child: its proxied request works while each bypass is refused."""
    login = mserver.home / "cli" / "session.json"
    assert login.is_file()  # the CLI login exists outside
    probe = f"""
import errno, json, os, socket, urllib.request
res = {{}}
def attempt(name, fn):
    try:
        fn()
        res[name] = "reached"
    except OSError as e:
        res[name] = errno.errorcode.get(e.errno, type(e).__name__) if e.errno else type(e).__name__
def dial(host, port):
    def go():
        socket.create_connection((host, port), timeout=5).close()
    return go
attempt("upstream-loopback", dial("127.0.0.1", {mupstream.port}))
attempt("public-address", dial("1.1.1.1", 443))
attempt("private-address", dial("10.0.0.1", 80))
attempt("ipv6-loopback", dial("::1", {mupstream.port}))
attempt("dns", lambda: socket.getaddrinfo("example.com", 443))
attempt("login", lambda: open({str(login)!r}).read())
res["home"] = sorted(os.listdir({str(mserver.home)!r}))
res["bundle"] = os.path.getsize(os.environ["SSL_CERT_FILE"]) > 0
res["pids"] = sorted(int(p) for p in os.listdir("/proc") if p.isdigit())
res["server_visible"] = os.path.exists("/proc/{mserver.proc.pid if mserver.proc else 0}/environ")
res["proxied"] = json.load(urllib.request.urlopen({echo + "/inside"!r}))["headers"]["authorization"]
print(json.dumps(res))
"""
    cp, noproxy, unset = parallel(
        mserver,
        Call(*ISO, sys.executable, "-c", probe),
        Call(*ISO, CURL, "-sS", "--noproxy", "*", echo + "/direct", check=False),
        Call(*ISO, "env", "-u", "HTTPS_PROXY", "-u", "https_proxy", CURL, "-sS", echo + "/u", check=False),
    )
    res = json.loads(cp.stdout)
    assert res.pop("proxied") == "Bearer [REDACTED:API_TOKEN]"
    assert res == {
        "upstream-loopback": "ECONNREFUSED",
        "public-address": "ENETUNREACH",
        "private-address": "ENETUNREACH",
        "ipv6-loopback": res["ipv6-loopback"],
        "dns": "gaierror",
        "login": "ENOENT",
        "home": ["sandbox-certs"],  # an empty tmpfs, plus the CA files read-only
        "bundle": True,
        "pids": res["pids"],
        "server_visible": False,
    }
    assert res["ipv6-loopback"] in {"ECONNREFUSED", "EADDRNOTAVAIL", "ENETUNREACH"}
    assert len(res["pids"]) <= 3  # bwrap's init, inner-turned-python; nothing of the host
    assert noproxy.returncode == 7 and unset.returncode == 7  # curl: failed to connect
    paths = [r["path"] for r in mupstream.requests_seen.snapshot()]
    assert "/echo/direct" not in paths and "/echo/u" not in paths
    for c in (cp, noproxy, unset):
        assert_clean(c, SECRET)


def test_the_api_is_reachable_for_discover(mserver: ServerProc) -> None:
    script = (
        "import json, os, urllib.request as u; "
        "r = u.Request(os.environ['AGENT_VAULT_ADDR'] + '/v1/discover', "
        "headers={'Authorization': 'Bearer ' + os.environ['AGENT_VAULT_TOKEN']}); "
        "print(os.environ['AGENT_VAULT_ADDR'], json.load(u.urlopen(r))['vault'])"
    )
    cp = mserver.cli(*ISO, sys.executable, "-c", script)
    addr, vault = cp.stdout.split()
    assert addr == f"http://127.0.0.1:{mserver.api.rsplit(':', 1)[1]}" and vault == "default"


def test_nested_run_inside_the_sandbox_reuses_the_session(mserver: ServerProc, echo: str) -> None:
    nested = f"{sys.executable} -m agent_vault run --quiet -- {CURL} -sS {echo}/nested"
    cp = mserver.cli(*ISO, "sh", "-c", nested)
    assert authorization(cp.stdout) == "Bearer [REDACTED:API_TOKEN]"
    assert_clean(cp, SECRET)


def test_exit_codes_and_the_session_is_revoked(mserver: ServerProc, echo: str, tmp_path: Path) -> None:
    token_file = tmp_path / "token"
    seven, killed, missing = parallel(
        mserver,
        Call(*ISO, "sh", "-c", f'printf %s "$AGENT_VAULT_TOKEN" > {token_file}; exit 7', check=False),
        Call(*ISO, "sh", "-c", "kill -TERM $$", check=False),
        Call(*ISO, "no-such-command-xyz", check=False),
    )
    assert seven.returncode == 7
    assert killed.returncode == 128 + 15
    assert missing.returncode == 127 and "command not found" in missing.stderr
    session = token_file.read_text()
    assert session.startswith("av_sess_")
    assert proxy_status(mserver, session, echo) == 407  # revoked when the child exited
    for cp in (seven, killed, missing):
        assert_clean(cp, SECRET)


def test_sigterm_to_the_wrapper_reaches_the_child(mserver: ServerProc, tmp_path: Path) -> None:
    ready = tmp_path / "ready"
    script = (
        "import signal, sys, time, pathlib\n"
        "signal.signal(signal.SIGTERM, lambda *a: sys.exit(42))\n"
        f"pathlib.Path({str(ready)!r}).write_text('x')\n"
        "time.sleep(60)\n"
    )
    env = {**mserver.env, "AGENT_VAULT_ADDR": mserver.api}
    proc = subprocess.Popen(
        [sys.executable, "-m", "agent_vault", *ISO, sys.executable, "-c", script],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        wait_until(ready.exists, "the sandboxed child to start", timeout=30)
        proc.send_signal(signal.SIGTERM)
        _out, err = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 42, err


def test_terminal_ctrl_c_and_tty_pass_through(mserver: ServerProc, tmp_path: Path) -> None:
    """The child has the terminal on its standard streams; a window resize, Ctrl-Z/fg and Ctrl-C reach it."""
    beats = tmp_path / "beats"
    script = (
        "import os, signal, sys, threading, time\n"
        "def beat():\n"
        "    n = 0\n"
        "    while True:\n"
        f"        open({str(beats)!r}, 'w').write(str(n)); n += 1; time.sleep(0.05)\n"
        "threading.Thread(target=beat, daemon=True).start()\n"
        "def winch(*_):\n"
        "    os.write(1, ('size %d %d\\n' % tuple(os.get_terminal_size(0))).encode())\n"
        "signal.signal(signal.SIGWINCH, winch)\n"
        "print('tty', os.isatty(0), os.isatty(1), flush=True)\n"
        "try:\n"
        "    time.sleep(60)\n"
        "except KeyboardInterrupt:\n"
        "    print('interrupted', flush=True)\n"
        "    sys.exit(3)\n"
    )
    term = Term([*ISO, sys.executable, "-c", script], {**mserver.env, "AGENT_VAULT_ADDR": mserver.api}, 60)
    term.expect("tty True True")
    fcntl.ioctl(term.fd, termios.TIOCSWINSZ, struct.pack("HHHH", 33, 111, 0, 0))
    term.expect("size 111 33")
    for _ in range(15):  # a lost SIGCONT left the command stopped after `fg` once in ~40 rounds under load
        os.write(term.fd, b"\x1a")  # Ctrl-Z: the wrapper (the shell's job) and the command stop
        _pid, status = os.waitpid(term.proc.pid, os.WUNTRACED)
        assert os.WIFSTOPPED(status)
        before = beats.read_text()
        time.sleep(0.2)
        assert beats.read_text() == before  # the command is stopped too
        os.kill(term.proc.pid, signal.SIGCONT)  # `fg`
        wait_until(lambda: beats.read_text() != before, "the command to run again")
    os.write(term.fd, b"\x03")  # Ctrl-C on the terminal
    term.expect("interrupted")
    rc, _rest = term.finish()
    assert rc == 3


def test_refused_without_bubblewrap(mserver: ServerProc, tmp_path: Path) -> None:
    bare = tmp_path / "bin"  # a PATH with the usual tools but no bwrap
    bare.mkdir()
    for tool in ("sh", "true"):
        (bare / tool).symlink_to(f"/bin/{tool}")
    env = {**mserver.env, "PATH": str(bare), "AGENT_VAULT_ADDR": mserver.api}
    with mserver.http() as c:
        before = len(c.get("/v1/sessions").json()["sessions"])
    cp = mserver.cli("run", "--isolate", "--", "true", env=env, check=False)
    assert cp.returncode == 125
    assert cp.stderr.count("\n") == 1 and cp.stderr.startswith("error: --isolate needs bubblewrap (bwrap)")
    assert "apt-get install bubblewrap" in cp.stderr and "without --isolate" in cp.stderr
    assert cp.stdout == ""
    with mserver.http() as c:
        assert len(c.get("/v1/sessions").json()["sessions"]) == before  # nothing minted
    check = isolate_check(mserver.cli("--json", "doctor", env=env, check=False).stdout)
    assert check["status"] == "warn" and "needs bubblewrap" in check["detail"]


def test_refused_where_user_namespaces_are_disabled(mserver: ServerProc, tmp_path: Path) -> None:
    """As on a kernel with user.max_user_namespaces=0: here set inside a user namespace of our own, so the
    limit applies to the CLI and everything under it, not to the machine."""
    marker = tmp_path / "ran"
    cli = f"{sys.executable} -m agent_vault run --isolate -- touch {marker}"
    doctor = f"{sys.executable} -m agent_vault --json doctor"
    shell = f"echo 0 > /proc/sys/user/max_user_namespaces && {cli}; echo rc=$?; {doctor}"
    cp = subprocess.run(
        ["unshare", "--user", "--map-root-user", "sh", "-c", shell],
        env={**mserver.env, "AGENT_VAULT_ADDR": mserver.api},
        capture_output=True,
        text=True,
        timeout=60,
    )
    ran, _, doctor_out = cp.stdout.partition("\n")
    assert ran == "rc=125", cp.stdout + cp.stderr
    assert cp.stderr.count("\n") == 1
    assert cp.stderr.startswith("error: --isolate cannot create namespaces here")
    assert "max_user_namespaces" in cp.stderr and "without --isolate" in cp.stderr
    assert not marker.exists()
    assert "Traceback" not in cp.stdout + cp.stderr
    check = isolate_check(doctor_out)  # doctor names the reason too
    assert check["status"] == "warn" and "cannot create namespaces" in check["detail"]


def isolate_check(doctor_json: str) -> dict[str, str]:
    return next(c for c in json.loads(doctor_json)["checks"] if c["check"] == "isolate")


def test_doctor_says_isolate_works(mserver: ServerProc) -> None:
    check = isolate_check(mserver.cli("--json", "doctor", check=False).stdout)
    assert check["status"] == "ok" and check["detail"].startswith("bubblewrap 0.")


UNPRIVILEGED = """
import os, socket, sys, threading
from pathlib import Path
from agent_vault.isolate.launch import Route, run_sandboxed
from agent_vault.isolate.sandbox import bwrap_args, hidden_paths, probe
srv = socket.create_server(("127.0.0.1", 0))
def serve():
    c, _ = srv.accept()
    c.sendall(b"relayed\\n")
    c.close()
threading.Thread(target=serve, daemon=True).start()
home = Path(os.environ["AGENT_VAULT_HOME"])
prefix = bwrap_args(probe(os.environ["PATH"]), hidden_paths(home, home / "certs", os.environ))
child = (
    "import os, socket; print('uid', os.getuid());"
    "print(socket.create_connection(('127.0.0.1', 15555)).recv(100).decode().strip());"
    "print('home', os.listdir(os.environ['AGENT_VAULT_HOME'])); raise SystemExit(9)"
)
route = Route(15555, ("127.0.0.1", srv.getsockname()[1]))
print("rc", run_sandboxed(prefix, [sys.executable, "-c", child], dict(os.environ), [route]))
"""


def test_an_unprivileged_user_gets_the_sandbox_through_a_user_namespace() -> None:
    """The same sandbox for a user without privileges (here `nobody`, with the system's Python: the
    test venv's interpreter lives under /root): its uid is kept, the relay works, the home is hidden."""
    import agent_vault

    repo = Path(agent_vault.__file__).resolve().parents[1]
    base = Path(tempfile.mkdtemp(prefix="av-isolate-nobody-", dir="/tmp"))
    try:
        (base / "av" / "cli").mkdir(parents=True)
        (base / "av" / "cli" / "session.json").write_text("{}")
        as_user: list[str] = []
        if os.geteuid() == 0:
            for p in (base, *base.rglob("*")):
                os.chown(p, 65534, 65534)
            as_user = ["setpriv", "--reuid", "65534", "--regid", "65534", "--clear-groups"]
        env = {"PATH": "/usr/bin:/bin", "HOME": str(base), "AGENT_VAULT_HOME": str(base / "av"),
               "PYTHONPATH": str(repo), "LANG": "C.UTF-8"}  # fmt: skip
        cp = subprocess.run(
            [*as_user, "/usr/bin/python3", "-c", UNPRIVILEGED],
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
        )
    finally:
        shutil.rmtree(base, ignore_errors=True)
    uid = 65534 if as_user else os.geteuid()
    assert cp.stdout.split("\n") == [f"uid {uid}", "relayed", "home []", "rc 9", ""], cp.stderr
