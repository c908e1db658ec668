from __future__ import annotations

import pytest

from agent_vault.cli.durations import parse_duration
from agent_vault.errors import InvalidRequest


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        ("300", 300),
        ("0", 0),
        ("90s", 90),
        ("15m", 900),
        ("24h", 86400),
        ("7d", 604800),
        ("1h30m", 5400),
        (" 2H ", 7200),
    ],
)
def test_parse_duration(text: str, seconds: int) -> None:
    assert parse_duration(text) == seconds


@pytest.mark.parametrize("text", ["", "h", "-5", "5x", "1.5h", "15 m", "m15", "24h!", "1h 30m"])
def test_parse_duration_rejects(text: str) -> None:
    with pytest.raises(InvalidRequest, match="invalid duration"):
        parse_duration(text)
