"""The only printer. Human output uses rich; --json prints the API's JSON unchanged.

Errors are one line on stderr starting `error: ` (or one JSON object with --json).
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Sequence
from typing import Any

from rich.console import Console
from rich.table import Table

from agent_vault.errors import AgentVaultError


class Out:
    json_mode = False
    quiet = False

    def __init__(self) -> None:
        no_color = bool(os.environ.get("NO_COLOR"))
        self.console = Console(no_color=no_color, highlight=False, soft_wrap=True)
        self.err_console = Console(stderr=True, no_color=no_color, highlight=False, soft_wrap=True)

    def data(self, obj: Any, human: str | None = None) -> None:
        """Print `obj` as JSON (--json) or the `human` text."""
        if self.json_mode or human is None:
            print(json.dumps(obj, indent=2, sort_keys=False, default=str))
        elif not self.quiet:
            self.console.print(human, markup=False)

    def table(
        self, obj: Any, rows: Sequence[dict[str, Any]], columns: Sequence[str], title: str | None = None
    ) -> None:
        if self.json_mode:
            print(json.dumps(obj, indent=2, default=str))
            return
        t = Table(title=title)
        for c in columns:
            t.add_column(c)
        for r in rows:
            t.add_row(*[_cell(r.get(c)) for c in columns])
        self.console.print(t)

    def line(self, text: str) -> None:
        """A plain stdout line (tokens, paths): printed even with --quiet."""
        print(text, flush=True)

    def info(self, text: str) -> None:
        if not self.quiet:
            self.err_console.print(text, markup=False)

    def warn(self, text: str) -> None:
        self.err_console.print(text, markup=False)

    def error(self, err: AgentVaultError | str) -> None:
        if isinstance(err, AgentVaultError):
            if self.json_mode:
                print(json.dumps(err.body()), file=sys.stderr)
                return
            msg = err.message + (f" ({err.hint})" if err.hint else "")
        else:
            msg = err
            if self.json_mode:
                print(json.dumps({"error": "error", "message": msg}), file=sys.stderr)
                return
        print(f"error: {msg}", file=sys.stderr)


def _cell(v: Any) -> str:
    if v is None:
        return "-"
    if isinstance(v, list):
        return ", ".join(
            _cell(x) if not isinstance(x, dict) else ":".join(str(y) for y in x.values()) for x in v
        )
    return str(v)


out = Out()
