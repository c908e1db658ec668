"""Cyclic garbage collector settings for the CLI's start-up and the long-running server (measured).

Start-up builds ~170,000 objects (modules, classes, models, the snapshot) that live for the whole
run; collections during it walk a growing heap to free ~1,000 objects (~0.4 s of the server's ~2 s to
its ready line). `paused()` (the CLI's imports) and `hold_until_ready()` (the server, until its ready line)
keep the collector off meanwhile.

Serving, CPython's defaults (700, 10, 10) cost ~5 % of a keep-alive request and ~15 % of a new
connection, and every few seconds a full collection walked the whole heap in 100-140 ms, a pause every
open connection waited through. `tune_for_server()`, at the ready line:

- `gc.freeze()`: the objects alive then move to the permanent generation, which no collection walks
  again. An object frozen here and dropped later is never reclaimed by the collector (only by
  reference counting), so call this once, after start-up, not later.
- A first-generation threshold of `GEN0_THRESHOLD`: a collection starts when tracked objects grew by
  that many since the last one. Requests in flight (flows, headers, coroutines) no longer trip
  collections that find nothing; garbage cycles (a closed connection leaves ~85 objects in cycles) are
  still collected automatically, at most `GEN0_THRESHOLD` new objects later; the older generations'
  multipliers stay CPython's.

Danger: a larger threshold holds cyclic garbage longer (bounded, see above); do not raise it further
without measuring RSS under connection churn (`bench/profile.py --new-conn`).
"""

from __future__ import annotations

import contextlib
import gc
from collections.abc import Iterator

GEN0_THRESHOLD = 5000  # CPython's default is 700


@contextlib.contextmanager
def paused() -> Iterator[None]:
    """No cyclic collection inside the block (start-up imports); the collector's state is restored."""
    was = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was:
            gc.enable()


def hold_until_ready() -> None:
    """The server process: no cyclic collection until `tune_for_server` turns it on at the ready line.
    Only for a process that is about to serve (or exit on a start-up error)."""
    gc.disable()


def tune_for_server() -> None:
    """Freeze what start-up left alive, set the thresholds and turn collection on (see the module
    docstring). No collection first: on a started server it takes ~120 ms to free ~1,000 objects
    (~0.3 MB: frames and exceptions of start-up's error handling), which stay frozen instead, once."""
    gc.freeze()
    _, gen1, gen2 = gc.get_threshold()
    gc.set_threshold(GEN0_THRESHOLD, gen1, gen2)
    gc.enable()
