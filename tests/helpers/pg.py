"""A real, throw-away PostgreSQL server for the test session (Debian's `postgresql` package).

`PgServer.create()` finds the binaries (`pg_config --bindir`, else /usr/lib/postgresql/*/bin), runs
`initdb` + `pg_ctl start` as the `postgres` user (we are often root, and PostgreSQL refuses root) in a
private temp dir: unix socket in that dir, TCP on a free loopback port, trust auth (loopback only).
Every wait is bounded (pg_ctl -t). `new_database()` hands each test a fresh empty database.

When the binaries are missing: `missing_reason()` says why; the conftest fixture fails under CI
and skips locally.
"""

from __future__ import annotations

import glob
import itertools
import os
import shutil
import socket
import subprocess
import tempfile
from pathlib import Path

import psycopg

_WAIT = 30  # seconds pg_ctl waits for start/stop


def bindir() -> Path | None:
    """The directory holding initdb/pg_ctl/postgres, or None."""
    candidates: list[str] = []
    pg_config = shutil.which("pg_config")
    if pg_config:
        try:
            out = subprocess.run([pg_config, "--bindir"], capture_output=True, text=True, timeout=10)
            candidates.append(out.stdout.strip())
        except (OSError, subprocess.SubprocessError):
            pass
    candidates += sorted(glob.glob("/usr/lib/postgresql/*/bin"), reverse=True)
    for c in candidates:
        if c and all((Path(c) / tool).is_file() for tool in ("initdb", "pg_ctl", "postgres")):
            return Path(c)
    return None


def _runuser() -> str | None:
    return shutil.which("runuser", path=f"{os.environ.get('PATH', '')}:/usr/sbin:/sbin:/usr/bin:/bin")


def missing_reason() -> str | None:
    if bindir() is None:
        return "PostgreSQL server binaries not found (apt-get install postgresql)"
    if os.geteuid() == 0 and _runuser() is None:
        return "running as root without runuser: cannot start PostgreSQL as the postgres user"
    return None


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class PgServer:
    """One PostgreSQL cluster in a temp dir; `url_for(db)` gives a postgresql:// URL (user postgres)."""

    def __init__(self, bin_dir: Path, root: Path, port: int) -> None:
        self.bin_dir, self.root, self.port = bin_dir, root, port
        self.data, self.sockets, self.log = root / "data", root / "sock", root / "server.log"
        self.user = "postgres"
        self._counter = itertools.count(1)
        self.running = False

    @classmethod
    def create(cls) -> PgServer:
        bin_dir = bindir()
        if bin_dir is None:
            raise RuntimeError("PostgreSQL binaries not found")
        root = Path(tempfile.mkdtemp(prefix="agent-vault-pg-"))
        (root / "sock").mkdir()
        server = cls(bin_dir, root, _free_port())
        if os.geteuid() == 0:
            shutil.chown(root, "postgres", "postgres")
            shutil.chown(root / "sock", "postgres", "postgres")
        server._run(
            "initdb", "-D", str(server.data), "-U", "postgres", "--auth=trust", "-E", "UTF8",
            "--locale=C", "--no-sync",
        )  # fmt: skip
        server.start()
        return server

    def _run(self, tool: str, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        cmd = [str(self.bin_dir / tool), *args]
        if os.geteuid() == 0:
            cmd = [_runuser() or "runuser", "-u", "postgres", "--", *cmd]
        env = {"PATH": "/usr/bin:/bin", "LANG": "C", "LC_ALL": "C"}
        proc = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=self.root, timeout=_WAIT + 30)
        if check and proc.returncode != 0:
            raise RuntimeError(f"{tool} failed ({proc.returncode}): {proc.stderr.strip()[-2000:]}")
        return proc

    def _ctl(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        return self._run("pg_ctl", "-D", str(self.data), *args, check=check)

    def start(self) -> None:
        opts = (
            f"-c listen_addresses=127.0.0.1 -p {self.port} -c unix_socket_directories={self.sockets} "
            "-c fsync=off -c synchronous_commit=off -c full_page_writes=off -c max_connections=300"
        )
        self._ctl("-l", str(self.log), "-w", "-t", str(_WAIT), "-o", opts, "start")
        self.running = True

    def stop(self, mode: str = "fast") -> None:
        self._ctl("-m", mode, "-w", "-t", str(_WAIT), "stop")
        self.running = False

    def restart(self) -> None:
        """Stop and start again on the same port, data kept."""
        self.stop()
        self.start()

    def url_for(self, database: str) -> str:
        return f"postgresql://{self.user}@127.0.0.1:{self.port}/{database}"

    def new_database(self) -> str:
        """A fresh empty database; returns its postgresql:// URL."""
        name = f"t{os.getpid()}_{next(self._counter)}"
        with psycopg.connect(self.url_for("postgres"), autocommit=True, connect_timeout=10) as conn:
            conn.execute(f'CREATE DATABASE "{name}"')
        return self.url_for(name)

    def close(self) -> None:
        """Stop (fast, then immediate) and remove the cluster's directory."""
        if self.running:
            try:
                self.stop()
            except (RuntimeError, subprocess.SubprocessError):
                self._ctl("-m", "immediate", "-w", "-t", "10", "stop", check=False)
        shutil.rmtree(self.root, ignore_errors=True)
