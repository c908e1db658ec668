"""HoldManager and Notifier without sockets (issue 19): bounds, outcomes, thread-safe decisions, the
hour grant, shutdown; the webhook queue's bound, retries and Slack detection. The real thing runs in
tests/e2e/test_holds.py and tests/e2e/test_notify.py."""

from __future__ import annotations

import asyncio
import threading
from typing import Any

import pytest

from agent_vault.errors import ApprovalDenied, ApprovalTimeout, HoldInterrupted, TooManyHolds
from agent_vault.holds import HoldManager
from agent_vault.notify import Notifier, check_url, describe_url, is_slack, summary
from agent_vault.servicedef import ServiceDef

SVC = ServiceDef.model_validate(
    {
        "name": "pay",
        "host": "api.example.com",
        "auth": {"type": "bearer", "token": "K"},
        "approval": {"methods": ["POST"], "timeout_seconds": 1},
    }
)


class Recorder:
    def __init__(self) -> None:
        self.records: list[tuple[str, str, dict[str, Any]]] = []
        self.events: list[str] = []

    def record(self, kind: str, actor: str, **kw: Any) -> None:
        self.records.append((kind, actor, kw))

    def notify(self, event: str, data: dict[str, Any]) -> None:
        self.events.append(event)


def _gate(m: HoldManager, agent: str = "agent:a", client: str = "c1", method: str = "POST") -> Any:
    return m.gate(
        vault="v", svc=SVC, agent=agent, actor=agent, method=method, host="api.example.com",
        port=443, path="/charge?amount=5", client_id=client,
    )  # fmt: skip


async def _pending(m: HoldManager, n: int) -> list[dict[str, Any]]:
    for _ in range(200):
        holds = m.list("v")
        if len(holds) >= n:
            return holds
        await asyncio.sleep(0.01)
    raise AssertionError("holds did not appear")


def test_outcomes_bounds_and_the_hour() -> None:
    rec = Recorder()
    now = [1000.0]
    m = HoldManager(rec.record, rec.notify, per_actor=2, total=3, clock=lambda: now[0])

    async def scenario() -> None:
        assert await _gate(m, method="GET") is None  # GET is not held
        a = asyncio.create_task(_gate(m))
        b = asyncio.create_task(_gate(m))
        holds = await _pending(m, 2)
        assert holds[0]["path"] == "/charge" and "amount" not in str(holds)
        with pytest.raises(TooManyHolds):
            await _gate(m)  # a third of the same agent
        c = asyncio.create_task(_gate(m, agent="agent:b"))
        await _pending(m, 3)
        with pytest.raises(TooManyHolds):
            await _gate(m, agent="agent:c")  # over the global bound
        # decisions come from API worker threads
        decision = {"approve": True, "scope": "1h", "by": "user:h"}
        t = threading.Thread(target=m.decide, args=("v", holds[0]["id"]), kwargs=decision)
        t.start()
        t.join()
        assert (await a).id == holds[0]["id"]
        m.decide("v", holds[1]["id"], approve=False, scope="", by="user:h")
        with pytest.raises(ApprovalDenied):
            await b
        with pytest.raises(ApprovalTimeout):
            await c
        assert await _gate(m) is None  # agent:a has the hour
        now[0] += 3601
        with pytest.raises(ApprovalTimeout):
            await _gate(m)  # the hour is over

    asyncio.run(scenario())
    kinds = [k for k, _, _ in rec.records]
    assert kinds.count("hold.create") == 4 and "hold.approve" in kinds and "hold.deny" in kinds
    assert kinds.count("hold.timeout") == 2
    assert rec.events.count("hold.created") == 4 and "hold.decided" in rec.events


def test_a_gone_client_and_a_shutdown_end_holds() -> None:
    rec = Recorder()
    m = HoldManager(rec.record)

    async def scenario() -> None:
        gone = asyncio.create_task(_gate(m, client="c1"))
        other = asyncio.create_task(_gate(m, client="c2"))
        await _pending(m, 2)
        m.cancel_client("c1")
        with pytest.raises(HoldInterrupted):
            await gone
        assert len(m.list("v")) == 1
        assert m.shutdown() == 1
        with pytest.raises(HoldInterrupted):
            await other
        with pytest.raises(HoldInterrupted):
            await _gate(m)  # no new holds once stopping

    asyncio.run(scenario())
    assert [k for k, _, _ in rec.records].count("hold.cancel") == 1


def test_exempt_agents_are_not_held() -> None:
    svc = SVC.model_copy(update={"approval": SVC.approval.model_copy(update={"exempt": ["agent:a"]})})  # type: ignore[union-attr]
    m = HoldManager(Recorder().record)
    assert not m.needs_hold("v", svc, "POST", "agent:a")
    assert m.needs_hold("v", svc, "POST", "agent:b")


def test_webhook_urls_and_bodies() -> None:
    assert is_slack("https://hooks.slack.com/services/T/B/x")
    assert not is_slack("https://example.com/services/T/B/x")
    with pytest.raises(ValueError) as e:
        check_url("ftp://user:secret@host/x")
    assert "secret" not in str(e.value)
    text = summary("hold.created", {"vault": "v", "agent": "agent:a", "method": "POST", "host": "h",
                                    "path": "/p", "service": "s", "id": "ab12"})  # fmt: skip
    assert text == "agent-vault: agent:a waits for approval: POST h/p (service s, vault v, hold ab12)"


