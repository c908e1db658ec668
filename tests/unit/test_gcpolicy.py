"""The server's collector settings (`gcpolicy`): start-up is frozen out of every collection, and
garbage cycles made afterwards are still reclaimed on their own, with a bounded backlog."""

from __future__ import annotations

import json
import subprocess
import sys

from agent_vault import gcpolicy

# Runs in its own interpreter: freezing is process-wide and would change the pytest worker.
_PROBE = """
import gc, json, weakref
from agent_vault import gcpolicy

class Node:
    pass

startup = [Node() for _ in range(1000)]  # alive when start-up ends
gcpolicy.tune_for_server()
frozen = gc.get_freeze_count()
threshold = gc.get_threshold()
collections_before = sum(s["collections"] for s in gc.get_stats())

freed = [0]
def on_free():
    freed[0] += 1

CYCLES = 20000  # like connections that close with cycles among their objects
for _ in range(CYCLES):
    a, b = Node(), Node()
    a.peer, b.peer = b, a
    weakref.finalize(a, on_free)
    del a, b

after = sum(s["collections"] for s in gc.get_stats())
print(json.dumps({
    "frozen": frozen, "threshold": threshold, "freed": freed[0], "cycles": CYCLES,
    "collections": after - collections_before,
    "young_holds_startup": any(o is startup for o in gc.get_objects()),
}))
"""


def _probe() -> dict[str, object]:
    cmd = [sys.executable, "-c", _PROBE]
    out = subprocess.run(cmd, capture_output=True, text=True, check=True, timeout=60)
    return dict(json.loads(out.stdout))


def test_startup_objects_are_frozen_and_the_threshold_set() -> None:
    got = _probe()
    frozen = got["frozen"]
    assert isinstance(frozen, int) and frozen > 1000  # the probe's objects and every module before them
    assert got["threshold"] == [gcpolicy.GEN0_THRESHOLD, 10, 10]
    assert got["young_holds_startup"] is False  # no collection walks the frozen list again


def test_garbage_cycles_are_still_collected_without_an_explicit_collect() -> None:
    got = _probe()
    cycles, freed = got["cycles"], got["freed"]
    assert isinstance(cycles, int) and isinstance(freed, int)
    # Each cycle is 2 objects plus the finalizer's bookkeeping: at most one threshold of objects waits.
    assert cycles - freed <= gcpolicy.GEN0_THRESHOLD
    collections = got["collections"]
    assert isinstance(collections, int) and 0 < collections < cycles * 2 // 700  # fewer than the defaults
