"""Drive a CLI command on a real terminal (the slave side of a pty pair), as a person would: wait for
a prompt, type a line, read to the end. Bounded: every wait has a deadline."""

from __future__ import annotations

import fcntl
import os
import pty
import select
import subprocess
import sys
import termios
import time

TIMEOUT_S = 20.0


def _take_terminal() -> None:
    """In the child, after setsid: make the pty (fd 0) its controlling terminal, so the command is
    the terminal's foreground job, as a command typed at a shell prompt is."""
    fcntl.ioctl(0, termios.TIOCSCTTY, 0)


class Term:
    """The CLI on the slave side of a pty pair; we drive the master side."""

    def __init__(self, args: list[str], env: dict[str, str], timeout: float = TIMEOUT_S) -> None:
        """Run `python -m agent_vault ARGS` (or ARGS itself when it is not an agent-vault command line,
        i.e. its first element is a path) in a new session whose controlling terminal is the pty."""
        self.timeout = timeout
        self.fd, slave = pty.openpty()
        cmd = args if args and os.path.sep in args[0] else [sys.executable, "-m", "agent_vault", *args]
        self.proc = subprocess.Popen(
            cmd,
            stdin=slave,
            stdout=slave,
            stderr=slave,
            env={**env, "NO_COLOR": "1"},
            start_new_session=True,
            preexec_fn=_take_terminal,  # noqa: PLW1509 - the pty becomes the controlling terminal
            close_fds=True,
        )
        os.close(slave)
        self.text = ""

    def _read(self, deadline: float) -> bool:
        """Read what is available; False at end of output."""
        ready, _, _ = select.select([self.fd], [], [], max(0.0, deadline - time.monotonic()))
        if not ready:
            return True
        try:
            data = os.read(self.fd, 4096)
        except OSError:  # EIO: the child closed the terminal
            return False
        if not data:
            return False
        self.text += data.decode(errors="replace").replace("\r\n", "\n")
        return True

    def expect(self, needle: str) -> str:
        """Wait for `needle` in the output after what was already consumed; returns the output up to it."""
        deadline = time.monotonic() + self.timeout
        while needle not in self.text:
            if time.monotonic() > deadline or not self._read(deadline):
                raise AssertionError(f"{needle!r} not in output: {self.text!r}")
        before, _, self.text = self.text.partition(needle)
        return before

    def send(self, line: str) -> None:
        os.write(self.fd, line.encode() + b"\r")

    def finish(self) -> tuple[int, str]:
        """Read to the end of the output; the exit code and the output not consumed yet."""
        deadline = time.monotonic() + self.timeout
        while time.monotonic() < deadline and self._read(deadline):
            pass
        try:
            rc = self.proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            self.proc.kill()  # still waiting for input: fail instead of hanging
            self.proc.wait()
            raise AssertionError(f"the command did not exit; output: {self.text!r}") from None
        finally:
            os.close(self.fd)
        return rc, self.text
