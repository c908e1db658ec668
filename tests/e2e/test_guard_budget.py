"""LLM token budgets (issue #20), end to end: a local HTTPS "LLM" answers OpenAI-style JSON, an
OpenAI SSE stream with a final usage chunk, and an Anthropic SSE stream (message_start +
message_delta); the proxy counts usage as the events pass (the stream is not held back), answers
429 `budget_exceeded` once the budget is spent, shows usage in discover and /metrics, and still
refuses after a restart (usage persisted)."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator, Iterator

import httpx
import pytest
import trustme
from helpers.server import ServerProc
from helpers.upstream import TLSUpstream, UpstreamRequest, UpstreamResponse

SECRET = "sk-llm-budget-secret-77"


def _sse(events: list[dict[str, object]], delay: float) -> AsyncIterator[bytes]:
    async def gen() -> AsyncIterator[bytes]:
        for i, ev in enumerate(events):
            if i:
                await asyncio.sleep(delay)
            yield f"event: {ev.get('type', 'message')}\ndata: {json.dumps(ev)}\n\n".encode()
        yield b"data: [DONE]\n\n"

    return gen()


class LLMUpstream(TLSUpstream):
    async def handle(self, req: UpstreamRequest) -> UpstreamResponse:
        sse = [("Content-Type", "text/event-stream")]
        if req.path == "/v1/chat/completions" and "stream" not in req.query:
            body = {"id": "c1", "choices": [{"message": {"content": "hi"}}], "usage": {"total_tokens": 40}}
            return UpstreamResponse(200, [("Content-Type", "application/json")], json.dumps(body).encode())
        if req.path == "/v1/chat/completions":
            chunks: list[dict[str, object]] = [
                {"choices": [{"delta": {"content": "a"}}], "usage": None},
                {"choices": [{"delta": {"content": "b"}}], "usage": None},
                {"choices": [], "usage": {"prompt_tokens": 10, "completion_tokens": 20, "total_tokens": 30}},
            ]
            return UpstreamResponse(200, sse, _sse(chunks, 0.6))
        if req.path == "/v1/messages":
            events: list[dict[str, object]] = [
                {"type": "message_start", "message": {"usage": {"input_tokens": 10, "output_tokens": 1}}},
                {"type": "content_block_delta", "delta": {"text": "x" * 70_000}},  # a long line
                {"type": "message_delta", "usage": {"output_tokens": 12}},
                {"type": "message_delta", "usage": {"output_tokens": 25}},
                {"type": "message_stop"},
            ]
            return UpstreamResponse(200, sse, _sse(events, 0.05))
        return await super().handle(req)


@pytest.fixture(scope="module")
def up(upstream_ca: trustme.CA) -> Iterator[LLMUpstream]:
    with LLMUpstream(ca=upstream_ca) as u:
        yield u


@pytest.fixture(scope="module")
def srv(
    tmp_path_factory: pytest.TempPathFactory, upstream_ca: trustme.CA, up: LLMUpstream
) -> Iterator[ServerProc]:
    with ServerProc(tmp_path_factory.mktemp("budget"), upstream_ca) as s:
        s.set_credential("LLM_KEY", SECRET)
        s.add_service(
            {
                "name": "llm",
                "host": "localhost",
                "port": up.port,
                "auth": {"type": "bearer", "token": "LLM_KEY"},
                "token_budget": "100/day",
            }
        )
        yield s


def _client(srv: ServerProc, token: str) -> httpx.Client:
    return httpx.Client(proxy=srv.proxy_url(token), verify=str(srv.ca_bundle), trust_env=False, timeout=15)


def _used(srv: ServerProc, token: str) -> dict[str, object]:
    d = httpx.get(srv.api + "/v1/discover", headers={"Authorization": f"Bearer {token}"}, trust_env=False)
    return next(s for s in d.json()["services"] if s["name"] == "llm")


def test_usage_is_counted_from_json_and_streams_then_the_budget_refuses(
    srv: ServerProc, up: LLMUpstream
) -> None:
    token = srv.make_agent("llm-bot")
    base = f"https://localhost:{up.port}"
    with _client(srv, token) as c:
        assert c.post(base + "/v1/chat/completions", json={}).json()["usage"]["total_tokens"] == 40
        assert _used(srv, token)["tokens_used"] == 40
        started = time.monotonic()
        with c.stream("POST", base + "/v1/chat/completions?stream=1", json={}) as r:
            lines = r.iter_lines()
            first = next(ln for ln in lines if ln.startswith("data:"))
            first_at = time.monotonic() - started
            rest = [ln for ln in lines if ln.startswith("data:")]
        assert '"content": "a"' in first and first_at < 1.0  # events pass as sent, not buffered
        assert rest[-1] == "data: [DONE]"
        assert _used(srv, token)["tokens_used"] == 70
        with c.stream("POST", base + "/v1/messages", json={}) as r:
            body = b"".join(r.iter_bytes())
        assert body.count(b"message_delta") == 4 and b"x" * 70_000 in body  # event + data lines
        svc = _used(srv, token)
        assert (
            svc["tokens_used"] == 105
            and svc["tokens_used_by_you"] == 105
            and svc["token_budget"] == "100/day"
        )
        r2 = c.post(base + "/v1/chat/completions", json={})
    assert r2.status_code == 429, r2.text
    assert r2.json()["error"] == "budget_exceeded" and r2.json()["budget"] == "100/day"
    assert 1 <= int(r2.headers["retry-after"]) <= 86400
    text = httpx.get(srv.api + "/metrics", trust_env=False).text
    assert 'agent_vault_llm_tokens_total{agent="llm-bot",service="llm",vault="default"} 105.0' in text

    time.sleep(2.5)  # the flusher writes every 2 s; a clean stop flushes too
    assert srv.stop() == 0
    stored = (srv.home / "usage.json").read_text()
    assert SECRET not in stored and json.loads(stored)["usage"][0]["tokens"] == 105
    assert (srv.home / "usage.json").stat().st_mode & 0o777 == 0o600
    srv.start()
    with _client(srv, token) as c:
        again = c.post(base + "/v1/chat/completions", json={})
    assert again.status_code == 429 and again.json()["error"] == "budget_exceeded"
