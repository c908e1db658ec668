"""The audit log (SPEC §12): one append-only hash chain per instance, written by one thread.

Build records with `proxy_record` / `admin_record` (never values, tokens, passwords, query strings or
header values), hand them to `AuditWriter.submit` (never blocks), read them with `list_records`, and
check the chain with `verify_db`.
"""

from agent_vault.audit.chain import (
    DECISIONS,
    GAP_KIND,
    GENESIS,
    PROXY_KINDS,
    PRUNE_KIND,
    SUMMARY_KIND,
    UNENCODABLE,
    VerifyResult,
    admin_record,
    canonical,
    clean_record,
    clean_text,
    link_hash,
    proxy_record,
    refusal_summary,
    utc_ts,
    verify_chain,
)
from agent_vault.audit.query import latest_seq, list_records, proxy_counts, read_head, verify_db
from agent_vault.audit.retention import prune
from agent_vault.audit.writer import AuditWriter, write_head

__all__ = [
    "DECISIONS",
    "GAP_KIND",
    "GENESIS",
    "PROXY_KINDS",
    "PRUNE_KIND",
    "SUMMARY_KIND",
    "UNENCODABLE",
    "AuditWriter",
    "VerifyResult",
    "admin_record",
    "canonical",
    "clean_record",
    "clean_text",
    "latest_seq",
    "link_hash",
    "list_records",
    "proxy_counts",
    "proxy_record",
    "prune",
    "read_head",
    "refusal_summary",
    "utc_ts",
    "verify_chain",
    "verify_db",
    "write_head",
]
