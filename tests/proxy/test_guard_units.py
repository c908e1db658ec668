"""Pure parts of the guardrails (issue #20): the exfiltration matcher and its encoded forms, the
streamed-upload scanner across every chunk boundary, usage parsing of OpenAI/Anthropic bodies and
streams however they are chunked, quota windows and budget windows."""

from __future__ import annotations

import base64
import json
import re
from pathlib import Path
from urllib.parse import quote, quote_plus

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from agent_vault.proxy.exfil import UploadScanner, build_matcher, encoded_forms
from agent_vault.quota import QuotaCounter, parse_quota
from agent_vault.usage import UsageMeter, UsageParser, parse_budget

SECRET = 'ghp_Abc/123+x"y\\z=='
VALUES = {"GH_TOKEN": SECRET, "SHORT": "abc"}


def _carriers() -> list[bytes]:
    raw = SECRET.encode()
    return [
        b"Authorization: token " + raw,
        quote(SECRET, safe="").encode(),
        quote_plus(SECRET).encode(),
        re.sub("%[0-9A-F]{2}", lambda m: m.group(0).lower(), quote(SECRET, safe="")).encode(),
        json.dumps({"t": SECRET}).encode(),
        base64.b64encode(b"user:" + raw),
        base64.b64encode(b"us:" + raw),
        base64.b64encode(b"u:" + raw),
        base64.urlsafe_b64encode(b"u:" + raw),
        b"x={{GH_TOKEN}}",
        b"x=%7B%7B%20GH_TOKEN%20%7D%7D",
    ]


@pytest.mark.parametrize("carrier", _carriers())
def test_every_form_is_found_and_named(carrier: bytes) -> None:
    m = build_matcher(VALUES, VALUES)
    found = m.scan(b"prefix " + carrier + b" suffix", frozenset())
    assert found is not None and found.key == "GH_TOKEN"
    assert m.scan(b"prefix " + carrier + b" suffix", frozenset({"GH_TOKEN"})) is None  # allowed there


def test_short_values_and_ordinary_text_are_not_needles() -> None:
    m = build_matcher(VALUES, ())
    assert all(len(f) >= 8 for f in encoded_forms(SECRET))
    assert m.scan(b"abc abc abc", frozenset()) is None
    assert "abc" not in repr(m) and SECRET not in repr(m)


def test_canary_prefix_is_found_in_any_encoding_and_names_its_key() -> None:
    m = build_matcher({}, ())
    v = b"av-canary-STRIPE_KEY-q1w2e3r4t5y6"
    found = m.scan(b"k=" + v, frozenset({"STRIPE_KEY"}))
    assert found is not None and found.kind == "canary" and found.key == "STRIPE_KEY"
    for k in range(3):
        enc = base64.b64encode(b"\0" * k + v)
        f = m.scan(enc, frozenset())
        assert f is not None and f.kind == "canary"


@settings(max_examples=150, deadline=None)
@given(st.lists(st.integers(min_value=0, max_value=80), min_size=1, max_size=6), st.integers(0, 40))
def test_upload_scanner_never_releases_a_byte_of_a_split_value(cuts: list[int], pad: int) -> None:
    raw = SECRET.encode()
    body = b"z" * pad + raw + b"tail"
    points = sorted({min(c, len(body)) for c in cuts})
    chunks = [body[a:b] for a, b in zip([0, *points], [*points, len(body)], strict=True) if b > a]
    scanner = UploadScanner(build_matcher(VALUES, VALUES), frozenset())
    released = b""
    for c in chunks:
        released += scanner.feed(c)
        if scanner.finding is not None:
            break
    else:
        released += scanner.finish()
    assert scanner.finding is not None and scanner.finding.key == "GH_TOKEN"
    assert raw not in released
    assert len(released) <= pad  # nothing from the value's first byte on


def test_upload_scanner_passes_clean_bodies_whole() -> None:
    scanner = UploadScanner(build_matcher(VALUES, VALUES), frozenset())
    body = bytes(range(256)) * 300
    out = b"".join(scanner.feed(body[i : i + 1000]) for i in range(0, len(body), 1000)) + scanner.finish()
    assert out == body and scanner.finding is None


def _sse(events: list[dict[str, object]]) -> bytes:
    return (
        b"".join(b"event: x\r\ndata: " + json.dumps(e).encode() + b"\r\n\r\n" for e in events)
        + b"data: [DONE]\n\n"
    )


OPENAI_STREAM = _sse(
    [
        {"choices": [{"delta": {"content": "hi"}}], "usage": None},
        {"choices": [], "usage": {"total_tokens": 33}},
    ]
)
ANTHROPIC_STREAM = _sse(
    [
        {"type": "message_start", "message": {"usage": {"input_tokens": 12, "output_tokens": 1}}},
        {"type": "content_block_delta", "delta": {"text": "y" * 100_000}},
        {"type": "message_delta", "usage": {"output_tokens": 7}},
        {"type": "message_delta", "usage": {"output_tokens": 30}},
    ]
)


@settings(max_examples=60, deadline=None)
@given(st.integers(min_value=1, max_value=5000))
def test_stream_usage_is_the_same_however_it_is_chunked(size: int) -> None:
    for body, total in ((OPENAI_STREAM, 33), (ANTHROPIC_STREAM, 42)):
        p = UsageParser(sse=True)
        seen = sum(p.feed(body[i : i + size]) for i in range(0, len(body), size)) + p.feed(b"")
        assert seen == total


def test_json_bodies_and_garbage() -> None:
    p = UsageParser(sse=False)
    assert p.feed(json.dumps({"usage": {"input_tokens": 5, "output_tokens": 6}}).encode()) == 0
    assert p.feed(b"") == 11
    q = UsageParser(sse=False)
    assert q.feed(b"not json") + q.feed(b"") == 0
    r = UsageParser(sse=True)
    assert r.feed(b'data: {"usage": {"total_tokens": -5}}\n' + b"data: " + b"x" * 200_000 + b"\n") == 0


def test_quota_windows_and_parsing() -> None:
    rate = parse_quota(" 2 / Minute ")
    assert str(rate) == "2/min"
    q = QuotaCounter()
    key = ("v", "svc", "agent:1")
    assert q.take(key, rate, now=60.0) is None and q.take(key, rate, now=61.0) is None
    assert q.take(key, rate, now=119.5) == pytest.approx(0.5)
    assert q.used(key, rate, now=119.5) == 2
    assert q.take(key, rate, now=120.0) is None  # the next window
    with pytest.raises(ValueError, match="N/min, N/hour or N/day"):
        parse_quota("5/week")


def test_budget_windows_and_persistence(tmp_path: Path) -> None:
    path = tmp_path / "usage.json"
    b = parse_budget("1000/Month")
    assert str(b) == "1000/month" and b.seconds_left(0.0) == 31 * 86400
    m = UsageMeter(path)
    m.add("v", "llm", "bot", b, 40)
    m.add("v", "llm", "other", b, 2)
    m.flush()
    again = UsageMeter(path)
    assert again.used("v", "llm", b) == 42 and again.used("v", "llm", b, agent="bot") == 40
    assert path.stat().st_mode & 0o777 == 0o600
    with pytest.raises(ValueError, match="N/day or N/month"):
        parse_budget("10/year")
