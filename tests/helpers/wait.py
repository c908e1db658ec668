"""The one way a test waits for something: poll a condition until a deadline, never sleep-then-assert.

`wait_until(cond, what, timeout=10, interval=0.05)` calls `cond()` until it returns something truthy and
returns that value; after `timeout` seconds it raises AssertionError naming `what` (and the last value).
An exception raised by `cond` propagates at once.
"""

from __future__ import annotations

import time
from collections.abc import Callable


def wait_until[T](cond: Callable[[], T], what: str, *, timeout: float = 10.0, interval: float = 0.05) -> T:
    deadline = time.monotonic() + timeout
    while True:
        value = cond()
        if value:
            return value
        if time.monotonic() >= deadline:
            last = repr(value)
            last = last if len(last) <= 500 else last[:500] + "..."
            raise AssertionError(f"timed out after {timeout:g} s waiting for {what} (last: {last})")
        time.sleep(interval)
