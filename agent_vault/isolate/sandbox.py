"""The bubblewrap sandbox of `vault run --isolate`: its command line, what it hides, and the probe.

bubblewrap (`bwrap`, Debian package `bubblewrap`) creates the namespaces: user (the same uid, no
capabilities, no further user namespaces), network (only a loopback interface, brought up by bwrap),
PID (with a fresh /proc: no other process of the user is visible, so none can be traced or have its
environment read), IPC, and mount. The filesystem stays the user's (`--dev-bind / /`) except what
`hidden_paths` lists, which is covered by an empty tmpfs (directories) or /dev/null (sockets, files).
`--new-session`: the command has no controlling terminal, so it cannot push keystrokes into the user's
shell (TIOCSTI); `launch` forwards the terminal's signals instead. Danger: everything not hidden is
readable and writable as the user (same uid, same files); filesystem Unix sockets remain reachable.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from agent_vault.errors import AgentVaultError

#: Namespaces and process options, shared by the probe and the real run.
BASE_ARGS = (
    "--unshare-user",
    "--disable-userns",
    "--unshare-net",
    "--unshare-pid",
    "--unshare-ipc",
    "--die-with-parent",
    "--new-session",
    "--dev-bind",
    "/",
    "/",
    "--proc",
    "/proc",
)
PROBE_TIMEOUT_S = 15.0
INSTALL_HINT = (
    "install bubblewrap (Debian/Ubuntu: apt-get install bubblewrap; Fedora: dnf install bubblewrap)"
)
NAMESPACE_HINT = (
    "user namespaces must be allowed (sysctl user.max_user_namespaces > 0, "
    "kernel.unprivileged_userns_clone=1, on Ubuntu 24.04 kernel.apparmor_restrict_unprivileged_userns=0); "
    "a container must permit them"
)
NO_FALLBACK = "or run without --isolate (not sandboxed)"


class IsolationUnavailable(AgentVaultError):
    """`--isolate` cannot create its sandbox here; never answered by falling back to an unisolated run."""

    code = "isolation_unavailable"
    status = 501
    hint = NO_FALLBACK


@dataclass(frozen=True)
class Hidden:
    """What the sandbox covers: directories get an empty (writable) tmpfs, other paths /dev/null; `keep`
    binds a host directory read-only at a path inside (the CA files, into the hidden agent-vault home)."""

    dirs: tuple[Path, ...]
    others: tuple[Path, ...]
    keep: tuple[tuple[Path, Path], ...]


def _dbus_path(address: str) -> Path | None:
    """The socket path of a `unix:path=...` D-Bus address (abstract sockets are per network namespace)."""
    for part in address.split(";"):
        if part.startswith("unix:"):
            for kv in part[5:].split(","):
                key, _, value = kv.partition("=")
                if key == "path" and value:
                    return Path(value)
    return None


def hidden_paths(home: Path, certs: Path, env: Mapping[str, str]) -> Hidden:
    """The agent-vault home(s) (CLI login, keys, database), the OS keyring's files and the D-Bus session
    socket (Secret Service). Only paths that exist are listed (bwrap would create the others). The CA
    directory `certs` is shown read-only at `sandbox_certs(home)`; the home's own `certs` stays writable
    for a nested `vault run` inside."""
    user_home = Path(env.get("HOME") or Path.home())
    data_home = Path(env.get("XDG_DATA_HOME") or user_home / ".local" / "share")
    candidates = [home, user_home / ".agent-vault", data_home / "python_keyring", data_home / "keyrings"]
    runtime = env.get("XDG_RUNTIME_DIR")
    if runtime:
        candidates += [Path(runtime) / "bus", Path(runtime) / "keyring"]
    bus = _dbus_path(env.get("DBUS_SESSION_BUS_ADDRESS", ""))
    if bus is not None:
        candidates.append(bus)
    dirs: list[Path] = []
    others: list[Path] = []
    for p in candidates:
        if not os.path.lexists(p):
            continue
        real = p.resolve()
        group = dirs if real.is_dir() else others
        if real not in dirs and real not in others:
            group.append(real)
    real_home = home.resolve()
    keep = ((certs.resolve(), sandbox_certs(real_home)),) if real_home in dirs and certs.is_dir() else ()
    return Hidden(tuple(dirs), tuple(others), keep)


def sandbox_certs(home: Path) -> Path:
    """Where the sandboxed child finds the CA files (inside the hidden home)."""
    return home / "sandbox-certs"


def bwrap_args(bwrap: str, hidden: Hidden) -> list[str]:
    """The bwrap command line up to (not including) the command; mounts apply in order."""
    args = [bwrap, *BASE_ARGS]
    for d in hidden.dirs:
        args += ["--perms", "0700", "--tmpfs", str(d)]
    for p in hidden.others:
        args += ["--ro-bind", "/dev/null", str(p)]
    for src, dest in hidden.keep:
        args += ["--ro-bind", str(src), str(dest)]
    return [*args, "--"]


def find_bwrap(path: str | None) -> str:
    if not sys.platform.startswith("linux"):
        raise IsolationUnavailable("--isolate needs Linux namespaces; this system is not Linux")
    found = shutil.which("bwrap", path=path)
    if found is None:
        raise IsolationUnavailable(
            "--isolate needs bubblewrap (bwrap), which is not on PATH", hint=f"{INSTALL_HINT}, {NO_FALLBACK}"
        )
    return found


def probe(path: str | None = None) -> str:
    """Start an empty sandbox with the real run's namespaces; bwrap's path if it works, else raise
    IsolationUnavailable naming bwrap's own reason (one line)."""
    bwrap = find_bwrap(path)
    try:
        cp = subprocess.run(
            [bwrap, *BASE_ARGS, "--", sys.executable, "-I", "-S", "-c", ""],
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            errors="replace",
            timeout=PROBE_TIMEOUT_S,
        )
    except (OSError, subprocess.SubprocessError) as e:
        raise IsolationUnavailable(
            f"--isolate cannot start bubblewrap ({type(e).__name__})", hint=f"check {bwrap}, {NO_FALLBACK}"
        ) from None
    if cp.returncode != 0:
        lines = [ln.strip() for ln in cp.stderr.splitlines() if ln.strip()]
        reason = (lines[0] if lines else f"exit {cp.returncode}")[:300]
        raise IsolationUnavailable(
            f"--isolate cannot create namespaces here ({reason})", hint=f"{NAMESPACE_HINT}; {NO_FALLBACK}"
        )
    return bwrap


def bwrap_version(bwrap: str) -> str:
    try:
        cp = subprocess.run([bwrap, "--version"], capture_output=True, text=True, timeout=PROBE_TIMEOUT_S)
    except (OSError, subprocess.SubprocessError):
        return "bubblewrap"
    return cp.stdout.strip() or "bubblewrap"
