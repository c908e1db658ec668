"""`ca fetch|path|rotate`, `catalog list|show`, `agent-guide` (and `doctor`, in cli/doctor.py)."""

from __future__ import annotations

from importlib import resources
from pathlib import Path
from typing import Annotated

import typer

from agent_vault.cli import G, app
from agent_vault.cli import doctor as _doctor  # noqa: F401  (registers `doctor`)
from agent_vault.cli.certs import fetch_ca, write_ca_files
from agent_vault.cli.common import PasswordStdinOpt, YesOpt, client, confirm, step_up
from agent_vault.cli.output import out
from agent_vault.errors import AgentVaultError, InstallationIncomplete, NotFound

ca_app = typer.Typer(no_args_is_help=True, help="The instance CA certificate, for clients of the proxy.")
catalog_app = typer.Typer(no_args_is_help=True, help="Built-in service templates.")
app.add_typer(ca_app, name="ca")
app.add_typer(catalog_app, name="catalog")


@ca_app.command("fetch")
def ca_fetch(
    output: Annotated[
        Path | None, typer.Option("--output", "-o", metavar="DIR", help="Directory (default: <home>/certs).")
    ] = None,
) -> None:
    """Download the CA certificate; write ca-cert.pem and ca-bundle.pem (system roots + the CA)."""
    ca = fetch_ca(client())
    directory = output or G.home / "certs"
    cert, bundle = write_ca_files(ca.pem, directory, home=G.home)
    out.data(
        {"ca_cert": str(cert), "ca_bundle": str(bundle), "proxy_port": ca.proxy_port},
        f"wrote {cert}\nwrote {bundle}",
    )


@ca_app.command("path")
def ca_path(
    bundle: Annotated[bool, typer.Option("--bundle", help="The bundle (system roots + CA).")] = False,
) -> None:
    """Print the local path of the CA certificate (or of the bundle)."""
    p = G.home / "certs" / ("ca-bundle.pem" if bundle else "ca-cert.pem")
    if not p.is_file():
        raise NotFound(f"{p} does not exist", hint="Run 'agent-vault ca fetch'.")
    if out.json_mode:
        out.data({"path": str(p)})
    else:
        out.line(str(p))


@ca_app.command("rotate")
def ca_rotate(yes: YesOpt = False, password_stdin: PasswordStdinOpt = False) -> None:
    """Replace the instance CA (owner, step-up). New proxied connections use it at once; agents holding
    the old certificate must fetch the new one ('vault run' does at every start)."""
    confirm("Replace the instance CA (agents must fetch the new certificate)?", yes)
    c = client()
    data = c.post("/v1/ca/rotate", {"password": step_up(password_stdin)})
    note = "run 'agent-vault ca fetch' where agents keep a copy"
    if (G.home / "certs" / "ca-cert.pem").is_file():  # this machine's copy is stale now: refresh it
        try:
            cert, _bundle = write_ca_files(fetch_ca(c).pem, G.home / "certs", home=G.home)
            note = f"refreshed {cert}; {note}"
        except AgentVaultError as e:
            out.warn(f"could not refresh the local CA files: {e.message}")
    out.data(data, f"new CA {data['fingerprint_sha256']} (valid until {data['not_after']})")
    out.info(note)


@catalog_app.command("list")
def catalog_list() -> None:
    """Templates for 'vault service add NAME --from-catalog ID'."""
    from agent_vault.catalog import load_catalog

    entries = [e.model_dump() for e in load_catalog()]
    rows = [{**e, "auth": e["auth"]["type"], "keys": ", ".join(e["suggested_keys"])} for e in entries]
    out.table({"services": entries}, rows, ["id", "name", "host", "path", "auth", "keys"])


@catalog_app.command("show")
def catalog_show(template_id: Annotated[str, typer.Argument(metavar="ID")]) -> None:
    """One template and the service definition it produces."""
    import yaml

    from agent_vault.catalog import get_template

    try:
        entry = get_template(template_id)
    except KeyError as e:
        raise NotFound(str(e.args[0])) from None
    data = entry.model_dump()
    data["service_definition"] = entry.service_definition(entry.id)
    human = yaml.safe_dump(data, sort_keys=False).rstrip() + (
        f"\n\n# add it: agent-vault vault service add {entry.id} --from-catalog {entry.id}"
        f"\n#         agent-vault vault credential set {entry.suggested_keys[0]}"
        if entry.suggested_keys
        else ""
    )
    out.data(data, human)


@app.command("agent-guide")
def agent_guide() -> None:
    """Print the guide for agents working behind agent-vault (give it to your agent)."""
    try:
        text = resources.files("agent_vault").joinpath("data/agent-guide.md").read_text(encoding="utf-8")
    except OSError:
        raise InstallationIncomplete("the agent guide is missing from this installation") from None
    out.line(text.rstrip("\n"))
