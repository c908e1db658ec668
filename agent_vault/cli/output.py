"""The only printer. Human output uses rich; --json prints the API's JSON (same data, see below).

Errors are one line on stderr starting `error: ` (or one JSON object with --json).

Much of what the CLI shows was written by agents, which may be hostile: proposal messages and
descriptions, service definitions they proposed, session labels, request paths in audit records. None of
it may drive the terminal, so every method here makes its text *inert* on the way out (`inert`): C0
controls (ESC, BEL, CR, backspace, ...), DEL, C1 controls, lone surrogates and the Unicode bidi controls
(U+202A-202E, U+2066-2069, U+200E/200F, U+061C) and line separators are shown escaped (`\\x1b`,
`\\u202e`) and rich markup (`[bold]`, `[link=...]`) and emoji codes are never interpreted. Human text
keeps the CLI's own newlines; table cells and `inert(...)` (for agent fields embedded in multi-line text)
escape `\\n` and `\\t` too, so an agent cannot forge a line. JSON output stays valid JSON that decodes to
the same data: the same characters are written as `\\uXXXX` escapes (`inert_json`).
"""

from __future__ import annotations

import json
import os
import re
import sys
from collections.abc import Sequence
from functools import cached_property
from typing import TYPE_CHECKING, Any

from agent_vault.errors import AgentVaultError

if TYPE_CHECKING:
    from rich.console import Console

# What a terminal could act on: C0, DEL, C1, lone surrogates (unprintable: they would crash the print),
# bidi embeddings/overrides/isolates and marks, and the Unicode line/paragraph separators.
_CONTROL_CLASS = "\x00-\x1f\x7f-\x9f\ud800-\udfff\u061c\u200e\u200f\u2028\u2029\u202a-\u202e\u2066-\u2069"
_UNSAFE = re.compile(f"[{_CONTROL_CLASS}]")
_UNSAFE_KEEP_LINES = re.compile(f"(?![\\n\\t])[{_CONTROL_CLASS}]")
_UNSAFE_IN_JSON = re.compile(f"(?!\\n)[{_CONTROL_CLASS}]")
_NAMED = {"\n": "\\n", "\r": "\\r", "\t": "\\t"}


def _escape(m: re.Match[str]) -> str:
    c = m.group(0)
    if c in _NAMED:
        return _NAMED[c]
    code = ord(c)
    return f"\\x{code:02x}" if code <= 0xFF else f"\\u{code:04x}"


def inert(text: object, *, keep_lines: bool = False) -> str:
    """`text` safe to show on a terminal: every control, bidi or separator character escaped visibly.

    Use it on agent-written fields (messages, descriptions, paths, labels) before embedding them in a
    multi-line human text: newlines and tabs are escaped too unless `keep_lines` (the printer's own pass
    over whole texts, which keeps the CLI's line structure). Rich markup is not this function's concern:
    the printer never interprets markup."""
    pattern = _UNSAFE_KEEP_LINES if keep_lines else _UNSAFE
    return pattern.sub(_escape, str(text))


def inert_json(text: str) -> str:
    """JSON text from `json.dumps` made inert and still valid: the characters `inert` escapes become
    `\\uXXXX` escapes (json.dumps leaves DEL, C1, bidi controls and lone surrogates raw). A raw newline in
    json.dumps output is only ever indentation, so it stays."""
    return _UNSAFE_IN_JSON.sub(lambda m: f"\\u{ord(m.group(0)):04x}", text)


def json_text(
    obj: Any, *, indent: int | None = None, sort_keys: bool = False, ensure_ascii: bool = True
) -> str:
    """`obj` as inert JSON text (`ensure_ascii=False`: other non-ASCII text kept readable)."""
    text = json.dumps(obj, indent=indent, sort_keys=sort_keys, ensure_ascii=ensure_ascii, default=str)
    return inert_json(text)


