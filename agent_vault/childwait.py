"""Wait for a child process while the signal handlers that forward to it keep running; stdlib only."""

from __future__ import annotations

import contextlib
import os
import select
import signal
import subprocess


def wait_forwarding(proc: subprocess.Popen[bytes]) -> int:
    """`proc.wait()`, with Python's signal handlers run as the signals arrive.

    Danger: Python runs a handler in the main thread only. A signal the kernel hands to another thread
    (an HTTP client's, the isolate relay's) only sets a flag, and a main thread asleep in `waitpid` ran
    the handler at the next signal: a SIGCONT after Ctrl-Z was lost and the command stayed stopped after
    `fg`. So the main thread sleeps in `select` on the signal wakeup pipe and a pidfd of `proc`.
    """
    r, w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
    exited = os.pidfd_open(proc.pid)
    previous = signal.set_wakeup_fd(w, warn_on_full_buffer=False)
    try:
        while exited not in select.select([r, exited], [], [])[0]:
            with contextlib.suppress(BlockingIOError):
                os.read(r, 4096)  # the handlers run before the next select
    finally:
        signal.set_wakeup_fd(previous)
        for fd in (r, w, exited):
            os.close(fd)
    return proc.wait()
