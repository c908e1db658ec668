"""Wheel smoke test (issue 14): install agent-vault as a user does and use it once, end to end.

Run by `.ci/run` with the dev virtualenv's Python (for trustme), given the clean virtualenv that
holds only the built wheel and its locked runtime dependencies:

    python scripts/smoke_wheel.py /path/to/clean-venv

It runs that venv's `agent-vault --version`, `init`, `server`, `auth login`, `vault credential set`,
`vault service add`, and `vault run -- curl` through the proxy to a local HTTPS upstream (trustme
CA), then checks that the upstream received the injected credential and curl's output did not.
Exit 0 on success; one `smoke-wheel: FAILED ...` line (plus the server log tail) otherwise.
"""

from __future__ import annotations

import http.server
import json
import os
import shutil
import ssl
import subprocess
import sys
import tempfile
import threading
import urllib.request
from pathlib import Path

import trustme

SECRET = "sk-smoke-wheel-0123456789abcdef"
LOGIN_PASSWORD = "smoke-login-password-123"
MASTER_PASSWORD = "smoke-master-password-123"


class _Echo(http.server.BaseHTTPRequestHandler):
    seen: list[str] = []

    def do_GET(self) -> None:
        auth = self.headers.get("Authorization", "")
        _Echo.seen.append(auth)
        body = json.dumps({"path": self.path, "authorization": auth}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: object) -> None:
        pass


def _fail(msg: str, log: Path | None = None) -> None:
    print(f"smoke-wheel: FAILED {msg}", file=sys.stderr)
    if log is not None and log.is_file():
        print("".join(log.read_text(errors="replace").splitlines(True)[-20:]), file=sys.stderr)
    sys.exit(1)


def main() -> None:
    venv = Path(sys.argv[1]).resolve()
    av = str(venv / "bin" / "agent-vault")
    curl = shutil.which("curl")
    if curl is None:
        _fail("curl is not installed")
    work = Path(tempfile.mkdtemp(prefix="av-smoke-"))
    ca = trustme.CA()
    ca_file = work / "upstream-ca.pem"
    ca.cert_pem.write_to_path(str(ca_file))
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ca.issue_cert("localhost").configure_cert(ctx)
    upstream = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Echo)
    upstream.socket = ctx.wrap_socket(upstream.socket, server_side=True)
    threading.Thread(target=upstream.serve_forever, daemon=True).start()
    port = upstream.server_address[1]

    env = {
        "PATH": f"{venv / 'bin'}:{os.environ.get('PATH', '/usr/bin:/bin')}",
        "HOME": str(work),
        "AGENT_VAULT_HOME": str(work / "home"),
        "LANG": "C.UTF-8",
    }

    def run(*args: str, stdin: str | None = None, extra: dict[str, str] | None = None) -> str:
        cp = subprocess.run(
            [av, *args],
            input=stdin,
            capture_output=True,
            text=True,
            env={**env, **(extra or {})},
            timeout=120,
        )
        if cp.returncode != 0:
            _fail(f"agent-vault {' '.join(args)} exited {cp.returncode}: {cp.stderr.strip()}", server_log)
        return cp.stdout

    server_log = work / "server.log"
    print("smoke-wheel:", run("--version").strip())
    run(
        "init",
        "--owner-email",
        "owner@example.com",
        "--password-stdin",
        stdin=LOGIN_PASSWORD + "\n",
        extra={"AGENT_VAULT_MASTER_PASSWORD": MASTER_PASSWORD},
    )
    with open(server_log, "w") as log:
        server = subprocess.Popen(
            [av, "server", "--port", "0", "--proxy-port", "0", "--allow-net", "127.0.0.0/8"]
            + ["--upstream-ca", str(ca_file)],
            stdout=subprocess.PIPE,
            stderr=log,
            stdin=subprocess.DEVNULL,
            text=True,
            env={**env, "AGENT_VAULT_MASTER_PASSWORD": MASTER_PASSWORD},
        )
    try:
        assert server.stdout is not None
        ready = server.stdout.readline()
        if not ready.startswith("agent-vault ready"):
            _fail(f"server did not start: {ready!r}", server_log)
        fields = dict(part.split("=", 1) for part in ready.split()[2:])
        env["AGENT_VAULT_ADDR"] = fields["api"]
        run("auth", "login", "--email", "owner@example.com", "--password-stdin", stdin=LOGIN_PASSWORD + "\n")
        run("vault", "credential", "set", "SMOKE_TOKEN", "--stdin", stdin=SECRET)
        run(
            "vault",
            "service",
            "add",
            "smoke",
            "--host",
            "localhost",
            "--port",
            str(port),
            "--auth-type",
            "bearer",
            "--token-key",
            "SMOKE_TOKEN",
            "--password-stdin",
            stdin=LOGIN_PASSWORD + "\n",
        )
        # curl must trust the upstream CA too: vault run's bundle holds system roots + the instance CA.
        out = run("vault", "run", "--", curl, "-sS", "--fail", f"https://localhost:{port}/smoke")
        if _Echo.seen != [f"Bearer {SECRET}"]:
            _fail(f"the upstream did not receive the injected credential (saw {len(_Echo.seen)} requests)")
        if SECRET in out or "[REDACTED:SMOKE_TOKEN]" not in out:
            _fail("curl's output was not redacted")
        # the web console's assets are package data: the wheel must carry them
        direct = urllib.request.build_opener(urllib.request.ProxyHandler({}))
        for path, marker in (
            ("/ui/", "agent-vault"),
            ("/ui/assets/lib.js", "AV"),
            ("/ui/assets/login.js", "login"),
        ):
            with direct.open(fields["api"] + path, timeout=20) as resp:
                if marker not in resp.read().decode():
                    _fail(f"the console is missing from the wheel: GET {path}")
        print(
            f"smoke-wheel: ok (vault run -- curl injected the credential; console served; {fields['proxy']})"
        )
    finally:
        server.terminate()
        try:
            server.wait(timeout=20)
        except subprocess.TimeoutExpired:
            server.kill()
        upstream.shutdown()
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