class Out:
    json_mode = False
    quiet = False

    # The consoles (and rich) load on first use: the server process imports this module through the CLI
    # and prints nothing with it (idle RSS, SPEC §15).
    @cached_property
    def console(self) -> Console:
        return _console(stderr=False)

    @cached_property
    def err_console(self) -> Console:
        return _console(stderr=True)

    def data(self, obj: Any, human: str | None = None) -> None:
        """Print `obj` as JSON (--json) or the `human` text (made inert, its own newlines kept)."""
        if self.json_mode or human is None:
            print(json_text(obj, indent=2))
        elif not self.quiet:
            self.console.print(inert(human, keep_lines=True), markup=False)

    def fields(self, obj: dict[str, Any]) -> None:
        """`obj` as `key: value` lines in words (yes/no/none, lists joined), or as JSON with --json."""
        self.data(obj, "\n".join(f"{k.replace('_', ' ')}: {words(v)}" for k, v in obj.items()))

    def table(
        self, obj: Any, rows: Sequence[dict[str, Any]], columns: Sequence[str], title: str | None = None
    ) -> None:
        """`rows` as a table (each cell inert, newlines included; never markup), or `obj` as JSON."""
        if self.json_mode:
            print(json_text(obj, indent=2))
            return
        from rich.table import Table
        from rich.text import Text

        t = Table(title=Text(inert(title)) if title is not None else None)
        for c in columns:
            t.add_column(Text(inert(c)))
        for r in rows:
            t.add_row(*[Text(inert(_cell(r.get(c)))) for c in columns])
        if self.console.is_terminal:
            self.console.print(t)  # fitted to the terminal (long cells wrap)
            return
        # Piped or redirected: the reader is a program or a file, not a screen of COLUMNS (rich assumes
        # 80), so the table takes the width its cells need and never cuts a value (`has_va…`).
        from rich.measure import Measurement

        console = self.console
        need = Measurement.get(console, console.options.update_width(_PIPED_MAX_WIDTH), t).maximum
        _console(stderr=False, width=max(need, console.width)).print(t)

    def line(self, text: str) -> None:
        """A plain stdout line (tokens, paths): printed even with --quiet; inert, newlines kept."""
        print(inert(text, keep_lines=True), flush=True)

    def json_line(self, obj: Any, *, sort_keys: bool = False) -> None:
        """One JSON object on one line (JSON-lines output), inert and valid."""
        print(json_text(obj, sort_keys=sort_keys, ensure_ascii=False), flush=True)

    def secret(self, value: str) -> None:
        """A revealed credential value, byte-exact (piped into files and programs; escaping would
        corrupt it). Values are entered by humans only (agents name keys, never values). Shown once."""
        print(value, flush=True)

    def info(self, text: str) -> None:
        if not self.quiet:
            self.err_console.print(inert(text, keep_lines=True), markup=False)

    def warn(self, text: str) -> None:
        self.err_console.print(inert(text, keep_lines=True), markup=False)

    def error(self, err: AgentVaultError | str) -> None:
        if isinstance(err, AgentVaultError):
            if self.json_mode:
                print(json_text(err.body()), file=sys.stderr)
                return
            msg = err.message + (f" ({err.hint})" if err.hint else "")
        else:
            msg = err
            if self.json_mode:
                print(json_text({"error": "error", "message": msg}), file=sys.stderr)
                return
        print(f"error: {inert(msg)}", file=sys.stderr)


_PIPED_MAX_WIDTH = 1 << 16  # far beyond any real row; a bound for rich's measurement only


def _console(stderr: bool, width: int | None = None) -> Console:
    from rich.console import Console

    no_color = bool(os.environ.get("NO_COLOR"))  # read at first use: `--no-color` has set it by then
    kw: dict[str, Any] = {"no_color": no_color, "highlight": False, "soft_wrap": True, "emoji": False}
    return Console(stderr=stderr, markup=False, width=width, **kw)


def words(v: Any) -> str:
    """A value for human output: never Python's True/False/None."""
    if v is True:
        return "yes"
    if v is False:
        return "no"
    if v is None:
        return "none"
    if isinstance(v, list | tuple):
        return ", ".join(words(x) for x in v) or "none"
    if isinstance(v, dict):
        return ", ".join(f"{k} {words(x)}" for k, x in v.items()) or "none"
    return str(v)


def _cell(v: Any) -> str:
    if v is None:
        return "-"
    if isinstance(v, list):
        return ", ".join(
            _cell(x) if not isinstance(x, dict) else ":".join(str(y) for y in x.values()) for x in v
        )
    return str(v)


out = Out()
