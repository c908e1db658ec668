"""Load machinery for the robustness tests: lean proxy agents, a recording upstream, admin journals.

* `ProxyConn` - one agent connection the way a proxied HTTPS client makes it: `CONNECT` with
  `Proxy-Authorization: Basic base64(token[:vault])`, TLS to the target through the tunnel (trusting the
  agent-vault CA), then HTTP/1.1 keep-alive requests (h11). A fraction of httpx's CPU per request, so the
  proxy, not the load generator, is what a 2-core machine measures.
* `DigestUpstream` - a `TLSUpstream` whose `/r/<rid>` answers `<rid> <auth_digest(Authorization)>`: the
  client learns which credential the proxy injected into *that* request without the value ever coming
  back (a digest is not redacted), and a response delivered to the wrong request is visible.
* `TokenBoard` - the agents' current tokens and every rotation with its start/ack times; agents pick up
  their new token from it after a 407, the way an operator would hand it over.
* `LoadAgent` + `drive` - one asyncio task per agent sending until its quota of 200s; every attempt
  (refused, failed or successful) is kept as an `Attempt` with monotonic send/receive times.
* `Admin` / `Op` - an admin's HTTP calls, each journaled with start and ack (2xx received) times.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import re
import ssl
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import h11
import httpx

from helpers.upstream import TLSUpstream, UpstreamRequest, UpstreamResponse

__all__ = [
    "Admin",
    "Attempt",
    "DigestUpstream",
    "LoadAgent",
    "Op",
    "ProxyConn",
    "TokenBoard",
    "auth_digest",
    "drive",
    "metric",
    "run_worker",
]

_READ = 65536


def auth_digest(header_value: str) -> str:
    """What `DigestUpstream` reports for an `Authorization` header value ('' when absent)."""
    return hashlib.sha256(header_value.encode()).hexdigest()[:32]


def metric(text: str, name: str, **labels: str) -> float:
    """The sum of the samples of `name` in Prometheus text whose labels include `labels` (0 if none)."""
    total = 0.0
    for line in text.splitlines():
        if not (line.startswith(name + "{") or line.startswith(name + " ")):
            continue
        got = dict(re.findall(r'(\w+)="([^"]*)"', line.split("}")[0])) if "{" in line else {}
        if all(got.get(k) == v for k, v in labels.items()):
            total += float(line.rsplit(" ", 1)[1])
    return total


# ----------------------------------------------------------------------------------------------------
# upstream
# ----------------------------------------------------------------------------------------------------


class DigestUpstream(TLSUpstream):
    """`GET /r/<rid>` -> 200 `text/plain` body `<rid> <auth_digest(Authorization)>`; other paths as usual.

    `digests` maps rid -> the digests received for it (a list, so a request forwarded twice shows);
    `hygiene` lists rids that arrived with a proxy header or not exactly one Authorization header.
    Written on the upstream thread only; read them after the load has stopped.
    """

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.digests: dict[str, list[str]] = {}
        self.hygiene: list[str] = []

    async def handle(self, req: UpstreamRequest) -> UpstreamResponse:
        if not req.path.startswith("/r/"):
            return await super().handle(req)
        rid = req.path[3:]
        names = [k.lower() for k, _ in req.headers]
        if names.count("authorization") != 1 or {"proxy-authorization", "x-vault"} & set(names):
            self.hygiene.append(rid)
        digest = auth_digest(req.header("authorization") or "")
        self.digests.setdefault(rid, []).append(digest)
        return UpstreamResponse(200, [("Content-Type", "text/plain")], f"{rid} {digest}".encode())


# ----------------------------------------------------------------------------------------------------
# agents
# ----------------------------------------------------------------------------------------------------


class ProxyConn:
    """CONNECT through the proxy, TLS to `target` inside the tunnel, then HTTP/1.1 GETs (keep-alive)."""

    def __init__(
        self,
        proxy_port: int,
        token: str,
        vault: str | None,
        target: tuple[str, int],
        ctx: ssl.SSLContext,
    ) -> None:
        self.proxy_port = proxy_port
        self.token = token
        self.vault = vault
        self.target = target
        self.ctx = ctx
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None
        self.h11: h11.Connection | None = None

    async def open(self) -> int:
        """Send the CONNECT; returns its status. Only after 200 is the connection usable."""
        host, port = self.target
        self.reader, self.writer = await asyncio.open_connection("127.0.0.1", self.proxy_port)
        user = f"{self.token}:{self.vault}" if self.vault else self.token
        cred = base64.b64encode(user.encode()).decode()
        self.writer.write(
            f"CONNECT {host}:{port} HTTP/1.1\r\nHost: {host}:{port}\r\n"
            f"Proxy-Authorization: Basic {cred}\r\n\r\n".encode()
        )
        await self.writer.drain()
        head = await self.reader.readuntil(b"\r\n\r\n")
        status = int(head.split(b" ", 2)[1])
        if status == 200:
            await self.writer.start_tls(self.ctx, server_hostname=host)
            self.h11 = h11.Connection(h11.CLIENT)
        return status

    async def get(self, path: str) -> tuple[int, bytes]:
        """One GET on the open connection; returns (status, body)."""
        assert self.reader is not None and self.writer is not None and self.h11 is not None
        conn, (host, port) = self.h11, self.target
        self.writer.write(
            conn.send(h11.Request(method="GET", target=path, headers=[("Host", f"{host}:{port}")]))
        )
        self.writer.write(conn.send(h11.EndOfMessage()))
        await self.writer.drain()
        status, body = 0, bytearray()
        while True:
            event = conn.next_event()
            if event is h11.NEED_DATA:
                conn.receive_data(await self.reader.read(_READ))
            elif isinstance(event, h11.Response):
                status = event.status_code
            elif isinstance(event, h11.Data):
                body += event.data
            elif isinstance(event, h11.EndOfMessage):
                break
            else:
                raise ConnectionError(f"connection closed before the response ended ({type(event).__name__})")
        if conn.our_state is h11.DONE and conn.their_state is h11.DONE:
            conn.start_next_cycle()
        else:  # the proxy closes after this response: the next request needs a new connection
            self.h11 = None
        return status, bytes(body)

    @property
    def usable(self) -> bool:
        return self.h11 is not None

    def close(self) -> None:
        if self.writer is not None:
            with contextlib.suppress(Exception):
                self.writer.close()
            self.writer = None


@dataclass(slots=True)
class Attempt:
    """One thing an agent did: a GET inside a tunnel, or a CONNECT that was not answered 200."""

    agent: str
    vault: str
    token: str = field(repr=False)
    kind: str  # "GET" | "CONNECT"
    rid: str
    t_send: float
    t_recv: float
    status: int | None = None  # None: transport error (see `error`)
    digest: str | None = None  # from the upstream's answer, for a 200
    error: str | None = None


@dataclass
class LoadAgent:
    name: str
    vault: str
    hint: bool  # put the vault in the Basic password part (agents with several grants must)
    quota: int  # 200s to collect
    successes: int = 0
    attempts: list[Attempt] = field(default_factory=list)


class TokenBoard:
    """Current agent tokens and the rotation history, shared by the admin thread and the agents."""

    def __init__(self, tokens: dict[str, str]) -> None:
        self._lock = threading.Lock()
        self._current = dict(tokens)
        self.rotations: dict[str, tuple[str, float, float]] = {}  # old token -> (agent, started, acked)
        self.unacked: dict[str, tuple[str, float]] = {}  # old token -> (agent, started): no answer came

    def current(self, name: str) -> str:
        with self._lock:
            return self._current[name]

    def tokens(self) -> dict[str, str]:
        with self._lock:
            return dict(self._current)

    def rotated(self, name: str, old: str, new: str, started: float, acked: float) -> None:
        with self._lock:
            self._current[name] = new
            self.rotations[old] = (name, started, acked)

    def rotation_unacked(self, name: str, old: str, started: float) -> None:
        with self._lock:
            self.unacked[old] = (name, started)

    async def wait_new(self, name: str, old: str, timeout: float) -> bool:
        """Poll (async, with a deadline) for the agent's next token; False is judged by the caller."""
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            if self.current(name) != old:
                return True
            await asyncio.sleep(0.02)
        return False


