"""The `agent-vault` command line (SPEC §10): one Typer sub-app per noun.

Global options (--addr, --home, --json, --quiet, --no-color) are accepted anywhere before `--`.
Exit codes: 0 ok, 1 user/runtime error (one `error:` line), 2 usage error, 130 interrupted.
"""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import click
import typer

from agent_vault import __version__
from agent_vault.cli.output import out
from agent_vault.config import default_home
from agent_vault.errors import AgentVaultError

app = typer.Typer(
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    help="agent-vault: a credential broker for AI agents.",
)


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
) -> None:
    """agent-vault: agents call APIs through this proxy; they never hold the secrets."""


@app.command("version")
def version_cmd() -> None:
    """Print the version."""
    out.line(f"agent-vault {__version__}")


def _register() -> None:
    from agent_vault.cli import setup  # noqa: F401  (registers init/server/status)

    for mod in ("auth", "vault", "agents", "users", "misc", "run", "logs", "proposals"):
        try:
            __import__(f"agent_vault.cli.{mod}")
        except ModuleNotFoundError as e:
            if e.name != f"agent_vault.cli.{mod}":
                raise


def _usage_message(e: Exception) -> str:
    """Click's message, except that stray arguments are not echoed: a secret typed as an argument
    (`vault credential set KEY VALUE`) must not be repeated into terminals and CI logs (SPEC §10)."""
    msg = str(e.format_message())  # type: ignore[attr-defined]
    if msg.startswith("Got unexpected extra argument"):
        return "unexpected extra argument(s) (not shown: secrets are never accepted as arguments; see --help)"
    return msg


def main(argv: list[str] | None = None) -> None:
    """Console entry point: maps errors to exit codes, never prints a traceback."""
    args = list(sys.argv[1:] if argv is None else argv)
    try:
        args = extract_globals(args)
        _register()
        command = typer.main.get_command(app)
        rc = command.main(args=args, prog_name="agent-vault", standalone_mode=False)
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
        sys.exit(2)
    except (click.ClickException, _ClickException) as e:
        out.error(e.format_message())
        sys.exit(e.exit_code if e.exit_code else 1)
    except KeyboardInterrupt:
        sys.exit(130)
    except Exception as e:  # never a traceback; the type is enough to report it
        out.error(f"internal error ({type(e).__name__}); rerun with AGENT_VAULT_DEBUG=1 for details")
        if os.environ.get("AGENT_VAULT_DEBUG") == "1":
            raise
        sys.exit(1)
    sys.exit(0)
