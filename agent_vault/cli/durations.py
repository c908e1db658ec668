"""Durations on the command line (SPEC §10): `300`, `90s`, `15m`, `24h`, `7d` (and sums such as `1h30m`)."""

from __future__ import annotations

import re

import typer

from agent_vault.errors import InvalidRequest

_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}
_PART = re.compile(r"([0-9]+)([smhd])")
_MAX_LEN = 64  # far beyond any real duration; keeps int() off huge digit strings


def parse_duration(text: str) -> int:
    """Seconds for a duration; a bare number is seconds. Raises InvalidRequest on anything else."""
    s = text.strip().lower()
    if len(s) > _MAX_LEN or not s.isascii():  # ASCII digits only: '²'.isdigit() but int('²') fails
        s = ""
    if s.isdigit():
        return int(s)
    pos, total = 0, 0
    for m in _PART.finditer(s):
        if m.start() != pos:
            break
        total += int(m.group(1)) * _UNITS[m.group(2)]
        pos = m.end()
    if not s or pos != len(s):
        raise InvalidRequest("invalid duration", hint="Use 300, 90s, 15m, 24h or 7d.")  # never the input
    return total


def duration_param(text: str | None, flag: str) -> int | None:
    """parse_duration for a Typer option: a bad value is a usage error (exit 2)."""
    if text is None:
        return None
    try:
        return parse_duration(text)
    except InvalidRequest as e:
        raise typer.BadParameter(f"{e.message} ({e.hint})", param_hint=flag) from None


def format_duration(seconds: float) -> str:
    """A duration as the CLI accepts it back: `300.0` -> `5m`, `5400` -> `1h30m`, `90` -> `1m30s`,
    `0.5` -> `0.5s`. Whole seconds only are split into units."""
    if seconds != int(seconds) or seconds <= 0:
        return f"{seconds:g}s"
    rest, parts = int(seconds), []
    for unit in ("d", "h", "m", "s"):
        n, rest = divmod(rest, _UNITS[unit])
        if n:
            parts.append(f"{n}{unit}")
    return "".join(parts)
