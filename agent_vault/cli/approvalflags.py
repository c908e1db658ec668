"""The approval and limit flags of `vault service add|set`: `--approval-required` [`--approval-methods
M,..`] [`--approval-timeout 120s`] (issue 19) folded into the `approval` field, and `--quota N/PERIOD`,
`--token-budget N/PERIOD` (issue 20; `off` clears) into `quota` and `token_budget`."""

from __future__ import annotations

from typing import Any

from agent_vault.cli.durations import duration_param
from agent_vault.errors import InvalidRequest


def set_approval(d: dict[str, Any], required: bool | None, methods: str | None, timeout: str | None) -> None:
    """Issue 19 flags: `--approval-required` [`--approval-methods M,..`] [`--approval-timeout 120s`]."""
    if required is False:
        d["approval"] = None
        return
    if required is None and not d.get("approval") and (methods or timeout):
        raise InvalidRequest("--approval-methods and --approval-timeout need --approval-required")
    if required is None and not d.get("approval"):
        return
    spec = dict(d.get("approval") or {})
    if methods:
        spec["methods"] = [m.strip().upper() for m in methods.split(",") if m.strip()]
    if timeout:
        spec["timeout_seconds"] = duration_param(timeout, "--approval-timeout")
    d["approval"] = spec


def set_limits(d: dict[str, Any], quota: str | None, token_budget: str | None) -> None:
    """Issue 20 flags: `--quota N/min|hour|day` and `--token-budget N/day|month`; `off` removes one."""
    for k, v in (("quota", quota), ("token_budget", token_budget)):
        if v is not None:
            d[k] = None if v == "off" else v
