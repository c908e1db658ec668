"""Dial exactly the address the SSRF guard checked (SPEC §5.10): no DNS-rebinding window.

`connect` runs in mitmproxy's `server_connect` hook: it resolves and checks the target once
(`Egress`), swaps the connection's address for the checked IP, and sets TLS SNI and verification to
the target name (the CONNECT target or URL host, never the client's SNI). `unpin` gives the
connection its name back once dialled. A refusal sets `server.error`, which the engine turns into
an upstream failure: the upstream is never contacted.
"""

from __future__ import annotations

from mitmproxy import connection

from agent_vault.errors import AgentVaultError
from agent_vault.proxy.flowlog import incident
from agent_vault.proxy.ssrf import Egress


class Pinning:
    def __init__(self, egress: Egress) -> None:
        self.egress = egress
        self.pinned: dict[str, tuple[str, int]] = {}  # server connection id -> its target (name, port)

    async def connect(self, server: connection.Server, own_api: str | None = None) -> None:
        """Resolve, check and pin `server`'s target; `own_api` is the address of agent-vault's own API
        when the target is that API for an agent on this machine (`ownapi`): dialled unchecked."""
        if server.address is None or server.id in self.pinned:
            return
        host, port = str(server.address[0]), int(server.address[1])
        try:
            ip = own_api or await self.egress.address(host, port)
        except AgentVaultError as e:
            server.error = f"refused by the proxy ({e.code})"
            return
        except Exception as e:
            server.error = f"refused by the proxy (internal, incident {incident(e).extra['incident']})"
            return
        server.sni = host
        if ip != host:
            self.pinned[server.id] = server.address
            server.address = (ip, port)

    def unpin(self, server: connection.Server) -> None:
        """Give the connection its target name back: mitmproxy reuses upstream connections by
        address, so a connection verified for one host name never carries another host's request.
        `Server.__setattr__` refuses address changes on open connections (a *re-target* guard);
        this is a rename of the socket already dialled, hence object.__setattr__."""
        addr = self.pinned.pop(server.id, None)
        if addr is not None:
            object.__setattr__(server, "address", addr)
