"""One server per home: the lock, the state file, and finding the running server.

`<home>/server.lock` is `flock`-ed (exclusive) by the server for its whole life, before any prompt or
unlock, and holds its pid. `<home>/server.json` ({pid, api, proxy, key_mode}) is written once both
listeners are bound and removed when the server stops. The kernel releases a flock when its holder dies,
so a crashed (SIGKILLed) server never blocks the next start: a state file left behind is stale exactly
when the lock is free, and is ignored (and replaced). Both live in the home root, not in run/ (which the
server empties at start and removes at exit). Nothing here imports the server's heavy dependencies:
`status` and `server stop` use it too.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import time
from dataclasses import dataclass
from types import TracebackType
from typing import Any

from agent_vault.errors import ServerStartError
from agent_vault.home import Home, ensure_dir, write_private

# A probe (`status`, `server stop`) holds a shared lock for microseconds; a starting server retries this
# long before it concludes that another server holds the lock.
_ACQUIRE_RETRY_S = 0.5


@dataclass(frozen=True)
class Running:
    """The server holding a home's lock. `api`/`proxy` are None while it is still starting."""

    pid: int | None
    api: str | None = None
    proxy: str | None = None
    key_mode: str | None = None

    @property
    def ready(self) -> bool:
        return self.api is not None

    def describe(self) -> str:
        pid = f"pid {self.pid}" if self.pid else "pid unknown"
        if not self.ready:
            return f"{pid}, still starting"
        return f"{pid}, api {self.api}, proxy {self.proxy}"

    def as_dict(self) -> dict[str, Any]:
        return {"pid": self.pid, "api": self.api, "proxy": self.proxy, "key_mode": self.key_mode}


def _read_pid(path: os.PathLike[str] | str) -> int | None:
    try:
        with open(path) as f:
            text = f.read().strip()
        return int(text) if text.isdigit() else None
    except OSError:
        return None


def _read_state(home: Home) -> dict[str, Any] | None:
    try:
        data = json.loads(home.server_state.read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def _running(home: Home) -> Running:
    """What the lock file and the state file say about the lock's holder (the lock is held)."""
    pid = _read_pid(home.server_lock)
    state = _read_state(home)
    if state is None or (pid is not None and state.get("pid") != pid):
        return Running(pid=pid)  # starting (or a stale state file from an earlier, crashed server)
    return Running(
        pid=pid if pid is not None else state.get("pid"),
        api=state.get("api"),
        proxy=state.get("proxy"),
        key_mode=state.get("key_mode"),
    )


def probe(home: Home) -> Running | None:
    """The server running for `home`, or None (no lock file, or its lock is free: nothing runs)."""
    try:
        fd = os.open(home.server_lock, os.O_RDONLY)
    except FileNotFoundError:
        return None
    except OSError:
        raise ServerStartError(f"cannot read {home.server_lock}") from None
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            return _running(home)
        fcntl.flock(fd, fcntl.LOCK_UN)
        return None
    finally:
        os.close(fd)


def already_running(home: Home, running: Running) -> ServerStartError:
    """The one line a second server (or `--detach`) prints: which server runs for this home."""
    return ServerStartError(
        f"agent-vault server already running for {home.root}: {running.describe()}",
        hint="Stop it with 'agent-vault server stop', or use another --home.",
    )


class ServerLock:
    """The exclusive, lifetime lock of the one server of a home. Acquire before any prompt or unlock."""

    def __init__(self, home: Home) -> None:
        self.home = home
        self._fd: int | None = None

    def acquire(self) -> None:
        """Take the lock and write our pid into it; ServerStartError (one line) if a server holds it."""
        ensure_dir(self.home.root)
        try:
            fd = os.open(self.home.server_lock, os.O_RDWR | os.O_CREAT, 0o600)
        except OSError:
            raise ServerStartError(f"cannot open {self.home.server_lock}") from None
        deadline = time.monotonic() + _ACQUIRE_RETRY_S
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() >= deadline:
                    os.close(fd)
                    raise already_running(self.home, _running(self.home)) from None
                time.sleep(0.02)
        self._fd = fd
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        self.home.server_state.unlink(missing_ok=True)  # stale: its server died without removing it

    def write_state(self, api: str, proxy: str, key_mode: str) -> None:
        """Publish the ready server's addresses (for `status`, `server stop`, a second `server`)."""
        state = {"pid": os.getpid(), "api": api, "proxy": proxy, "key_mode": key_mode}
        write_private(self.home.server_state, json.dumps(state))

    def release(self) -> None:
        """Remove the state file, then drop the lock. The lock file stays: unlinking it would race with
        a server that has just opened it."""
        if self._fd is None:
            return
        self.home.server_state.unlink(missing_ok=True)
        with contextlib.suppress(OSError):
            os.ftruncate(self._fd, 0)
        os.close(self._fd)  # releases the flock
        self._fd = None

    def __enter__(self) -> ServerLock:
        self.acquire()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.release()
