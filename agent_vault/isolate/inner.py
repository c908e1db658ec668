"""Runs inside the sandbox, as `python -I inner.py FD PORT [PORT...] -- CMD [ARGS...]`; stdlib only.

Listens on 127.0.0.1:PORT (inside the sandbox's network namespace) for each PORT, sends the listening
sockets over the inherited Unix socket FD to the wrapper outside (which relays them; a socket keeps the
namespace it was made in), restores the signal state a plain `vault run` child gets, then execs CMD in
this same process, so the wrapper's signals reach CMD itself. Exit 125 if it cannot listen, 126/127 if
CMD cannot be executed (one line on stderr, like `vault run`).
"""

from __future__ import annotations

import os
import signal
import socket
import sys

#: Blocked and ignored by the wrapper around the spawn; CMD gets them back at their defaults.
RESET = (
    "SIGINT",
    "SIGQUIT",
    "SIGTERM",
    "SIGHUP",
    "SIGUSR1",
    "SIGUSR2",
    "SIGWINCH",
    "SIGTSTP",
    "SIGCONT",
    "SIGPIPE",
    "SIGXFSZ",
)


def _fail(message: str, code: int) -> None:
    print(f"error: {message}", file=sys.stderr)
    sys.exit(code)


def main(argv: list[str]) -> None:
    sep = argv.index("--")
    fd, ports, cmd = int(argv[0]), [int(p) for p in argv[1:sep]], argv[sep + 1 :]
    control = socket.socket(fileno=fd)
    listeners = []
    for port in ports:
        s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        try:
            s.bind(("127.0.0.1", port))
            s.listen(128)
        except OSError as e:
            _fail(f"--isolate: cannot listen on 127.0.0.1:{port} in the sandbox ({e.strerror})", 125)
        listeners.append(s)
    socket.send_fds(control, [b"ready"], [s.fileno() for s in listeners])
    control.close()
    for s in listeners:
        s.close()
    for name in RESET:
        signal.signal(getattr(signal, name), signal.SIG_DFL)
    signal.pthread_sigmask(signal.SIG_SETMASK, set())
    try:
        os.execvp(cmd[0], cmd)  # noqa: S606 - becomes CMD, as `vault run` would spawn it
    except FileNotFoundError:
        _fail(f"{cmd[0]}: command not found", 127)
    except OSError as e:
        _fail(f"{cmd[0]}: cannot execute ({e.strerror})", 126)


if __name__ == "__main__":
    main(sys.argv[1:])
