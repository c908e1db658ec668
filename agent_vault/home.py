"""The home directory (SPEC §2.2): 0700 folders, secret files created 0600 atomically."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any

from agent_vault.errors import AgentVaultError, NotInitialised


class HomeError(AgentVaultError):
    code = "home_unusable"
    status = 500
    hint = "Check the path and its permissions, or set AGENT_VAULT_HOME."


def ensure_dir(path: Path, mode: int = 0o700) -> Path:
    """Create `path` (and parents) with `mode`; tighten an existing folder that is looser."""
    try:
        path.mkdir(mode=mode, parents=True, exist_ok=True)
        if path.stat().st_mode & 0o777 != mode:
            path.chmod(mode)
        if not os.access(path, os.R_OK | os.W_OK | os.X_OK):
            raise PermissionError
    except OSError:
        raise HomeError(f"cannot use directory {path}: not readable/writable") from None
    return path


def write_private(path: Path, data: bytes | str, mode: int = 0o600) -> None:
    """Atomically replace `path` with `data`; the temp file is opened with `mode` (never chmod-ed later)."""
    raw = data.encode() if isinstance(data, str) else data
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(raw)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


class Home:
    """Paths under one agent-vault home."""

    def __init__(self, root: Path) -> None:
        self.root = root.expanduser()

    @property
    def instance_file(self) -> Path:
        return self.root / "instance.json"

    @property
    def db_path(self) -> Path:
        return self.root / "agent-vault.db"

    @property
    def dek_file(self) -> Path:
        return self.root / "dek.key"

    @property
    def ca_dir(self) -> Path:
        return self.root / "ca"

    @property
    def run_dir(self) -> Path:
        return self.root / "run"

    @property
    def server_lock(self) -> Path:
        """flock-ed by the running server for its lifetime; holds its pid. Outside run/ (wiped per start)."""
        return self.root / "server.lock"

    @property
    def server_state(self) -> Path:
        """JSON {pid, api, proxy, key_mode}: written once the server is ready, removed when it stops."""
        return self.root / "server.json"

    @property
    def server_log(self) -> Path:
        """stdout + stderr of a server started with `--detach` (appended, 0600)."""
        return self.root / "server.log"

    @property
    def audit_head(self) -> Path:
        return self.root / "audit.head"

    @property
    def cli_dir(self) -> Path:
        return self.root / "cli"

    @property
    def certs_dir(self) -> Path:
        return self.root / "certs"

    def initialised(self) -> bool:
        return self.instance_file.is_file()

    def instance(self) -> dict[str, Any]:
        """instance.json, or NotInitialised."""
        try:
            data: dict[str, Any] = json.loads(self.instance_file.read_text())
        except FileNotFoundError:
            raise NotInitialised(f"{self.root} is not initialised: run 'agent-vault init'") from None
        except (OSError, ValueError):
            raise HomeError(f"cannot read {self.instance_file}") from None
        return data

    def reset_run_dir(self) -> Path:
        """Empty and recreate run/ (0700); holds the engine's transient CA file."""
        if self.run_dir.exists():
            shutil.rmtree(self.run_dir, ignore_errors=True)
        return ensure_dir(self.run_dir)

    def wipe_run_dir(self) -> None:
        shutil.rmtree(self.run_dir, ignore_errors=True)
