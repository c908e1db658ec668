"""The request/response loop of one fast-path connection.

Runs as one task per connection: requests are read one at a time (a pipelined request waits in the
buffer until the previous response is complete, as on the engine), each goes through an `Exchange`,
and the upstream connection is kept while both sides allow it. Fail closed: a head the engine
refuses gets the engine's answer (400/431 JSON) and the connection closes; any other exception
gets a 502 `internal` JSON answer if nothing of the response was sent yet, and the connection is
closed either way. Never is a request forwarded unchecked.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable

from mitmproxy import flow as mflow
from mitmproxy import http
from mitmproxy.proxy.context import Context
from mitmproxy.proxy.layers.http import HTTPMode, validate_request

from agent_vault.errors import AgentVaultError
from agent_vault.proxy import engine
from agent_vault.proxy.addon import VaultAddon
from agent_vault.proxy.answers import error_response, h1_error_response
from agent_vault.proxy.deadlines import CONNECT_TIMED_OUT, Deadlines
from agent_vault.proxy.fast.client import ClientSide
from agent_vault.proxy.fast.exchange import Abort, Exchange, mark_fast
from agent_vault.proxy.fast.h1 import BodyBroken, HeadRefused, Reader, response_bytes
from agent_vault.proxy.fast.upstream import Upstream, UpstreamFailed, open_upstream
from agent_vault.proxy.flowlog import incident

log = logging.getLogger("agent_vault.proxy")
#: After an answer to a request whose body was not read (a refusal), how long and how much of what the
#: agent still sends is read and discarded before the connection closes (RFC 9112 §9.6)
LINGER_SECONDS = 2.0
LINGER_BYTES = 16 << 20


class Session:
    """One fast-path connection (see the module docstring)."""

    def __init__(
        self,
        addon: VaultAddon,
        context: Context,
        client: ClientSide,
        target: tuple[str, int],
        close: Callable[[], None],
    ) -> None:
        self.addon, self.context, self.client = addon, context, client
        self.target = target
        self.creader = Reader(client)
        self.up: Upstream | None = None
        self._close = close
        self.unread_body = False  # the last request's body was not (all) read: linger before closing

    async def _upstream(self) -> Upstream:
        if self.up is not None and self.up.reusable_now():
            return self.up
        if self.up is not None:
            self.up.close()
            self.up = None
        try:
            async with asyncio.timeout(Deadlines.connect):  # DNS, TCP and TLS (SPEC §6 upstream_timeout)
                self.up = await open_upstream(self.addon.egress, self.context, *self.target)
        except TimeoutError:
            raise UpstreamFailed(f"Server connection: {CONNECT_TIMED_OUT}") from None
        return self.up

    async def run(self) -> None:
        cancelled = False
        try:
            while await self._one():
                pass
        except asyncio.CancelledError:
            cancelled = True
        finally:
            if self.up is not None:
                self.up.close()
            with contextlib.suppress(Exception):
                self.client.shutdown()
            if self.unread_body and not cancelled:
                await self._linger()
            self._close()

    async def _linger(self) -> None:
        """RFC 9112 §9.6: the answer went out while the agent may still be sending the body the proxy
        refused. Closing now, with its bytes unread, makes the kernel reset the connection, and a reset
        can discard the answer before the agent reads it (its own write fails first). So what it still
        sends is read and thrown away, for at most LINGER_SECONDS and LINGER_BYTES; nothing is kept."""
        got = 0
        with contextlib.suppress(Exception):
            async with asyncio.timeout(LINGER_SECONDS):
                while got < LINGER_BYTES:
                    data = await self.client.read()
                    if not data:
                        return
                    got += len(data)

    async def _one(self) -> bool:
        """Serve one request; True to read the next one."""
        try:
            got = await self.creader.request_head()
        except HeadRefused as e:
            engine._head_refused(self.context.client, e.status)
            self.client.write(h1_error_response(e.status, str(e)))
            await self.client.drain()
            return False
        if got is None:
            return False
        req, size = got
        host, port = self.target
        req.data.host, req.data.port = host, port  # transparent inside CONNECT, as the engine does
        req.scheme = "https"
        req.timestamp_start = time.time()
        flow = http.HTTPFlow(self.context.client, self.context.server)
        flow.request = req
        flow.live = True
        invalid = validate_request(HTTPMode.transparent, req, True)
        if invalid is not None:  # the engine's check_invalid: the hooks see it, the client gets 400
            flow.error = mflow.Error(invalid)
            await self.addon.requestheaders(flow)
            mark_fast(self.addon, flow)
            self.addon.error(flow)
            self.client.write(h1_error_response(400, invalid))
            await self.client.drain()
            return False
        ex = Exchange(self.addon, flow, size, self.client, self.creader, self._upstream)
        try:
            keep = await ex.run()
            self.unread_body = not ex.body_read
            return keep
        except asyncio.CancelledError:  # the agent hung up mid-exchange: audited like the engine does
            flow.error = mflow.Error("Client disconnected.")
            self.addon.error(flow)
            raise
        except (Abort, BodyBroken):
            self.addon._finish(flow)
            return False
        except Exception as e:  # fail closed: 502 if nothing was sent, close in any case
            self.unread_body = not ex.body_read
            err = e if isinstance(e, AgentVaultError) else incident(e)
            if not ex.sent:
                flow.response = error_response(err)
                flow.response.headers["Connection"] = "close"
                fs = self.addon.flows.get(flow.id)
                if fs is not None:
                    fs.error = err.code
                with contextlib.suppress(Exception):
                    self.addon.response(flow)
                self.client.write(response_bytes(flow.response))
                with contextlib.suppress(Exception):
                    await self.client.drain()
            self.addon._finish(flow)
            return False
