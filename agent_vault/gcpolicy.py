"""Cyclic garbage collector settings for the long-running server (issue #24, measured in bench/).

CPython's defaults (700, 10, 10) suit short scripts. In the proxy they cost ~5 % of a keep-alive
request and ~15 % of a new connection, and every few seconds a full collection walked the whole heap
(~170,000 objects after start-up: mitmproxy, SQLAlchemy, pydantic, the snapshot) in 100-140 ms, a
pause every open connection waited through. Two changes:

- `gc.freeze()` once start-up is done: the objects alive then (modules, classes, the configuration)
  move to the permanent generation, which no collection walks again. They were going to live for the
  whole run anyway; an object frozen here and dropped later is never reclaimed by the collector (only
  by reference counting), so call this once, after start-up, not later.
- A first-generation threshold of `GEN0_THRESHOLD`: a collection starts when tracked objects grew by
  that many since the last one. Requests in flight (flows, headers, coroutines) no longer trip
  collections that find nothing; garbage cycles (a closed connection leaves ~85 objects in cycles) are
  still collected automatically, at most `GEN0_THRESHOLD` new objects later, and the older
  generations' multipliers stay CPython's.

Danger: a larger threshold holds cyclic garbage longer (bounded, see above); do not raise it further
without measuring RSS under connection churn (`bench/profile.py --new-conn`).
"""

from __future__ import annotations

import gc

GEN0_THRESHOLD = 5000  # CPython's default is 700


def tune_for_server() -> None:
    """Freeze what start-up left alive and set the thresholds (see the module docstring). No collection
    first: it took ~80 ms of start-up and found no garbage (measured on a started server)."""
    gc.freeze()
    _, gen1, gen2 = gc.get_threshold()
    gc.set_threshold(GEN0_THRESHOLD, gen1, gen2)
