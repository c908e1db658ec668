"""The audit cannot be dodged: any byte string is recorded (escaped), never dropped; anonymous refusals
are summarised per window and cause (SPEC §12, issue 22).

Root cause covered here: mitmproxy decodes paths, methods and versions with "surrogateescape", so a
path byte that is not UTF-8 became a lone surrogate; `link_hash` (`str.encode()`) raised on it and the
writer dropped the record (an `audit.gap` instead of the request's record).
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import unquote_to_bytes

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from sqlalchemy import Engine

from agent_vault.audit import (
    SUMMARY_KIND,
    UNENCODABLE,
    AuditWriter,
    canonical,
    clean_record,
    clean_text,
    link_hash,
    list_records,
    proxy_record,
    verify_db,
)
from agent_vault.store import Store


@pytest.fixture
def engine(db_url: str) -> Iterator[Engine]:
    """A migrated store on each backend (tests/conftest.py `db_url`)."""
    store = Store(db_url)
    yield store.engine
    store.close()


@pytest.fixture
def head(tmp_path: Path) -> Path:
    return tmp_path / "audit.head"


def wire(raw: bytes) -> str:
    """What mitmproxy hands the addon for a raw path/method (`Request.path`)."""
    return raw.decode("utf-8", "surrogateescape")


def req(path: str, method: str = "GET", host: str = "api.example.com") -> dict[str, Any]:
    return proxy_record(
        actor="agent:a",
        vault="v",
        decision="injected",
        scheme="https",
        host=host,
        port=443,
        method=method,
        path=path,
        http_version=wire(b"HTTP/1.1"),
    )


# -- clean_text ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("raw", "url", "want"),
    [
        (b"/ok/caf\xc3\xa9", True, "/ok/caf\u00e9"),  # valid UTF-8 text is kept
        (b"/a/\xff\xfe", True, "/a/%FF%FE"),
        (b"/a/\x80", True, "/a/%80"),
        (b"/a/\xc0\xaf", True, "/a/%C0%AF"),  # overlong "/"
        (b"/a/\xed\xa0\x80", True, "/a/%ED%A0%80"),  # a UTF-16 surrogate in UTF-8
        (b"/a/b\x00c\r\nd", True, "/a/b%00c%0D%0Ad"),
        (b"/a/\x1b[31m\xe2\x80\xae", True, "/a/%1B[31m%E2%80%AE"),  # ESC and a bidi override
        (b"G\xffT", False, "G\\xFFT"),
        (b"host\x00.evil", False, "host\\x00.evil"),
    ],
)
def test_clean_text_escapes_odd_bytes_and_keeps_text(raw: bytes, url: bool, want: str) -> None:
    got = clean_text(wire(raw), url=url)
    assert got == want
    assert got.encode("utf-8") and got.isprintable() and clean_text(got, url=url) == got


def test_clean_text_escapes_lone_surrogates_from_json() -> None:
    assert clean_text("x\ud800y") == "x\\xED\\xA0\\x80y"
    assert clean_text("\udcff", url=True) == "%FF"


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=64))
def test_any_bytes_become_printable_utf8_that_maps_back(raw: bytes) -> None:
    got = clean_text(wire(raw), url=True)
    got.encode("utf-8")  # strict
    assert got.isprintable() or got == ""
    if b"%" not in raw:  # the path's own escapes aside, the original bytes are recoverable
        assert unquote_to_bytes(got) == raw
    assert clean_text(got, url=True) == got


@settings(max_examples=200, deadline=None)
@given(st.text(max_size=40), st.binary(max_size=40))
def test_any_record_can_be_canonicalised_and_hashed(text: str, raw: bytes) -> None:
    rec = req(wire(raw), method=text, host=text + wire(raw))
    rec["details"] = {text: [text, wire(raw)], wire(raw): {"n": 1}}
    clean, replaced = clean_record(rec)
    assert replaced == 0
    link_hash("0" * 64, canonical(clean))  # never raises
    assert json.loads(canonical(clean)) == clean


def _reference_clean_record(record: dict[Any, Any]) -> tuple[dict[str, Any], int]:
    """`clean_record` field by field, without its fast lane for plain fields (the contract)."""
    from agent_vault.audit.clean import _clean

    replaced = [0]
    out: dict[str, Any] = {}
    for k, v in record.items():
        if not isinstance(k, str):
            replaced[0] += 1
            continue
        key = k if type(k) is str and k.isprintable() else clean_text(str(k))
        out[key] = _clean(v, k == "path", replaced)
    return out, replaced[0]


class _Str(str):
    """A str subclass: never on the fast lane (its key is rebuilt as plain text)."""


_values = st.one_of(
    st.text(max_size=12),
    st.binary(max_size=12).map(wire),
    st.integers(),
    st.booleans(),
    st.none(),
    st.floats(allow_nan=True, allow_infinity=True),
    st.lists(st.text(max_size=4), max_size=3),
    st.dictionaries(st.text(max_size=4), st.integers(), max_size=2),
    st.builds(_Str, st.text(max_size=6)),
)
_keys = st.one_of(
    st.sampled_from(["path", "method", "host", "status"]),
    st.text(max_size=8),
    st.binary(max_size=6).map(wire),
    st.integers(),
    st.builds(_Str, st.sampled_from(["path", "x"])),
)


@settings(max_examples=400, deadline=None)
@given(st.dictionaries(_keys, _values, max_size=8))
def test_clean_record_fast_lane_changes_nothing(record: dict[Any, Any]) -> None:
    got, want = clean_record(record), _reference_clean_record(record)
    assert got == want and list(got[0]) == list(want[0])  # same fields, same order, same count replaced
    assert [type(v) for v in got[0].values()] == [type(v) for v in want[0].values()]  # True is not 1


def test_clean_record_replaces_what_json_cannot_hold() -> None:
    rec: dict[Any, Any] = {
        "kind": "x",
        "nan": float("nan"),
        "inf": float("inf"),
        "obj": object(),
        "nested": {"ok": [1, 2.5, True, None, ("t",)], 3: "int key", (1, 2): "tuple key"},
        "set": {"a"},
    }
    clean, replaced = clean_record(rec)
    assert replaced == 4
    assert clean["nan"] == clean["inf"] == clean["obj"] == UNENCODABLE
    assert clean["nested"]["ok"] == [1, 2.5, True, None, ["t"]] and clean["nested"]["3"] == "int key"
    assert clean["set"] == ["a"]
    canonical(clean)


# -- the writer never drops a record for its contents -------------------------------------------------


def test_odd_bytes_are_committed_escaped_never_dropped(engine: Engine, head: Path) -> None:
    """On the old code each of these became an audit.gap (UnicodeEncodeError in link_hash)."""
    writer = AuditWriter(engine, head)
    writer.start()
    paths = [b"/a/\xff\xfe", b"/a/\x80?q=\xff", b"/a/\xc0\xaf", b"/a/\x00", b"/a/\xed\xa0\x80"]
    for raw in paths:
        assert writer.submit(req(wire(raw), method=wire(b"G\xffT"), host=wire(b"h\xfe")))
    writer.flush()
    writer.close()
    rows = list_records(engine)
    assert [r["path"] for r in rows] == ["/a/%FF%FE", "/a/%80", "/a/%C0%AF", "/a/%00", "/a/%ED%A0%80"]
    assert {r["method"] for r in rows} == {"G\\xFFT"} and {r["host"] for r in rows} == {"h\\xFE"}
    assert writer.dropped_total == 0 and not [r for r in rows if r["kind"] == "audit.gap"]
    assert verify_db(engine, head).ok


def test_a_record_that_cannot_be_cleaned_is_kept_as_a_marker(engine: Engine, head: Path) -> None:
    deep: dict[str, Any] = {}
    node = deep
    for _ in range(5000):  # deeper than the recursion limit
        node["d"] = {}
        node = node["d"]
    writer = AuditWriter(engine, head)
    writer.start()
    assert writer.submit({"kind": "credential.set", "actor": "user:x", "details": deep})
    writer.flush()
    writer.close()
    (row,) = list_records(engine)
    assert row["kind"] == "credential.set" and row["unencodable"] is True
    assert row["actor"] == row["details"] == UNENCODABLE
    assert writer.dropped_total == 1 and verify_db(engine, head).ok


# -- anonymous refusals are summarised ----------------------------------------------------------------


def refuse(writer: AuditWriter, n: int, *, error: str = "proxy_auth_required", status: int = 407) -> None:
    for i in range(n):
        writer.tally(
            decision="denied",
            status=status,
            error=error,
            method="CONNECT" if i % 2 else f"M{i % 20}",
            host=f"h{i % 9}.example" if i % 3 else wire(b"odd\xff"),
            client=f"10.0.0.{i % 7}",
        )


def test_refusals_become_one_summary_per_cause(engine: Engine, head: Path) -> None:
    writer = AuditWriter(engine, head)
    writer.start()
    refuse(writer, 1000)
    refuse(writer, 30, error="rate_limited", status=429)
    writer.flush()
    writer.close()
    rows = list_records(engine)
    assert len(rows) == 2 and {r["kind"] for r in rows} == {SUMMARY_KIND}
    by = {r["error"]: r for r in rows}
    auth = by["proxy_auth_required"]
    assert auth["count"] == 1000 and auth["status"] == 407 and auth["actor"] == "anonymous"
    assert auth["decision"] == "denied" and auth["first_ts"] <= auth["last_ts"]
    assert len(auth["clients"]) == 5 and len(auth["hosts"]) == 5 and "odd\\xFF" in auth["hosts"]
    assert sum(auth["methods"].values()) == 1000 and len(auth["methods"]) <= 9
    assert auth["methods"]["CONNECT"] == 500 and "other" in auth["methods"]
    assert by["rate_limited"]["count"] == 30
    assert verify_db(engine, head).ok


def test_a_summary_is_written_when_its_window_ends(engine: Engine, head: Path) -> None:
    writer = AuditWriter(engine, head, summary_window=0.3)
    writer.start()
    refuse(writer, 10)
    deadline = time.monotonic() + 5
    while not list_records(engine):  # no flush: the writer's own timer
        assert time.monotonic() < deadline
        time.sleep(0.05)
    refuse(writer, 5)  # a new window
    writer.close()  # closes the open window
    assert [r["count"] for r in list_records(engine)] == [10, 5]
    assert verify_db(engine, head).ok


def test_summaries_cannot_be_submitted_and_late_refusals_are_counted(engine: Engine, head: Path) -> None:
    writer = AuditWriter(engine, head)
    with pytest.raises(ValueError):
        writer.submit({"kind": SUMMARY_KIND})
    writer.start()
    writer.close()
    refuse(writer, 1)
    assert writer.dropped_total == 1
