"""`vault service …`: which hosts get which credentials (SPEC §5.4, §5.5). Writes are step-up (§3.4)."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated, Any

import typer

from agent_vault.cli import authflags as af
from agent_vault.cli import choice
from agent_vault.cli.common import (
    PasswordStdinOpt,
    VaultOpt,
    YesOpt,
    client,
    confirm,
    seg,
    step_up,
    vault_app,
    vault_name,
)
from agent_vault.cli.output import out
from agent_vault.cli.servicefile import (
    AUTH_TYPES,
    TOKEN_AUTH,
    AuthFlags,
    dump_services,
    load_services_file,
    strip_nulls,
)
from agent_vault.cli.serviceflags import definition, keys_of, summary, validate
from agent_vault.errors import AgentVaultError, InvalidRequest

service_app = typer.Typer(
    no_args_is_help=True, help="Services: host/path rules that get a credential injected."
)
vault_app.add_typer(service_app, name="service")

NameArg = Annotated[str, typer.Argument(metavar="NAME", help="Service name.")]
Opt = typer.Option


def _list(vault: str) -> list[dict[str, Any]]:
    return list(client().get(f"/v1/vaults/{seg(vault)}/services")["services"])


def _row(s: dict[str, Any]) -> dict[str, Any]:
    return {**s, "auth": s["auth"]["type"], "enabled": "yes" if s.get("enabled", True) else "no"}


@service_app.command("list")
def list_services(vault: VaultOpt = None) -> None:
    """Services in definition order (the earlier one wins a tie)."""
    data = client().get(f"/v1/vaults/{seg(vault_name(vault))}/services")
    out.table(
        data,
        [_row(s) for s in data["services"]],
        ["name", "host", "port", "path", "methods", "auth", "enabled"],
    )


@service_app.command("show")
def show(name: NameArg, vault: VaultOpt = None) -> None:
    """One service definition (YAML; --json for the API JSON)."""
    data = client().get(f"/v1/vaults/{seg(vault_name(vault))}/services/{seg(name)}")
    import yaml

    out.data(data, yaml.safe_dump(strip_nulls(data), sort_keys=False, allow_unicode=True).rstrip())


def _service_command(name: str, *, update: bool) -> Any:
    def command(
        ctx: typer.Context,
        service_name: NameArg,
        vault: VaultOpt = None,
        host: Annotated[str | None, Opt("--host", help="Host, or *.example.com.")] = None,
        port: Annotated[int | None, Opt("--port", help="Port (default: any).")] = None,
        any_port: Annotated[
            bool, Opt("--any-port", help="Match any port again (set: clears --port).")
        ] = False,
        path: Annotated[str | None, Opt("--path", help="Path prefix, matched on whole segments.")] = None,
        method: Annotated[
            list[str] | None,
            Opt(
                "--method",
                help="Allowed HTTP method, e.g. GET (repeatable; default any; '*' alone = any method).",
            ),
        ] = None,
        any_method: Annotated[
            bool, Opt("--any-method", help="Allow every method again (set: clears --method).")
        ] = False,
        auth_type: Annotated[
            str | None,
            Opt(
                "--auth-type",
                help="bearer|basic|api-key|custom|passthrough|oauth2-client-credentials|"
                "oauth2-refresh-token|token-exchange|aws-sigv4",
            ),
        ] = None,
        token_key: Annotated[str | None, Opt("--token-key", help="bearer: credential KEY.")] = None,
        username_key: Annotated[str | None, Opt("--username-key", help="basic: username from KEY.")] = None,
        username: Annotated[str | None, Opt("--username", help="basic: literal username.")] = None,
        password_key: Annotated[str | None, Opt("--password-key", help="basic: password from KEY.")] = None,
        api_key_key: Annotated[str | None, Opt("--api-key-key", help="api-key: credential KEY.")] = None,
        api_key_header: Annotated[str | None, Opt("--api-key-header", help="api-key: header name.")] = None,
        api_key_query: Annotated[str | None, Opt("--api-key-query", help="api-key: query parameter.")] = None,
        api_key_prefix: Annotated[str | None, Opt("--api-key-prefix", help="api-key: value prefix.")] = None,
        custom_header: Annotated[
            list[str] | None, Opt("--custom-header", help="custom: 'Name: text {{ KEY }}' (repeatable).")
        ] = None,
        token_url: af.TokenUrlOpt = None,
        client_id_key: af.ClientIdKeyOpt = None,
        client_secret_key: af.ClientSecretKeyOpt = None,
        scope: af.ScopeOpt = None,
        audience: af.AudienceOpt = None,
        token_auth: af.TokenAuthOpt = None,
        refresh_token_key: af.RefreshTokenKeyOpt = None,
        subject_token_key: af.SubjectTokenKeyOpt = None,
        subject_token_type: af.SubjectTokenTypeOpt = None,
        aws_access_key_id_key: af.AwsKeyIdOpt = None,
        aws_secret_access_key_key: af.AwsSecretOpt = None,
        aws_session_token_key: af.AwsSessionOpt = None,
        aws_region: af.AwsRegionOpt = None,
        aws_service: af.AwsServiceOpt = None,
        aws_role_arn: af.AwsRoleArnOpt = None,
        aws_external_id_key: af.AwsExternalIdOpt = None,
        aws_sts_endpoint: af.AwsStsEndpointOpt = None,
        substitute: Annotated[
            list[str] | None, Opt("--substitute", help="KEY agents may write as {{KEY}}.")
        ] = None,
        substitute_in: Annotated[
            str | None, Opt("--substitute-in", help="header,path,query,body,websocket")
        ] = None,
        redact: Annotated[bool | None, Opt("--redact/--no-redact", help="Redact echoed values.")] = None,
        forward_set_cookie: Annotated[
            bool | None,
            Opt(
                "--forward-set-cookie/--no-forward-set-cookie",
                help="Pass upstream Set-Cookie to the agent (default: only when no credential is sent).",
            ),
        ] = None,
        allow_http: Annotated[
            bool | None,
            Opt(
                "--allow-http/--https-only",
                help="Also send the credentials over plain http:// (default: HTTPS only; "
                "plaintext requests get 403 insecure_scheme).",
            ),
        ] = None,
        enabled: Annotated[bool | None, Opt("--enabled/--disabled", help="Enabled (default) or not.")] = None,
        quota: Annotated[
            str | None,
            Opt("--quota", metavar="N/PERIOD", help="Requests per agent token: N/min, N/hour or N/day; off."),
        ] = None,
        token_budget: Annotated[
            str | None, Opt("--token-budget", metavar="N/PERIOD", help="LLM tokens: N/day or N/month; off.")
        ] = None,
        description: Annotated[
            str | None, Opt("--description", metavar="TEXT", help="What it is for.")
        ] = None,
        from_catalog: Annotated[
            str | None, Opt("--from-catalog", metavar="ID", help="Start from a built-in template.")
        ] = None,
        approval_required: Annotated[
            bool | None,
            Opt(
                "--approval-required/--no-approval-required",
                help="Hold matching requests until a human approves ('vault hold').",
            ),
        ] = None,
        approval_methods: Annotated[
            str | None, Opt("--approval-methods", metavar="M,..", help="Only hold these methods.")
        ] = None,
        approval_timeout: Annotated[
            str | None, Opt("--approval-timeout", metavar="DURATION", help="Wait this long (default 120s).")
        ] = None,
        password_stdin: PasswordStdinOpt = False,
    ) -> None:
        if auth_type is not None:
            auth_type = choice(auth_type, AUTH_TYPES, "--auth-type")
        if token_auth is not None:  # ctx.params feeds brokered_fields
            ctx.params["token_auth"] = choice(token_auth, TOKEN_AUTH, "--token-auth")
        v = vault_name(vault)
        base: dict[str, Any] | None = None
        if from_catalog:
            from agent_vault.catalog import get_template

            try:
                base = get_template(from_catalog).service_definition(service_name)
            except KeyError as e:
                raise InvalidRequest(str(e.args[0])) from None
        if update:
            current = client().get(f"/v1/vaults/{seg(v)}/services/{seg(service_name)}")
            base = {**current, **(base or {})}
        flags = AuthFlags(
            auth_type,
            token_key,
            username_key,
            username,
            password_key,
            api_key_key,
            api_key_header,
            api_key_query,
            api_key_prefix,
            custom_header or [],
            af.brokered_fields(ctx.params),
        )
        d = definition(
            service_name,
            base,
            host=host,
            port=port,
            path=path,
            method=method,
            auth=flags,
            any_method=any_method,
            any_port=any_port,
            substitute=substitute,
            substitute_in=substitute_in,
            redact=redact,
            forward_set_cookie=forward_set_cookie,
            enabled=enabled,
            description=description,
            allow_http=allow_http,
            approval=(approval_required, approval_methods, approval_timeout),
            limits=(quota, token_budget),
        )
        body = {"password": step_up(password_stdin), "service": d}
        c = client()
        if update:
            data = c.put(f"/v1/vaults/{seg(v)}/services/{seg(service_name)}", body)
        else:
            data = c.post(f"/v1/vaults/{seg(v)}/services", body)
        listed = c.get(f"/v1/vaults/{seg(v)}/credentials")["credentials"]
        have = {x["key"] for x in listed if x.get("has_value")}
        out.data(data, summary(data, v, "updated" if update else "added", have, keys_of(d)))

    command.__name__ = name
    command.__doc__ = (
        "Change some fields of a service (step-up); unspecified fields keep their value."
        if update
        else "Add a service from flags or a catalog template (step-up)."
    )
    return command


service_app.command("add")(_service_command("add", update=False))
service_app.command("set")(_service_command("set", update=True))


def _toggle(name: str, vault: str | None, enabled: bool, password_stdin: bool) -> None:
    v = vault_name(vault)
    data = client().patch(
        f"/v1/vaults/{seg(v)}/services/{seg(name)}", {"password": step_up(password_stdin), "enabled": enabled}
    )
    out.data(data, f"{'enabled' if enabled else 'disabled'} service {name} in vault {v}")


@service_app.command("enable")
def enable(name: NameArg, vault: VaultOpt = None, password_stdin: PasswordStdinOpt = False) -> None:
    """Enable a service (step-up)."""
    _toggle(name, vault, True, password_stdin)


@service_app.command("disable")
def disable(name: NameArg, vault: VaultOpt = None, password_stdin: PasswordStdinOpt = False) -> None:
    """Disable a service: its requests get 403 service_disabled (step-up)."""
    _toggle(name, vault, False, password_stdin)


@service_app.command("remove")
def remove(
    name: NameArg, vault: VaultOpt = None, yes: YesOpt = False, password_stdin: PasswordStdinOpt = False
) -> None:
    """Remove a service (step-up)."""
    v = vault_name(vault)
    confirm(f"Remove service {name} from vault {v}?", yes)
    client().delete(f"/v1/vaults/{seg(v)}/services/{seg(name)}", {"password": step_up(password_stdin)})
    out.data({"removed": name, "vault": v}, f"removed service {name} from vault {v}")


def plan_import(
    new: list[dict[str, Any]], current: list[dict[str, Any]] | None, replace: bool
) -> list[dict[str, str]]:
    """[{action: add|update|unchanged|remove, name}] for importing `new` over `current`."""
    names = [s["name"] for s in new]
    dup = sorted({n for n in names if names.count(n) > 1})
    if dup:
        raise InvalidRequest(f"duplicate service names in the file: {', '.join(dup)}")
    cur = {s["name"]: s for s in current or []}
    plan = []
    for s in new:
        old = cur.get(s["name"])
        plan.append(
            {"action": "add" if old is None else ("unchanged" if old == s else "update"), "name": s["name"]}
        )
    if replace:
        plan += [{"action": "remove", "name": n} for n in cur if n not in names]
    return plan


@service_app.command("import")
def import_services(
    file: Annotated[
        Path,
        typer.Argument(
            metavar="FILE",
            help=".yaml/.yml/.toml with a 'services:' list; '-' = YAML on stdin (after the password line).",
        ),
    ],
    vault: VaultOpt = None,
    replace: Annotated[bool, Opt("--replace", help="Make the vault's services exactly the file's.")] = False,
    dry_run: Annotated[bool, Opt("--dry-run", help="Validate and print the plan; change nothing.")] = False,
    password_stdin: PasswordStdinOpt = False,
) -> None:
    """Import services: merge by name (add or replace each), or --replace the whole list (step-up)."""
    v = vault_name(vault)
    pw = step_up(password_stdin) if not dry_run or password_stdin else None
    text = sys.stdin.read() if str(file) == "-" else None
    raw = load_services_file(file, text)
    new = []
    for i, s in enumerate(raw):
        try:
            new.append(validate(s))
        except AgentVaultError as e:
            raise InvalidRequest(f"services[{i}] ({s.get('name', '?')}): {e.message}") from None
    c = client()
    try:
        current: list[dict[str, Any]] | None = _list(v)
    except AgentVaultError as e:
        if not dry_run:
            raise
        out.warn(
            f"warning: cannot read the vault's current services ({e.message}); plan shows file contents only"
        )
        current = None
    plan = plan_import(new, current, replace)
    human = "\n".join(f"{p['action']:>9} {p['name']}" for p in plan) or "nothing to import"
    if dry_run:
        out.data({"vault": v, "dry_run": True, "plan": plan}, f"dry run for vault {v}:\n{human}")
        return
    if replace:
        c.put(f"/v1/vaults/{seg(v)}/services", {"password": pw, "services": new})
    else:
        for p, s in zip(plan, new, strict=False):
            if p["action"] == "add":
                c.post(f"/v1/vaults/{seg(v)}/services", {"password": pw, "service": s})
            elif p["action"] == "update":
                c.put(f"/v1/vaults/{seg(v)}/services/{seg(s['name'])}", {"password": pw, "service": s})
    out.data({"vault": v, "dry_run": False, "plan": plan}, f"imported into vault {v}:\n{human}")


@service_app.command("export")
def export_services(
    vault: VaultOpt = None,
    fmt: Annotated[str, Opt("--format", help="yaml | toml")] = "yaml",
    output: Annotated[Path | None, Opt("--output", "-o", help="Write to FILE instead of stdout.")] = None,
) -> None:
    """Export the vault's services (re-importable with 'vault service import')."""
    if fmt not in ("yaml", "toml"):
        raise typer.BadParameter("must be yaml or toml", param_hint="--format")
    services = _list(vault_name(vault))
    if out.json_mode and output is None:
        out.data({"services": services})
        return
    text = dump_services(services, fmt)
    if output is None:
        out.line(text.rstrip("\n"))
        return
    try:
        output.write_text(text, encoding="utf-8")
    except OSError:
        raise InvalidRequest(f"cannot write {output}") from None
    out.info(f"wrote {len(services)} service(s) to {output}")


__all__ = ["plan_import", "service_app", "validate"]
