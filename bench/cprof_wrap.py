#!/usr/bin/env python3
"""Run a Python console script under cProfile that records only between SIGUSR1 and SIGUSR2.

    python bench/cprof_wrap.py OUT.prof .venv/bin/agent-vault server ...

SIGUSR1 starts profiling the main thread (signal handlers run there), SIGUSR2 stops it and writes OUT.prof
(pstats format). bench/profile.py --cprofile sends them around the timed load, so start-up, set-up and
warm-up stay out of the profile. For benchmarks only: never wrap a production server.
"""

from __future__ import annotations

import cProfile
import runpy
import signal
import sys
from typing import Any

out, script = sys.argv[1], sys.argv[2]
prof = cProfile.Profile()


def start(_signum: int, _frame: Any) -> None:
    prof.enable()


def stop(_signum: int, _frame: Any) -> None:
    prof.disable()
    prof.dump_stats(out)


signal.signal(signal.SIGUSR1, start)
signal.signal(signal.SIGUSR2, stop)
sys.argv = sys.argv[2:]
runpy.run_path(script, run_name="__main__")
