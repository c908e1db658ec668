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
    (`vault run`'s session renewer, the isolate relay) only sets a flag, and a main thread asleep in
    `waitpid` ran the handler at the next signal: a SIGCONT after Ctrl-Z was lost and the command stayed
    stopped after `fg`. So the main thread sleeps in `select` on the signal wakeup pipe and a pidfd of
    `proc`.
    """
    try:
        exited = os.pidfd_open(proc.pid)
    except (AttributeError, OSError):  # not Linux >= 5.3: poll, the handlers run between two polls
        return _polling(proc)
    r, w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
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


def _polling(proc: subprocess.Popen[bytes]) -> int:
    """`proc.wait()` in 0.1 s steps (without a pidfd): a pending handler runs at each step at the latest."""
    while True:
        try:
            return proc.wait(timeout=0.1)
        except subprocess.TimeoutExpired:
            continue
