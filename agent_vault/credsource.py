"""Dynamic credential sources (issue #16): a value printed by a command or read from a file.

Pure: the spec, its validation, TTL parsing and its sealed form. No ORM, no mitmproxy; the proxy's
`proxy.sources.SourceResolver` runs them, `domain.credentials` stores them.

Dangers: the command string is configuration that may itself hold a secret (a token on a command
line), so it is stored sealed under the DEK like a value, shown to instance owners only and never
to agents (discover, proposals). The value a source yields is never stored, logged or audited.
"""

from __future__ import annotations

import json
import re
import shlex
from dataclasses import dataclass
from typing import Any, Literal

from agent_vault import crypto
from agent_vault.errors import InvalidRequest

SOURCE_KINDS = ("static", "command", "file")
MAX_OUTPUT = 64 * 1024  # bytes read from a command or a file; more is an error, never truncated
DEFAULT_COMMAND_TTL = 300.0
DEFAULT_TIMEOUT = 10.0
MAX_TIMEOUT = 120.0
MIN_TTL, MAX_TTL = 1.0, 7 * 86400.0
_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h|d)?\s*$")
_UNIT = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0, None: 1.0}


def parse_duration(text: str | float | int, what: str = "ttl") -> float:
    """`30`, `30s`, `5m`, `1h`, `1d` (or a number of seconds) -> seconds. InvalidRequest otherwise."""
    bad = InvalidRequest(f"{what} is not a duration", hint="Use e.g. 30s, 5m, 1h or 1d.")  # never the input
    if isinstance(text, int | float) and not isinstance(text, bool):
        try:
            return float(text)
        except OverflowError:  # a JSON integer too large for a float
            raise bad from None
    if not isinstance(text, str) or len(text) > 64:
        raise bad
    m = _DURATION.match(text)
    if m is None:
        raise bad
    return float(m.group(1)) * _UNIT[m.group(2)]


@dataclass(frozen=True, slots=True)
class SourceSpec:
    """Where a dynamic value comes from. `command` runs without a shell (shlex-split) unless `shell`.

    `ttl` (seconds): how long a value is served from memory before the source is asked again; for a
    file, None means "until the file changes" (checked at most once a second).
    """

    kind: Literal["command", "file"]
    command: str | None = None
    shell: bool = False
    path: str | None = None
    ttl: float | None = None
    timeout: float = DEFAULT_TIMEOUT

    def __repr__(self) -> str:  # the command may embed a secret
        return f"SourceSpec({self.kind}, ttl={self.ttl})"

    def argv(self) -> list[str]:
        assert self.command is not None
        return ["/bin/sh", "-c", self.command] if self.shell else shlex.split(self.command)

    def public(self, *, owner: bool) -> dict[str, Any]:
        """What `credential list` shows: kind and ttl to everyone, the command/path to owners only."""
        out: dict[str, Any] = {"kind": self.kind, "ttl": self.ttl}
        if owner:
            out.update(
                {"command": self.command, "shell": self.shell}
                if self.kind == "command"
                else {"path": self.path}
            )
        return out

    def to_json(self) -> bytes:
        return json.dumps(
            {
                "kind": self.kind,
                "command": self.command,
                "shell": self.shell,
                "path": self.path,
                "ttl": self.ttl,
                "timeout": self.timeout,
            },
            sort_keys=True,
        ).encode()


def make_spec(data: dict[str, Any]) -> SourceSpec:
    """Validate an API `source` object. InvalidRequest (naming the field, never the command)."""
    allowed = {"kind", "command", "shell", "path", "ttl", "timeout"}
    extra = set(data) - allowed
    if extra:
        raise InvalidRequest(f"unknown source fields: {', '.join(sorted(extra))}")
    kind = data.get("kind")
    ttl_raw = data.get("ttl")
    ttl = None if ttl_raw is None else parse_duration(ttl_raw)
    if ttl is not None and not MIN_TTL <= ttl <= MAX_TTL:
        raise InvalidRequest("ttl must be between 1s and 7d")
    timeout = parse_duration(data.get("timeout", DEFAULT_TIMEOUT), "timeout")
    if not 0.1 <= timeout <= MAX_TIMEOUT:
        raise InvalidRequest(f"timeout must be between 0.1s and {MAX_TIMEOUT:.0f}s")
    if kind == "command":
        command, shell = data.get("command"), data.get("shell", False)
        if not isinstance(command, str) or not command.strip() or len(command) > 4096:
            raise InvalidRequest("a command source needs a non-empty command (at most 4096 characters)")
        if not isinstance(shell, bool) or "path" in data:
            raise InvalidRequest("a command source takes command, shell, ttl and timeout")
        if "\x00" in command:
            raise InvalidRequest("the command contains a NUL byte")
        spec = SourceSpec(
            "command", command=command, shell=shell, ttl=ttl or DEFAULT_COMMAND_TTL, timeout=timeout
        )
        if not shell:
            try:
                argv = spec.argv()
            except ValueError:
                raise InvalidRequest("the command does not parse (unbalanced quotes)") from None
            if not argv:
                raise InvalidRequest("the command is empty")
        return spec
    if kind == "file":
        path = data.get("path")
        if not isinstance(path, str) or not path.startswith("/") or "\x00" in path or len(path) > 4096:
            raise InvalidRequest("a file source needs an absolute path")
        if "command" in data or data.get("shell"):
            raise InvalidRequest("a file source takes path and ttl")
        return SourceSpec("file", path=path, ttl=ttl, timeout=timeout)
    raise InvalidRequest("source kind must be command or file")


def source_aad(vault_id: int, key: str, key_version: int) -> bytes:
    return crypto.aad_for("credential-source", str(vault_id), key, str(key_version))


def seal_spec(dek: bytes, spec: SourceSpec, vault_id: int, key: str, key_version: int) -> bytes:
    return crypto.seal(dek, spec.to_json(), source_aad(vault_id, key, key_version))


def open_spec(dek: bytes, sealed: bytes, vault_id: int, key: str, key_version: int) -> SourceSpec:
    """Raises crypto.DecryptionError (tampered or moved row) or ValueError (bad JSON)."""
    d = json.loads(crypto.open_sealed(dek, sealed, source_aad(vault_id, key, key_version)))
    return SourceSpec(
        d["kind"],
        command=d.get("command"),
        shell=bool(d.get("shell")),
        path=d.get("path"),
        ttl=d.get("ttl"),
        timeout=float(d.get("timeout", DEFAULT_TIMEOUT)),
    )
