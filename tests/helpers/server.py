"""Drive the real server: `agent-vault init` + `agent-vault server` as subprocesses on free ports.

`ServerProc(tmp_path, upstream_ca, key_mode="passwordless", extra_args=(), allow_net=True)` is a context
manager; `allow_net=False` omits `--allow-net 127.0.0.0/8`, so loopback upstreams are SSRF-blocked.
`master_env = False` makes `start` pass no master password (the keyring tests).
After start: `api` (base URL), `proxy` (http://127.0.0.1:PORT), `proxy_port`, `owner_token`,
`ca_bundle` (agent-vault CA + the upstream test CA, for clients), `env` (the CLI env), `home`.
With `FASTPATH_SUITE=on|off` set, `start` passes `--fast-path on|off` (helpers.env.fast_path_args).
`env` is `helpers.env.base_env(tmp_path, AGENT_VAULT_HOME=home, **env)`: built from scratch, nothing of the
developer's environment; the server and every CLI run get it (plus what a caller passes explicitly).
`cli(*args, input=None, check=True)` runs the real CLI; `http()` is an httpx client with the owner token;
`make_agent(name, vaults=("default",))` returns a token; `add_service(def)`, `set_credential(key, value)`.
`stop()` sends SIGTERM and returns the exit code; `stderr_text()` is everything the server logged;
`stdout_text()` everything it printed to stdout (the ready line of each start, and anything after it: SPEC
§2.1 says nothing, so the adversarial sweep greps it for values). stdout goes to `server.stdout` next to
`server.stderr` (a file, not a pipe: nothing the server prints later can block it or go unseen).
To wait for something the server does asynchronously, poll with `helpers.wait.wait_until`.
"""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx
import trustme

from helpers.env import base_env, fast_path_args

OWNER_EMAIL = "owner@example.com"
OWNER_PASSWORD = "owner-password-123"
MASTER_PASSWORD = "master-password-123456"


