"""SO_REUSEPORT for the proxy listener (`agent-vault server --reuse-port`): N replicas on one host share
one proxy port and the kernel spreads new connections across them (one core each).

mitmproxy 12 binds its listener with a plain `asyncio.start_server(handle_stream, host, port)` in
`AsyncioServerInstance.listen` and exposes no option for SO_REUSEPORT. `install()` gives the regular
(forward proxy) server class its own `listen` that binds the same way with `reuse_port=True`;
`uninstall()` removes it again (the base class method shows through). The patch point is checked in
`engine_compat._patch_points`.

Danger: every process that binds the port with SO_REUSEPORT *under the same uid* receives a share of the
connections. Only replicas of one instance (one database) should share a port.
"""

from __future__ import annotations

import asyncio
import socket
from typing import Any

from mitmproxy.proxy import mode_servers

_ATTR = "listen"


def supported() -> bool:
    """SO_REUSEPORT exists on this platform (Linux, the BSDs, macOS)."""
    return hasattr(socket, "SO_REUSEPORT")


async def _listen(self: Any, host: str, port: int) -> list[asyncio.Server]:
    """`AsyncioServerInstance.listen` for a TCP mode, with SO_REUSEPORT on the listening socket."""
    return [await asyncio.start_server(self.handle_stream, host or None, port, reuse_port=True)]


def install() -> None:
    """Make the regular proxy mode bind with SO_REUSEPORT (one engine per process)."""
    setattr(mode_servers.RegularInstance, _ATTR, _listen)


def uninstall() -> None:
    if mode_servers.RegularInstance.__dict__.get(_ATTR) is _listen:
        delattr(mode_servers.RegularInstance, _ATTR)
