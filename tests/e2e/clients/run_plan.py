"""Runs every client of the compatibility matrix in the environment this process was given.

usage: run_plan.py PLAN.json RESULTS.json

`tests/e2e/test_clients.py` starts this once as `agent-vault vault run -- python run_plan.py ...`, so every
client is a real child process that inherits exactly the environment `vault run` built (nothing is added or
removed here), and the wrapper's start-up cost is paid once.

PLAN is `[{"name", "argv", "cwd", "timeout"}]`; RESULTS is
`{"env": {the proxy/CA variables seen}, "clients": {name: {"rc", "stdout", "stderr", "seconds"}}}`.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from typing import Any

ENV_NAMES = (
    "AGENT_VAULT_TOKEN",
    "AGENT_VAULT_ADDR",
    "AGENT_VAULT_VAULT",
    "HTTPS_PROXY",
    "HTTP_PROXY",
    "https_proxy",
    "http_proxy",
    "NO_PROXY",
    "no_proxy",
    "NODE_USE_ENV_PROXY",
    "SSL_CERT_FILE",
    "NODE_EXTRA_CA_CERTS",
    "REQUESTS_CA_BUNDLE",
    "CURL_CA_BUNDLE",
    "GIT_SSL_CAINFO",
    "DENO_CERT",
)


def run_one(step: dict[str, Any]) -> dict[str, Any]:
    start = time.monotonic()
    try:
        cp = subprocess.run(
            step["argv"],
            cwd=step.get("cwd"),
            capture_output=True,
            text=True,
            timeout=step.get("timeout", 60),
            stdin=subprocess.DEVNULL,
        )
        rc, stdout, stderr = cp.returncode, cp.stdout, cp.stderr
    except subprocess.TimeoutExpired as e:
        rc = -999
        stdout = e.stdout.decode() if isinstance(e.stdout, bytes) else (e.stdout or "")
        stderr = f"timed out after {step.get('timeout', 60)} s\n" + (
            e.stderr.decode() if isinstance(e.stderr, bytes) else (e.stderr or "")
        )
    except OSError as e:
        rc, stdout, stderr = -998, "", f"cannot start {step['argv'][0]}: {e}"
    return {"rc": rc, "stdout": stdout, "stderr": stderr, "seconds": round(time.monotonic() - start, 3)}


def main(plan_path: str, results_path: str) -> int:
    with open(plan_path) as fh:
        plan = json.load(fh)
    results: dict[str, Any] = {
        "env": {k: os.environ[k] for k in ENV_NAMES if k in os.environ},
        "clients": {},
    }
    for step in plan:
        results["clients"][step["name"]] = run_one(step)
    with open(results_path, "w") as fh:
        json.dump(results, fh)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1], sys.argv[2]))
