"""Linking one record into the chain (SPEC §12): clean it, give it `seq` and `prev_hash`, hash it, and
build its row (the indexed columns + the canonical text). `audit.head` is the chain's last link."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from agent_vault.audit.chain import canonical, clean_record, index_columns, link_hash, unencodable_record
from agent_vault.home import write_private


def write_head(path: Path, seq: int, digest: str) -> None:
    """Atomically replace `audit.head` with {"seq", "hash"}; created 0600 (never chmod-ed later)."""
    write_private(path, f'{{"seq":{seq},"hash":"{digest}"}}\n')


def row_of(rec: Mapping[str, Any], text: str, digest: str) -> dict[str, Any]:
    ts, kind, actor, vault, decision, host, status = index_columns(rec)
    return {
        "seq": rec["seq"],
        "ts": ts,
        "kind": kind,
        "actor": actor,
        "vault": vault,
        "decision": decision,
        "host": host,
        "status": status,
        "record": text,
        "hash": digest,
    }


def link(rec: dict[str, Any], seq: int, prev: str) -> tuple[dict[str, Any], str, bool]:
    """Clean `rec` in place (`clean_record`; cleaning is idempotent, so relinking is safe), stamp it
    with its position and hash; returns (the DB row, the hash, whether a value had to be replaced).
    Total: a record that cannot be cleaned at all is replaced by `unencodable_record` in place."""
    try:
        clean, replaced = clean_record(rec)
        clean.pop("hash", None)
        clean["seq"], clean["prev_hash"] = seq, prev
        text = canonical(clean)
        digest = link_hash(prev, text)
    except Exception:  # e.g. RecursionError: keep the record's place, lose its contents
        clean, replaced = unencodable_record(rec), 1
        clean["seq"], clean["prev_hash"] = seq, prev
        text = canonical(clean)
        digest = link_hash(prev, text)
    clean["hash"] = digest
    rec.clear()
    rec.update(clean)
    return row_of(rec, text, digest), digest, replaced > 0