async def drive(
    agent: LoadAgent,
    board: TokenBoard,
    *,
    proxy_port: int,
    target: tuple[str, int],
    ctx: ssl.SSLContext,
    deadline: float,
    stop: threading.Event,
    timeout: float = 30.0,
    max_errors: int = 20,
) -> None:
    """Send GET /r/<agent>.<n> until `agent.quota` 200s, `stop`, the deadline or `max_errors` failures.

    On a 407 (inside the tunnel or on the CONNECT) the agent waits for its next token on the board and
    reconnects with it; the refusal stays in `attempts` to be judged against the rotation times.
    """
    conn: ProxyConn | None = None
    n = errors = 0

    def note(kind: str, rid: str, token: str, t0: float, **kw: Any) -> Attempt:
        att = Attempt(agent.name, agent.vault, token, kind, rid, t0, time.monotonic(), **kw)
        agent.attempts.append(att)
        return att

    async def refused(token: str) -> None:
        nonlocal errors
        if not await board.wait_new(agent.name, token, 20.0):
            errors += 1  # a 407 with no rotation behind it: judged (and failed) by the test

    try:
        while agent.successes < agent.quota and errors < max_errors:
            if stop.is_set() or time.monotonic() > deadline:
                return
            token = board.current(agent.name)
            if conn is None or not conn.usable:
                if conn is not None:
                    conn.close()
                conn = ProxyConn(proxy_port, token, agent.vault if agent.hint else None, target, ctx)
                t0 = time.monotonic()
                try:
                    status = await asyncio.wait_for(conn.open(), timeout)
                except Exception as e:  # transport failure: recorded, judged by the test
                    note("CONNECT", "", token, t0, error=f"{type(e).__name__}: {e}")
                    conn.close()
                    conn = None
                    errors += 1
                    await asyncio.sleep(0.05)  # pacing: back off after a failure, the load goes on
                    continue
                if status != 200:
                    note("CONNECT", "", token, t0, status=status)
                    conn.close()
                    conn = None
                    if status == 407:
                        await refused(token)
                    else:
                        errors += 1
                        await asyncio.sleep(0.05)  # pacing: back off after a failure
                    continue
            token = conn.token  # a kept-alive connection still speaks for the token it was opened with
            rid = f"{agent.name}.{n}"
            n += 1
            t0 = time.monotonic()
            try:
                status, body = await asyncio.wait_for(conn.get(f"/r/{rid}"), timeout)
            except Exception as e:
                note("GET", rid, token, t0, error=f"{type(e).__name__}: {e}")
                conn.close()
                conn = None
                errors += 1
                await asyncio.sleep(0.05)  # pacing: back off after a failure, the load goes on
                continue
            if status == 200:
                got_rid, _, digest = body.decode("latin-1").partition(" ")
                if got_rid != rid:
                    note("GET", rid, token, t0, status=status, error=f"answer for another request: {got_rid}")
                    errors += 1
                    continue
                note("GET", rid, token, t0, status=status, digest=digest)
                agent.successes += 1
                continue
            note("GET", rid, token, t0, status=status, error=body[:300].decode("latin-1"))
            conn.close()
            conn = None
            if status == 407:
                await refused(token)
            else:
                errors += 1
                await asyncio.sleep(0.05)  # pacing: back off after a failure
    finally:
        if conn is not None:
            conn.close()


