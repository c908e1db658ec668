"""Secrets never come from argv (SPEC §10 rules, §14.11): every option and argument of the real tree.

The whole click tree (hidden commands and options included) is walked. A parameter whose name, flags or
metavar suggest a secret (password, secret, token, value, key, credential, cookie, invite, a database
or webhook URL) must be one of the safe forms:

* a flag (it carries no text): `--password-stdin`, `--stdin`, `--reveal`, ...;
* a pointer to where the secret is: `--from-env VAR`, `--from-file PATH`, `--value-from-env KEY=VAR`, ...;
* the NAME of a credential key, metavar `KEY`: `KEY`, `--token-key KEY`, `--canary KEY`, ...;
* or an entry below, each with its reason. `NOT_SECRET` are names that only look like secrets;
  `ON_ARGV` are (command, parameter) pairs that CAN carry a secret on argv today (reported: URLs that
  may embed a password, and the invite token SPEC §10 puts there): adding one needs a reason good enough
  to write down. An entry no parameter uses any more fails the test too.

`test_the_classifier_catches_secret_options` runs the same check on a small CLI with the mistakes it
must catch, so a green run of the real tree means something.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from typing import Annotated, Any

import typer

from agent_vault.cli import build_command

SECRETISH = re.compile(
    r"pass(word|wd|phrase)?|secret|token|value|key|credential|private|cookie|bearer|invite|database|dsn"
    r"|webhook|notify",
    re.IGNORECASE,
)
POINTERS = {"VAR", "PATH", "KEY=VAR", "KEY=PATH"}  # the metavar of a pointer to the secret

NOT_SECRET = {  # looks like a secret by name, is not one
    "key_mode": "a key mode: password, keyring or passwordless",
    "api_key_header": "the NAME of the header the key goes in",
    "api_key_query": "the NAME of the query parameter the key goes in",
    "api_key_prefix": "the text before the key (`Bearer `); the key itself is named by --api-key-key",
    "token_url": "the (public) URL of an OAuth token endpoint",
    "token_auth": "how a client authenticates at the token endpoint: a method name",
    "token_budget": "an LLM token budget, N/PERIOD",
    "subject_token_type": "an RFC 8693 token type URN",
}
# (command, parameter, reason): CAN carry a secret on argv today (see the report); allowed for the reason only
_ON_ARGV = [
    ("user accept", "invite_ref", "SPEC §10 `user accept URL_OR_TOKEN`; optional: prompt or --invite-stdin"),
    ("init", "database_url", "SPEC §2.1 `--database-url`; a postgresql:// URL may embed a password"),
    ("server", "database_url", "SPEC §2.1; the help says to prefer DATABASE_URL for a password"),
    ("migrate-db", "to", "a postgresql:// URL; the help's example has no password, none is refused"),
    ("server", "notify_url", "webhook URLs embed a secret: the help says to prefer AGENT_VAULT_NOTIFY_URL"),
]
ON_ARGV = {(where, name): reason for where, name, reason in _ON_ARGV}


def _params(cmd: Any, path: tuple[str, ...] = ()) -> Iterator[tuple[str, Any]]:
    """(command path, parameter) of every parameter of `cmd` and every subcommand, hidden ones too."""
    for p in cmd.params:
        yield " ".join(path) or "agent-vault", p
    for name, sub in sorted(getattr(cmd, "commands", {}).items()):
        yield from _params(sub, (*path, name))


def _label(p: Any) -> str:
    return "/".join([*p.opts, *p.secondary_opts]) + (f" {p.metavar}" if p.metavar else "")


def _looks_secret(p: Any) -> bool:
    help_text = getattr(p, "help", None) or ""
    words = " ".join([p.name or "", *p.opts, *p.secondary_opts, p.metavar or ""])
    return bool(SECRETISH.search(words)) or "postgresql://" in help_text


def _safe_form(p: Any) -> bool:
    name, metavar = p.name or "", p.metavar or ""
    if getattr(p, "is_flag", False) or getattr(p, "count", False):
        return True  # carries no text
    if name.endswith("_stdin") or (name.startswith(("from_", "value_from_")) and metavar in POINTERS):
        return True
    return (
        metavar == "KEY"
    )  # the help asks for the NAME of a credential key (`--token-key KEY`, `--canary KEY`)


def problems(root: Any) -> tuple[list[str], set[object]]:
    """Parameters that could take a secret from argv; and the allow-list entries that were used."""
    found: list[str] = []
    used: set[object] = set()
    for where, p in _params(root):
        if not _looks_secret(p) or _safe_form(p):
            continue
        entry = p.name if p.name in NOT_SECRET else (where, p.name)
        if entry in NOT_SECRET or entry in ON_ARGV:
            used.add(entry)
            continue
        found.append(f"{where}: {_label(p)}")
    return found, used


def test_no_option_or_argument_takes_a_secret() -> None:
    root = build_command()
    found, used = problems(root)
    assert not found, "parameters that would take a secret from argv:\n" + "\n".join(found)
    listed: set[object] = {*NOT_SECRET, *ON_ARGV}
    assert used == listed, f"stale allow-list entries: {listed - used}"


def test_the_tree_is_walked_whole() -> None:
    """The walk reaches the places where values are given, and sees their safe forms."""
    seen = {(where, p.name) for where, p in _params(build_command())}
    assert len(seen) > 250
    for where, name in (
        ("vault credential set", "key"),
        ("vault credential set", "from_env"),
        ("vault credential set", "from_file"),
        ("vault credential set", "stdin"),
        ("vault proposal approve", "value_from_env"),
        ("auth login", "password_stdin"),
        ("init", "password_stdin"),
        ("server", "password_stdin"),
        ("vault service add", "client_secret_key"),
        ("user accept", "invite_ref"),
        ("agent-vault", "_addr"),
    ):
        assert (where, name) in seen, (where, name)


def test_the_classifier_catches_secret_options() -> None:
    """A CLI with the mistakes the check exists for: each is caught, the safe forms are not."""
    bad = typer.Typer()

    @bad.command()
    def login(
        password: Annotated[str, typer.Option()] = "",
        password_stdin: Annotated[bool, typer.Option()] = False,
    ) -> None: ...

    @bad.command()
    def put(
        key: Annotated[str, typer.Argument(metavar="KEY")],
        value: Annotated[str, typer.Argument()],
        from_env: Annotated[str, typer.Option(metavar="VAR")] = "",
        token_key: Annotated[str, typer.Option(metavar="KEY")] = "",
        api_key: Annotated[str, typer.Option()] = "",
        client_secret: Annotated[str, typer.Option()] = "",
        token: Annotated[str, typer.Option("--bearer")] = "",
        from_env_value: Annotated[str, typer.Option("--from-env")] = "",  # no VAR: could be the value
    ) -> None: ...

    found, _ = problems(typer.main.get_command(bad))
    names = sorted(re.sub(r"^\S+: ", "", f).split()[0] for f in found)
    assert names == sorted(["--api-key", "--bearer", "--client-secret", "--from-env", "--password", "value"])