class ServerProc:
    def __init__(
        self,
        tmp_path: Path,
        upstream_ca: trustme.CA,
        *,
        key_mode: str = "passwordless",
        extra_args: tuple[str, ...] = (),
        env: dict[str, str] | None = None,
        allow_net: bool = True,
    ) -> None:
        self.tmp = tmp_path
        self.home = tmp_path / "server-home"
        self.key_mode = key_mode
        self.extra_args = extra_args
        self.allow_net = allow_net  # False: no --allow-net, so loopback upstreams are SSRF-blocked
        self.master_env = True  # False: `start` passes no AGENT_VAULT_MASTER_PASSWORD (key mode keyring)
        self.upstream_ca_file = tmp_path / "upstream-ca.pem"
        upstream_ca.cert_pem.write_to_path(str(self.upstream_ca_file))
        self.env = base_env(tmp_path, AGENT_VAULT_HOME=str(self.home), **(env or {}))
        self.proc: subprocess.Popen[str] | None = None
        self._stderr_path = tmp_path / "server.stderr"
        self._stdout_path = tmp_path / "server.stdout"
        self.api = self.proxy = ""
        self.proxy_port = 0
        self.owner_token = ""
        self.ca_bundle = tmp_path / "ca-bundle.pem"

    def __enter__(self) -> ServerProc:
        self.init()
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def init(self) -> None:
        env = dict(self.env)
        if self.key_mode != "passwordless":
            env["AGENT_VAULT_MASTER_PASSWORD"] = MASTER_PASSWORD
        self.cli(
            "init",
            "--key-mode",
            self.key_mode,
            "--owner-email",
            OWNER_EMAIL,
            "--password-stdin",
            "--yes",
            input=OWNER_PASSWORD + "\n",
            env=env,
        )

    def start(self, *args: str) -> None:
        env = dict(self.env)
        if self.key_mode != "passwordless" and self.master_env:
            env["AGENT_VAULT_MASTER_PASSWORD"] = MASTER_PASSWORD
        cmd = [
            sys.executable,
            "-m",
            "agent_vault",
            "server",
            "--port",
            "0",
            "--proxy-port",
            "0",
            *(("--allow-net", "127.0.0.0/8", "--allow-net", "::1/128") if self.allow_net else ()),
            "--upstream-ca",
            str(self.upstream_ca_file),
            *fast_path_args(),  # FASTPATH_SUITE (scripts/fastpath-diff); unknown flag: start fails
            *self.extra_args,
            *args,
        ]
        self._stderr = open(self._stderr_path, "a")  # noqa: SIM115
        offset = self._stdout_path.stat().st_size if self._stdout_path.exists() else 0
        with open(self._stdout_path, "ab") as stdout:  # the child keeps its own descriptor
            self.proc = subprocess.Popen(
                cmd, stdout=stdout, stderr=self._stderr, stdin=subprocess.DEVNULL, text=True, env=env
            )
        line = self._ready_line(offset)
        if not line.startswith("agent-vault ready"):
            if self.proc.poll() is None:  # no ready line in time: do not leave it running
                self.proc.kill()
            self.proc.wait(timeout=10)
            raise RuntimeError(f"server did not start: {line!r} {self.stderr_text()}")
        fields = dict(part.split("=", 1) for part in line.split()[2:])
        self.api, self.proxy = fields["api"], fields["proxy"]
        self.proxy_port = int(self.proxy.rsplit(":", 1)[1])
        self.owner_token = self.login()
        ca = httpx.get(self.api + "/v1/mitm/ca.pem", trust_env=False).content
        self.ca_bundle.write_bytes(ca + self.upstream_ca_file.read_bytes())

    def _ready_line(self, offset: int, timeout: float = 300) -> str:
        """The first line this start printed to stdout (from `offset` of the file), once complete; or
        whatever it printed when it exited without one."""
        assert self.proc is not None
        deadline = time.monotonic() + timeout
        while True:
            exited = self.proc.poll() is not None  # read after the check: an exit flushes first
            with open(self._stdout_path, "rb") as f:
                f.seek(offset)
                data = f.read()
            if b"\n" in data or exited or time.monotonic() > deadline:
                return data.split(b"\n", 1)[0].decode("utf-8", "replace")
            time.sleep(0.01)

    def login(self, email: str = OWNER_EMAIL, password: str = OWNER_PASSWORD) -> str:
        r = httpx.post(
            self.api + "/v1/auth/login", json={"email": email, "password": password}, trust_env=False
        )
        r.raise_for_status()
        return str(r.json()["token"])

    def stop(self) -> int | None:
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        code = self.proc.returncode
        self._stderr.close()
        self.proc = None
        return code

    def kill9(self) -> None:
        assert self.proc is not None
        self.proc.kill()
        self.proc.wait()
        self._stderr.close()
        self.proc = None

    def stderr_text(self) -> str:
        return self._stderr_path.read_text() if self._stderr_path.exists() else ""

    def stdout_text(self) -> str:
        return self._stdout_path.read_text() if self._stdout_path.exists() else ""

    def cli(
        self,
        *args: str,
        input: str | None = None,
        check: bool = True,
        env: dict[str, str] | None = None,
        timeout: float = 60,
    ) -> subprocess.CompletedProcess[str]:
        """Run the real CLI against this server (logged in as the owner once `start` ran)."""
        e = dict(env or self.env)
        if self.api:
            e.setdefault("AGENT_VAULT_ADDR", self.api)
        cp = subprocess.run(
            [sys.executable, "-m", "agent_vault", *args],
            input=input,
            capture_output=True,
            text=True,
            env=e,
            timeout=timeout,
        )
        if check and cp.returncode != 0:
            raise AssertionError(f"agent-vault {' '.join(args)} exited {cp.returncode}: {cp.stderr}")
        return cp

    def http(self, token: str | None = None) -> httpx.Client:
        return httpx.Client(
            base_url=self.api,
            headers={"Authorization": f"Bearer {token or self.owner_token}"},
            trust_env=False,
            timeout=30,
        )

    def set_credential(self, key: str, value: str, vault: str = "default") -> None:
        with self.http() as c:
            c.put(f"/v1/vaults/{vault}/credentials/{key}", json={"value": value}).raise_for_status()

    def add_service(self, service: dict[str, Any], vault: str = "default") -> dict[str, Any]:
        with self.http() as c:
            r = c.post(f"/v1/vaults/{vault}/services", json={"password": OWNER_PASSWORD, "service": service})
            r.raise_for_status()
            return dict(r.json())

    def make_agent(self, name: str, vaults: tuple[str, ...] = ("default",), role: str = "proxy") -> str:
        with self.http() as c:
            r = c.post(
                "/v1/agents",
                json={
                    "password": OWNER_PASSWORD,
                    "name": name,
                    "vaults": [{"vault": v, "role": role} for v in vaults],
                },
            )
            r.raise_for_status()
            return str(r.json()["token"])

    def proxy_url(self, token: str, vault: str | None = "default") -> str:
        host = self.proxy.removeprefix("http://")
        return f"http://{token}:{vault}@{host}" if vault else f"http://{token}@{host}"