# ----------------------------------------------------------------------------------------------------
# admin
# ----------------------------------------------------------------------------------------------------


@dataclass
class Op:
    """One admin call. `acked` is when its 2xx arrived; an op with neither `acked` nor `failed` set was
    in flight when the load stopped (after a kill -9 its effect may or may not be in the store)."""

    kind: str  # the audit kind it must produce, e.g. "credential.rotate"
    vault: str | None
    target: str
    started: float
    acked: float | None = None
    failed: float | None = None
    error: str | None = None
    body: dict[str, Any] = field(default_factory=dict)


class Admin:
    """An admin's HTTP client (its own login token) whose every call is journaled."""

    def __init__(self, api: str, token: str, password: str) -> None:
        self.password = password
        self.client = httpx.Client(
            base_url=api, headers={"Authorization": f"Bearer {token}"}, trust_env=False, timeout=30
        )
        self.journal: list[Op] = []

    def call(
        self,
        kind: str,
        vault: str | None,
        target: str,
        method: str,
        url: str,
        body: dict[str, Any] | None = None,
        *,
        token: str | None = None,
        step_up: bool = False,
    ) -> Op:
        """Make the call; on 2xx the op is acked (`op.body` = its JSON), else failed with the reason."""
        op = Op(kind, vault, target, time.monotonic())
        self.journal.append(op)
        payload = dict(body or {})
        if step_up:
            payload["password"] = self.password
        headers = {"Authorization": f"Bearer {token}"} if token else None
        try:
            r = self.client.request(
                method, url, json=payload if body is not None or step_up else None, headers=headers
            )
        except httpx.HTTPError as e:
            op.failed, op.error = time.monotonic(), f"{type(e).__name__}: {e}"
            return op
        if 200 <= r.status_code < 300:
            op.acked = time.monotonic()
            op.body = r.json() if r.content else {}
        else:
            op.failed, op.error = time.monotonic(), f"{method} {url} -> {r.status_code} {r.text[:300]}"
        return op

    def close(self) -> None:
        self.client.close()


def run_worker(fn: Callable[[], None], errors: list[str], name: str) -> threading.Thread:
    """Start `fn` on a daemon thread; an exception escaping it is appended to `errors`."""

    def main() -> None:
        try:
            fn()
        except BaseException as e:  # surfaced by the test's assertions
            errors.append(f"{name} crashed: {type(e).__name__}: {e}")

    t = threading.Thread(target=main, name=name, daemon=True)
    t.start()
    return t
