"""Webhook notifications (issue 19): `--notify-url URL` (repeatable; `AGENT_VAULT_NOTIFY_URL`, comma list)
gets one JSON POST per event: `proposal.created`, `hold.created`, `hold.decided`, `exfiltration.blocked`.

Contracts and dangers:
* Events carry names, ids and links (to the approval page or the holds list), never credential values,
  tokens, bodies or headers. A proposal link is the page without its `av_appr_` token (login needed).
* Delivery is asynchronous: `emit` (any thread) only enqueues into a bounded queue; when it is full the
  event is dropped and counted (`dropped`), so a dead webhook never slows the proxy or the API.
  Workers retry a failed delivery with backoff (`attempts`), then give up with one warning line.
* Every URL goes through the egress guard (`address(host, port)`: the SSRF check of the proxy, with
  `--allow-net`), and the checked address is the one dialled (TLS still verifies the URL's host name).
* A Slack incoming-webhook URL (`hooks.slack.com`) gets a Slack body (`{"text": ...}`); any other URL
  the plain JSON event. Webhook URLs can themselves be secrets (Slack's are): logs name host:port and
  path (`describe_url`: no userinfo, no query, key-like path segments masked).
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import ssl
import uuid
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx

log = logging.getLogger("agent_vault.notify")

EVENTS = ("proposal.created", "hold.created", "hold.decided", "exfiltration.blocked")
Address = Callable[[str, int], Awaitable[str]]


def check_url(url: str) -> str:
    """A webhook URL: http(s) with a host. The message never repeats the URL (it may be a secret)."""
    parts = urlsplit(url.strip())
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError("--notify-url must be an http:// or https:// URL with a host")
    return url.strip()


def _segment(seg: str) -> str:
    """A path segment for a log line: one that could be a key (16+ characters, or 8+ with letters and
    digits: Slack's and Discord's webhook keys) becomes `*` and a short digest, which tells two URLs
    apart without showing the key."""
    keyish = len(seg) >= 16 or (
        len(seg) >= 8 and any(c.isdigit() for c in seg) and any(c.isalpha() for c in seg)
    )
    return "*" + hashlib.sha256(seg.encode()).hexdigest()[:6] if keyish else seg


def describe_url(url: str) -> str:
    """A webhook URL for a log line: host:port and path, never the userinfo or the query (either may be a
    secret), key-like path segments masked (`_segment`), so that two URLs on one host differ."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    try:
        port = parts.port or (443 if parts.scheme == "https" else 80)
    except ValueError:
        port = 443 if parts.scheme == "https" else 80
    netloc = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    return netloc + ("/".join(_segment(seg) for seg in parts.path.split("/")) or "/")


def is_slack(url: str) -> bool:
    host = (urlsplit(url).hostname or "").lower()
    return host == "hooks.slack.com" or (host.endswith(".slack.com") and "/services/" in urlsplit(url).path)


def summary(event: str, data: dict[str, Any]) -> str:
    """One human line for chat webhooks (names and ids only)."""
    vault = data.get("vault", "?")
    if event == "proposal.created":
        what = ", ".join(data.get("services", []) + data.get("credentials", [])) or "changes"
        return (
            f"agent-vault: {data.get('actor')} proposes {what} in vault {vault} (proposal {data.get('id')})"
        )
    if event == "hold.created":
        return (
            f"agent-vault: {data.get('agent')} waits for approval: {data.get('method')} {data.get('host')}"
            f"{data.get('path')} (service {data.get('service')}, vault {vault}, hold {data.get('id')})"
        )
    if event == "hold.decided":
        return f"agent-vault: hold {data.get('id')} in vault {vault} was {data.get('status')}"
    if event == "exfiltration.blocked":
        who, host = data.get("actor"), data.get("host")
        return f"agent-vault: blocked {who} sending credentials to {host} in vault {vault}"
    return f"agent-vault: {event} in vault {vault}"


Emit = Callable[[str, str | None, dict[str, Any]], None]


def exfiltration_blocked(
    emit: Emit, *, vault: str, actor: str, host: str, service: str | None, keys: Sequence[str]
) -> None:
    """The `exfiltration.blocked` event, for the exfiltration guard (issue 20) to call with
    `core.notify`: who tried to send which credential KEYS (names) to which host. Never values."""
    emit(
        "exfiltration.blocked", vault, {"actor": actor, "host": host, "service": service, "keys": list(keys)}
    )


@dataclass(frozen=True, slots=True)
class _Item:
    url: str
    body: dict[str, Any]


