"""The `agent-vault` command line (SPEC §10): one Typer sub-app per noun.

Global options (--addr, --home, --json, --quiet, --no-color) are accepted anywhere before `--`.
Exit codes: 0 ok, 1 user/runtime error (one `error:` line), 2 usage error, 130 interrupted.

Help conventions live here (`build_command` polishes the whole command tree once): flags are plain
flags (`--yes`, `--no-step-up`; no `--no-` twin restating the default, no `[default: no-yes]`), value
options show a word for what they take (`--vault NAME`, `--limit N`), never a bare type (`<str>`).
"""

from __future__ import annotations

import os
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import click
import typer

from agent_vault import __version__, gcpolicy
from agent_vault.cli.output import out
from agent_vault.config import default_home
from agent_vault.errors import AgentVaultError

app = typer.Typer(
    no_args_is_help=True,
    add_completion=False,  # `agent-vault completion bash|zsh|fish` instead of the hidden installer
    pretty_exceptions_enable=False,
    help="agent-vault: a credential broker for AI agents.\n\n"
    "The global options (--addr, --home, --json, --quiet, --no-color) work anywhere before --.",
)
PROG = "agent-vault"
COMPLETE_VAR = "_AGENT_VAULT_COMPLETE"  # what the generated completion scripts set when they call back
SHELLS = ("bash", "zsh", "fish")


@dataclass
class Globals:
    addr: str | None = None
    home: Path = field(default_factory=default_home)


G = Globals()
_UsageError: Any = typer.BadParameter.__mro__[1]  # typer vendors click: its UsageError
_ClickException: Any = typer.BadParameter.__mro__[2]
_FLAGS = {"--json", "--quiet", "--no-color"}
_VALUED = {"--addr", "--home"}


def extract_globals(argv: list[str]) -> list[str]:
    """Remove global options from anywhere before `--` and apply them."""
    rest: list[str] = []
    i = 0
    while i < len(argv):
        a = argv[i]
        if a == "--":
            rest.extend(argv[i:])
            break
        name, eq, val = a.partition("=")
        if a in _FLAGS:
            if a == "--json":
                out.json_mode = True
            elif a == "--quiet":
                out.quiet = True
            else:
                os.environ["NO_COLOR"] = "1"
        elif name in _VALUED:
            if not eq:
                if i + 1 >= len(argv):
                    raise typer.BadParameter(f"{name} needs a value")
                val = argv[i + 1]
                i += 1
            if name == "--addr":
                G.addr = val
            else:
                G.home = Path(val).expanduser()
                os.environ["AGENT_VAULT_HOME"] = str(G.home)
        else:
            rest.append(a)
        i += 1
    return rest


def version_callback(value: bool) -> None:
    if value:
        out.line(f"agent-vault {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: bool = typer.Option(
        False, "--version", callback=version_callback, is_eager=True, help="Print the version and exit."
    ),
    # Documentation only: `extract_globals` takes these out of argv before click parses it, so they
    # work after the command too (`agent-vault vault list --json`).
    _addr: str | None = typer.Option(
        None,
        "--addr",
        metavar="URL",
        envvar="AGENT_VAULT_ADDR",
        show_envvar=True,
        help="Server API address (default: this home's running server, then the login's, then http://127.0.0.1:14321).",
    ),
    _home: str | None = typer.Option(
        None,
        "--home",
        metavar="DIR",
        envvar="AGENT_VAULT_HOME",
        show_envvar=True,
        help="The agent-vault home (default: ~/.agent-vault).",
    ),
    _json: bool = typer.Option(False, "--json", help="Print JSON."),
    _quiet: bool = typer.Option(False, "--quiet", help="Print only results, no progress notes."),
    _no_color: bool = typer.Option(False, "--no-color", help="No colours (also NO_COLOR=1)."),
) -> None:
    """agent-vault: a credential broker for AI agents. Agents call APIs through its proxy; they never
    hold the secrets.

    --addr, --home, --json, --quiet and --no-color work anywhere before `--`
    (`agent-vault vault list --json`)."""


@app.command("version")
def version_cmd() -> None:
    """Print the version."""
    out.line(f"agent-vault {__version__}")


@app.command("completion")
def completion_cmd(
    shell: str = typer.Argument(..., help="bash, zsh or fish."),
) -> None:
    """Print the shell completion script, e.g. eval "$(agent-vault completion bash)"."""
    from typer._completion_shared import get_completion_script

    name = choice(shell, SHELLS, "SHELL")
    out.line(get_completion_script(prog_name=PROG, complete_var=COMPLETE_VAR, shell=name))


_ALL = (
    "serverctl",
    "auth",
    "vault",
    "agents",
    "users",
    "misc",
    "run",
    "logs",
    "proposals",
    "holds",
    "mcp",
    "migratedb",
)
# A command that runs for the life of its process gets a tree of only its own module: the server
# process then holds none of the other commands (~3 MiB of its idle RSS, SPEC §15).
_ALONE = {"server": "serverctl"}


def _register(only: str | None = None) -> None:
    """Import the command modules (each registers its commands on `app`): all, or just `only`."""
    if only is None:
        from agent_vault.cli import setup  # noqa: F401  (registers init/master-password)
    for mod in (only,) if only is not None else _ALL:
        try:
            __import__(f"agent_vault.cli.{mod}")
        except ModuleNotFoundError as e:
            if e.name != f"agent_vault.cli.{mod}":
                raise


