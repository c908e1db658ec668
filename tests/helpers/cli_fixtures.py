"""Shared by the CLI e2e modules: one real server (and upstream) per module, the CLI logged in as the owner.

Module scope keeps the CLI suite fast: a server start costs seconds, every CLI subprocess about one.
"""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import trustme

from helpers.server import OWNER_EMAIL, OWNER_PASSWORD, ServerProc
from helpers.upstream import TLSUpstream

SECRET = "sk-live-cli-e2e-secret-value-0123456789"


def start_server(tmp: Path, upstream_ca: trustme.CA) -> Iterator[ServerProc]:
    with ServerProc(tmp, upstream_ca) as s:
        s.login_result = s.cli(
            "auth",
            "login",
            "--email",
            OWNER_EMAIL,
            "--password-stdin",  # type: ignore[attr-defined]
            input=OWNER_PASSWORD + "\n",
        )
        yield s


@pytest.fixture(scope="module")
def mserver(tmp_path_factory: pytest.TempPathFactory, upstream_ca: trustme.CA) -> Iterator[ServerProc]:
    yield from start_server(tmp_path_factory.mktemp("cli-e2e"), upstream_ca)


@pytest.fixture(scope="module")
def mupstream(upstream_ca: trustme.CA) -> Iterator[TLSUpstream]:
    with TLSUpstream(ca=upstream_ca) as up:
        yield up


def assert_clean(cp: Any, *secrets: str) -> None:
    """No traceback, and none of `secrets` in stdout or stderr."""
    both = cp.stdout + cp.stderr
    assert "Traceback" not in both, both
    for s in secrets:
        assert s not in both


def proxy_status(server: ServerProc, token: str, url: str, vault: str | None = "default") -> int:
    """Status of a request through the proxy; a refused CONNECT (e.g. 407) comes back as its status."""
    try:
        with httpx.Client(
            proxy=server.proxy_url(token, vault), verify=str(server.ca_bundle), trust_env=False, timeout=10
        ) as c:
            return c.get(url).status_code
    except httpx.ProxyError as e:
        text = str(e)
        for code in (407, 403, 400):
            if str(code) in text:
                return code
        raise


def child_env(text: str) -> dict[str, str]:
    env = {}
    for line in text.splitlines():
        k, sep, v = line.partition("=")
        if sep:
            env[k] = v
    return env


class Call:
    """One CLI invocation for `parallel` (same arguments as ServerProc.cli)."""

    def __init__(self, *args: str, **kwargs: Any) -> None:
        self.args, self.kwargs = args, kwargs


def parallel(server: ServerProc, *calls: Call) -> list[Any]:
    """Run independent CLI invocations concurrently (each is a Python start-up); results in order."""
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(max_workers=len(calls)) as pool:
        futures = [pool.submit(server.cli, *c.args, **c.kwargs) for c in calls]
        return [f.result() for f in futures]


def run_cli(
    args: list[str],
    env: dict[str, str],
    *,
    input: str | None = None,
    timeout: float = 40,
    cwd: Path | None = None,
) -> subprocess.CompletedProcess[str]:
    """The real CLI with `env` exactly as given (unlike ServerProc.cli, no AGENT_VAULT_ADDR is added);
    stdin is /dev/null unless `input` is given."""
    return subprocess.run(
        [sys.executable, "-m", "agent_vault", *args],
        cwd=cwd,
        input=input,
        stdin=None if input is not None else subprocess.DEVNULL,
        capture_output=True,
        text=True,
        env=env,
        timeout=timeout,
    )