class Notifier:
    """The bounded delivery queue and its workers (one asyncio loop; `emit` from any thread)."""

    def __init__(
        self,
        urls: Sequence[str],
        address: Address,
        *,
        public_url: Callable[[], str] = lambda: "",
        upstream_ca: Path | None = None,
        queue_size: int = 1000,
        workers: int = 2,
        attempts: int = 4,
        backoff: float = 0.5,
        timeout: float = 5.0,
    ) -> None:
        self.urls = [check_url(u) for u in urls]
        self.address, self.public_url = address, public_url
        self.attempts, self.backoff, self.timeout = attempts, backoff, timeout
        self.queue: asyncio.Queue[_Item] = asyncio.Queue(maxsize=queue_size)
        self.dropped = self.delivered = self.failed = 0
        self._workers = workers
        self._tasks: list[asyncio.Task[None]] = []
        self._loop: asyncio.AbstractEventLoop | None = None
        self._ssl = ssl.create_default_context()
        if upstream_ca is not None:
            self._ssl.load_verify_locations(cafile=str(upstream_ca))

    def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._tasks = [asyncio.create_task(self._work(), name=f"notify-{i}") for i in range(self._workers)]

    async def close(self, grace: float = 2.0) -> None:
        """Stop the workers, first giving the queued events (a stop's `hold.decided`) up to `grace`
        seconds to go out."""
        if self._tasks:  # join returns at once when nothing is queued or in delivery
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.queue.join(), grace)
        for t in self._tasks:
            t.cancel()
        for t in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await t

    # ---- producing ------------------------------------------------------------------------------
    def emit(self, event: str, vault: str | None, data: dict[str, Any]) -> None:
        """Queue `event` for every URL; never blocks, never raises (thread-safe)."""
        if not self.urls or self._loop is None or self._loop.is_closed():
            return
        body = {
            "event": event,
            "id": uuid.uuid4().hex,
            "ts": datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
            "vault": vault,
            "data": data,
            "links": self._links(event, vault, data),
        }
        try:
            self._loop.call_soon_threadsafe(self._enqueue, body)
        except RuntimeError:  # the loop is shutting down
            self.dropped += 1

    def _enqueue(self, body: dict[str, Any]) -> None:
        for url in self.urls:
            try:
                self.queue.put_nowait(_Item(url, body))
            except asyncio.QueueFull:
                self.dropped += 1

    def _links(self, event: str, vault: str | None, data: dict[str, Any]) -> dict[str, str]:
        base = self.public_url().rstrip("/")
        if not base or vault is None:
            return {}
        if event == "proposal.created":
            return {"approval_page": f"{base}/ui/approve/{vault}/{data.get('id')}"}
        if event.startswith("hold."):
            return {
                "holds": f"{base}/v1/vaults/{vault}/holds",
                "approval_page": f"{base}/ui/vaults/{vault}/holds",
            }
        return {"logs": f"{base}/v1/vaults/{vault}/logs"}

    # ---- delivering -----------------------------------------------------------------------------
    async def _work(self) -> None:
        while True:
            item = await self.queue.get()
            try:
                await self._deliver(item)
            finally:
                self.queue.task_done()

    async def _deliver(self, item: _Item) -> None:
        body: dict[str, Any] = item.body
        if is_slack(item.url):
            body = {"text": summary(str(body["event"]), {**body["data"], "vault": body["vault"]})}
        where = describe_url(item.url)
        for attempt in range(self.attempts):
            try:
                await self._post(item.url, body)
                self.delivered += 1
                return
            except Exception as e:  # any failure: retry, then report by host and type only
                reason = type(e).__name__
            if attempt + 1 < self.attempts:
                await asyncio.sleep(self.backoff * (2**attempt))
        self.failed += 1
        log.warning("webhook to %s failed after %d attempts (%s)", where, self.attempts, reason)

    async def _post(self, url: str, body: dict[str, Any]) -> None:
        parts = urlsplit(url)
        host = parts.hostname or ""
        port = parts.port or (443 if parts.scheme == "https" else 80)
        ip = await self.address(host, port)  # the egress guard; raises when blocked
        netloc = f"[{ip}]" if ":" in ip else ip
        target = parts._replace(netloc=f"{netloc}:{port}").geturl()
        headers = {"Host": parts.netloc.rsplit("@", 1)[-1], "User-Agent": "agent-vault-notify"}
        async with (
            httpx.AsyncClient(verify=self._ssl, trust_env=False, timeout=self.timeout) as c,
            c.stream("POST", target, json=body, headers=headers, extensions={"sni_hostname": host}) as r,
        ):
            r.raise_for_status()  # a non-2xx answer is a failed attempt (retried); the body is never read