def choice(value: str, valid: Sequence[str], option: str) -> str:
    """`value` as one of `valid`, case-insensitively (`Bearer` is `bearer`); anything else is one usage
    error line listing the valid values, with a "did you mean" when one is close (`baerer`)."""
    import difflib

    folded = {v.lower(): v for v in valid}
    got = value.strip().lower().replace("_", "-")
    for key in (got, got.replace("-", "_")):
        if key in folded:
            return folded[key]
    close = difflib.get_close_matches(got, list(folded), n=1, cutoff=0.6)
    hint = f"; did you mean {folded[close[0]]}?" if close else ""
    shown = value if len(value) <= 40 else value[:40] + "..."
    raise typer.BadParameter(f"{shown!r} is not one of {', '.join(valid)}{hint}", param_hint=option)


def _words(param: Any, ctx: Any) -> None:
    """One option's help made plain (see the module docstring)."""
    if param.param_type_name == "argument":
        param.display_type_rich = lambda ctx: None  # its name already says what it takes
        return
    if getattr(param, "hidden", False):
        return
    if getattr(param, "is_flag", False) and not getattr(param, "count", False):
        param.metavar = ""  # a flag takes no value: nothing to show
        if param.default is False:
            param.secondary_opts = []  # `--no-x` would only restate the default
            param.show_default = False
        return
    if param.metavar is not None:
        return
    kind = str(param.display_type(ctx)).strip("<>")
    if kind.startswith("list[") and kind.endswith("]"):
        kind = kind[5:-1]
    if kind in ("int", "int range"):
        param.metavar = "N"
    elif kind in ("float", "float range"):
        param.metavar = "NUMBER"
    elif kind in ("path", "file", "directory"):
        param.metavar = "PATH"
    else:
        long = max(param.opts, key=len).lstrip("-")
        param.metavar = long.rsplit("-", 1)[-1].upper()


def polish(command: Any) -> Any:
    """Apply the help conventions to `command` and everything under it (once per process)."""
    # Click's plain formatter, not rich panels: it wraps to the terminal, never cuts an option name
    # (a long one gets its help on the next line) and keeps `--x / --no-x` pairs readable at 80 columns.
    command.rich_markup_mode = None
    if command.help and not command.short_help:  # the whole first paragraph, wrapped (not cut at ~45)
        command.short_help = " ".join(command.help.strip().split("\n\n")[0].split())
    ctx = typer.Context(command)
    for p in command.params:
        _words(p, ctx)
    help_opt = command.get_help_option(ctx)
    if help_opt is not None:
        help_opt.metavar = ""
    for sub in getattr(command, "commands", {}).values():
        polish(sub)
    return command


def build_command(args: Sequence[str] = ()) -> Any:
    """The click command tree of the whole CLI, help polished; for `args` naming a command of `_ALONE`
    first (`server ...`), the tree of that command's module only."""
    _register(_ALONE.get(args[0]) if args else None)
    return polish(typer.main.get_command(app))


def _completion_init() -> None:
    """Register Typer's bash/zsh/fish completion classes, which the scripts of `agent-vault completion`
    call back into (`_AGENT_VAULT_COMPLETE=complete_bash ...`). `add_completion=False` (no hidden
    --install-completion/--show-completion options) also skips this registration, without which every
    callback fails with "Shell bash not supported."; typer.completion is already imported by typer."""
    from typer._completion_classes import completion_init

    completion_init()


def _usage_message(e: Exception) -> str:
    """Click's message, except that stray arguments are not echoed: a secret typed as an argument
    (`vault credential set KEY VALUE`) must not be repeated into terminals and CI logs (SPEC §10)."""
    msg = str(e.format_message())  # type: ignore[attr-defined]
    if msg.startswith("Got unexpected extra argument"):
        return "unexpected extra argument(s) (not shown: secrets are never accepted as arguments; see --help)"
    return msg


def _is_run(args: list[str]) -> bool:
    """`vault run` (or its `run` alias), whose own exit codes leave room for the child's (SPEC §7.4).
    `args` without the global options (click does not always say which command a usage error is of)."""
    return args[:1] == ["run"] or args[:2] == ["vault", "run"]


def main(argv: list[str] | None = None) -> None:
    """Console entry point: maps errors to exit codes, never prints a traceback."""
    args = list(sys.argv[1:] if argv is None else argv)
    try:
        args = extract_globals(args)
        with gcpolicy.paused():  # imports only: nothing to collect yet
            command = build_command(args)
        if os.environ.get(COMPLETE_VAR):
            _completion_init()
        rc = command.main(args=args, prog_name=PROG, complete_var=COMPLETE_VAR, standalone_mode=False)
        sys.exit(rc if isinstance(rc, int) else 0)
    except AgentVaultError as e:
        out.error(e)
        sys.exit(1)
    except (click.exceptions.Exit, typer.Exit) as e:
        sys.exit(e.exit_code)
    except (click.exceptions.Abort, typer.Abort):
        out.error("aborted")
        sys.exit(130)
    except (click.UsageError, _UsageError) as e:
        out.error(_usage_message(e))
        sys.exit(125 if _is_run(args) else 2)  # SPEC §7.4: bad flags of `vault run` are a wrapper failure
    except (click.ClickException, _ClickException) as e:
        out.error(e.format_message())
        sys.exit(e.exit_code if e.exit_code else 1)
    except KeyboardInterrupt:
        sys.exit(130)
    except Exception:  # never a traceback nor an exception class name (issue 23); details on request
        out.error("unexpected internal error; rerun with AGENT_VAULT_DEBUG=1 for the details")
        if os.environ.get("AGENT_VAULT_DEBUG") == "1":
            raise
        sys.exit(1)
    sys.exit(0)
