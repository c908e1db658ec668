"""`vault run --isolate` glue: where the child reaches the proxy and the API inside the sandbox.

Inside, the proxy and the API listen on 127.0.0.1 at the ports they have outside (a fresh network namespace
has every port free; a port under 1024 would need a capability, so 14321/14322 stand in), and the child's
`HTTPS_PROXY`/`AGENT_VAULT_ADDR` point there. The relay carries those two ports, and nothing else, out.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

from agent_vault.isolate.launch import Route, run_sandboxed
from agent_vault.isolate.sandbox import bwrap_args, hidden_paths

DEFAULT_API_PORT, DEFAULT_PROXY_PORT = 14321, 14322
FIRST_UNPRIVILEGED_PORT = 1024


@dataclass(frozen=True)
class Plan:
    addr: str  # AGENT_VAULT_ADDR inside
    proxy_host: str
    proxy_port: int
    routes: tuple[Route, ...]


def inside_ports(api_port: int, proxy_port: int) -> tuple[int, int]:
    api = api_port if api_port >= FIRST_UNPRIVILEGED_PORT else DEFAULT_API_PORT
    proxy = proxy_port if proxy_port >= FIRST_UNPRIVILEGED_PORT else DEFAULT_PROXY_PORT
    if proxy == api:
        proxy = api + 1 if api < 65535 else api - 1
    return api, proxy


def plan(addr: str, proxy_host: str, proxy_port: int) -> Plan:
    """The child's view of the server at `addr` whose proxy is `proxy_host:proxy_port`."""
    u = urlsplit(addr)
    api_host = u.hostname or "127.0.0.1"
    api_port = u.port or (443 if u.scheme == "https" else 80)
    api_in, proxy_in = inside_ports(api_port, proxy_port)
    return Plan(
        addr=f"{u.scheme or 'http'}://127.0.0.1:{api_in}",
        proxy_host="127.0.0.1",
        proxy_port=proxy_in,
        routes=(Route(proxy_in, (proxy_host, proxy_port)), Route(api_in, (api_host, api_port))),
    )


def run(bwrap: str, p: Plan, argv: list[str], env: dict[str, str], *, home: Path) -> int:
    """Run argv in the sandbox with `env`; the exit code (see isolate.launch)."""
    prefix = bwrap_args(bwrap, hidden_paths(home, home / "certs", os.environ))
    return run_sandboxed(prefix, argv, env, list(p.routes))