def test_the_queue_is_bounded_and_failures_are_retried_then_counted() -> None:
    calls: list[str] = []

    async def refuse(host: str, port: int) -> str:
        calls.append(host)
        raise OSError("blocked")

    async def scenario() -> Notifier:
        n = Notifier(["https://a.example/x"], refuse, queue_size=2, workers=1, attempts=3, backoff=0.01)
        n.emit("hold.created", "v", {"id": "1"})  # before start: nothing to deliver with
        n.start()
        for i in range(5):
            n.emit("hold.created", "v", {"id": str(i)})
        await asyncio.sleep(0)  # the emits land (call_soon_threadsafe)
        for _ in range(300):
            if n.failed == 2:
                break
            await asyncio.sleep(0.01)
        await n.close()
        return n

    n = asyncio.run(scenario())
    assert n.failed == 2 and n.delivered == 0
    assert n.dropped == 3  # two queued, three over the bound: emit never waits
    assert calls == ["a.example"] * 6  # three attempts each


def test_a_webhook_answer_is_never_read_whole() -> None:
    """A receiver that answers 200 and then streams a body without end: the delivery counts at once and
    the proxy's memory does not follow the body (only the status is read)."""

    async def endless(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        writer.write(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n")
        try:
            for _ in range(100_000):  # bounded: ~6 GiB offered, the reader must not take it
                writer.write(b"10000\r\n" + b"x" * 0x10000 + b"\r\n")
                await writer.drain()
        except (ConnectionError, OSError):
            pass
        finally:
            writer.close()

    async def loopback(host: str, port: int) -> str:
        return "127.0.0.1"

    async def scenario() -> Notifier:
        server = await asyncio.start_server(endless, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        n = Notifier([f"http://127.0.0.1:{port}/hook"], loopback, workers=1, attempts=1, timeout=5.0)
        n.start()
        n.emit("hold.created", "v", {"id": "1"})
        for _ in range(300):  # 3 s at most: reading the body whole would never end
            if n.delivered or n.failed:
                break
            await asyncio.sleep(0.01)
        await n.close()
        server.close()
        return n

    n = asyncio.run(scenario())
    assert n.delivered == 1 and n.failed == 0


def test_a_hold_that_ends_without_a_decision_still_sends_hold_decided() -> None:
    """The webhook that got `hold.created` learns that nobody needs to decide any more: the agent went
    away (status "cancelled") or the server stops (status "interrupted"); same payload as a decision."""
    sent: list[tuple[str, dict[str, Any]]] = []
    m = HoldManager(Recorder().record, lambda event, data: sent.append((event, data)))

    async def scenario() -> None:
        gone = asyncio.create_task(_gate(m, client="c1"))
        other = asyncio.create_task(_gate(m, client="c2"))
        await _pending(m, 2)
        m.cancel_client("c1")
        m.cancel_client("c1")  # a second close of the same client: no second event
        with pytest.raises(HoldInterrupted):
            await gone
        m.shutdown()
        with pytest.raises(HoldInterrupted):
            await other

    asyncio.run(scenario())
    decided = [d for e, d in sent if e == "hold.decided"]
    assert [d["status"] for d in decided] == ["cancelled", "interrupted"]
    created = [d for e, d in sent if e == "hold.created"]
    assert [d["id"] for d in decided] == [d["id"] for d in created]
    assert set(decided[0]) == set(created[0])  # the payload's fields, unchanged
    assert summary("hold.decided", decided[0]).endswith("was cancelled")


def test_close_lets_queued_events_go_out_first() -> None:
    """A stop's `hold.decided` is queued just before the workers stop: close gives it a moment."""
    posted: list[str] = []

    async def scenario() -> None:
        async def address(host: str, port: int) -> str:
            return "127.0.0.1"

        n = Notifier(["https://a.example/x"], address, workers=1)

        async def post(url: str, body: dict[str, Any]) -> None:
            await asyncio.sleep(0.05)
            posted.append(body["event"])

        n._post = post  # type: ignore[method-assign]
        n.start()
        n.emit("hold.decided", "v", {"id": "1"})
        await asyncio.sleep(0)  # the emit lands (call_soon_threadsafe)
        await n.close()

    asyncio.run(scenario())
    assert posted == ["hold.decided"]


def test_the_give_up_warning_tells_two_urls_on_one_host_apart(caplog: pytest.LogCaptureFixture) -> None:
    async def refuse(host: str, port: int) -> str:
        raise OSError("blocked")

    urls = [
        "http://user:pw@127.0.0.1:9001/hooks/one?token=qsecret",
        "http://127.0.0.1:9002/hooks/two",
        "https://hooks.slack.com/services/T0123ABC/B0456DEF/abcdEFGH1234ijklMNOP5678",
    ]

    async def scenario() -> Notifier:
        n = Notifier(urls, refuse, workers=1, attempts=1, backoff=0)
        n.start()
        n.emit("hold.created", "v", {"id": "1"})
        for _ in range(300):
            if n.failed == 3:
                break
            await asyncio.sleep(0.01)
        await n.close()
        return n

    with caplog.at_level("WARNING", logger="agent_vault.notify"):
        assert asyncio.run(scenario()).failed == 3
    lines = sorted(r.getMessage() for r in caplog.records)
    assert lines == [
        "webhook to 127.0.0.1:9001/hooks/one failed after 1 attempts (OSError)",
        "webhook to 127.0.0.1:9002/hooks/two failed after 1 attempts (OSError)",
        "webhook to hooks.slack.com:443/services/*9bd3d8/*7465b1/*05952d failed after 1 attempts (OSError)",
    ]
    text = "\n".join(lines)
    assert "pw" not in text and "qsecret" not in text and "abcdEFGH" not in text
    assert describe_url("https://hooks.slack.com/services/T000/B000/not-a-real-secret").endswith("/*ed24bc")
