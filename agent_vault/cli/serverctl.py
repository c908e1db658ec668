"""The server's lifecycle: `server` (foreground or `--detach`), `server stop`, `status`.

One server per home: `server` takes `<home>/server.lock` before any prompt or unlock (agent_vault/
lifecycle.py), so a second one prints one line naming the running one and exits 1. `--detach` starts the
server in a new session (stdin /dev/null or a pipe carrying the master password, output appended to
`<home>/server.log`), waits for it to be ready (or to fail) and prints one line. The master password comes
from AGENT_VAULT_MASTER_PASSWORD, --password-stdin or (foreground terminal) a prompt in this process,
and reaches the child only through a pipe: never argv, never the child's environment, never a file.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Annotated

import typer

from agent_vault import gcpolicy
from agent_vault.cli import G, app
from agent_vault.cli.client import Client
from agent_vault.cli.output import out
from agent_vault.config import Settings, env_settings
from agent_vault.errors import (
    AgentVaultError,
    MasterPasswordRequired,
    NotInitialised,
    ServerStartError,
    ServerUnreachable,
)
from agent_vault.home import Home, ensure_dir
from agent_vault.lifecycle import Running, already_running, probe

DETACH_TIMEOUT_S = 30.0
STOP_TIMEOUT_S = 30.0

server_app = typer.Typer(
    help="Run the control API and the injecting proxy on one event loop: in the foreground, or in the "
    "background with --detach (stop it with 'agent-vault server stop'). One server per home."
)
app.add_typer(server_app, name="server")


@server_app.callback(invoke_without_command=True)
def server(
    ctx: typer.Context,
    host: Annotated[str | None, typer.Option(help="API bind host.")] = None,
    port: Annotated[int | None, typer.Option(help="API port (0 = any free port).")] = None,
    proxy_host: Annotated[str | None, typer.Option(help="Proxy bind host.")] = None,
    proxy_port: Annotated[int | None, typer.Option(help="Proxy port (0 = any free port).")] = None,
    disable_proxy: Annotated[bool, typer.Option(help="Run the API only.")] = False,
    public_url: Annotated[str | None, typer.Option(help="Base URL for approval links.")] = None,
    database_url: Annotated[
        str | None,
        typer.Option(
            help="sqlite:///PATH or postgresql://USER@HOST:PORT/DB (prefer DATABASE_URL for a password)."
        ),
    ] = None,
    log_level: Annotated[str | None, typer.Option(help="debug | info | warning")] = None,
    allow_net: Annotated[
        list[str] | None, typer.Option(help="Allow upstreams in this CIDR (repeatable).")
    ] = None,
    upstream_ca: Annotated[Path | None, typer.Option(help="Extra CA file for upstream TLS.")] = None,
    max_request_bytes: Annotated[
        int | None, typer.Option(help="Largest request body forwarded, bytes (1 GiB).")
    ] = None,
    max_buffered_bytes: Annotated[
        int | None,
        typer.Option(help="Largest body buffered or decoded for substitution/redaction, bytes (32 MiB)."),
    ] = None,
    rate_limits: Annotated[str | None, typer.Option(help="default | strict | off")] = None,
    audit_retention_days: Annotated[int | None, typer.Option(help="Days of audit records kept (30).")] = None,
    idle_timeout: Annotated[
        int | None, typer.Option(help="Seconds an idle client or upstream connection stays open (900).")
    ] = None,
    auth_timeout: Annotated[
        float | None, typer.Option(help="Seconds a proxy connection may take to authenticate (10).")
    ] = None,
    max_unauthenticated: Annotated[
        int | None, typer.Option(help="Proxy connections not yet authenticated, at most (512).")
    ] = None,
    connect_timeout: Annotated[
        float | None, typer.Option(help="Seconds to connect to an upstream, else 504 upstream_timeout (10).")
    ] = None,
    first_byte_timeout: Annotated[
        float | None,
        typer.Option(help="Seconds from a request sent to its response head, else 504 (600)."),
    ] = None,
    no_step_up: Annotated[bool, typer.Option(help="Throwaway instances only: no password re-entry.")] = False,
    fast_path: Annotated[
        str | None,
        typer.Option(
            metavar="on|off",
            help="Serve eligible HTTP/1.1 connections on the lean loop (on; env AGENT_VAULT_FAST_PATH).",
        ),
    ] = None,
    offer_h2: Annotated[
        str | None,
        typer.Option(
            metavar="on|off",
            help="Offer HTTP/2 to agents on intercepted connections (on; off: HTTP/1.1 only, so h2 "
            "clients fall back and take the fast path; h2-only clients fail; env AGENT_VAULT_OFFER_H2).",
        ),
    ] = None,
    reuse_port: Annotated[
        bool,
        typer.Option(
            help="SO_REUSEPORT on both listeners: replicas of one instance on one host share the ports."
        ),
    ] = False,
    freshness_bound: Annotated[
        float | None,
        typer.Option(
            help="PostgreSQL replicas: seconds without confirming the snapshot current before refusing "
            "proxy traffic with 503 store_unavailable (30)."
        ),
    ] = None,
    notify_url: Annotated[
        list[str] | None,
        typer.Option(
            metavar="URL",
            help="POST proposal and hold events here (repeatable; Slack webhooks get a text body). "
            "Prefer AGENT_VAULT_NOTIFY_URL for URLs that hold a secret.",
        ),
    ] = None,
    password_stdin: Annotated[bool, typer.Option(help="Read the master password from stdin.")] = False,
    detach: Annotated[
        bool,
        typer.Option(
            help="Run in the background (log: <home>/server.log); print one line once ready. "
            "Stop it with 'agent-vault server stop'."
        ),
    ] = False,
) -> None:
    """Run the control API and the injecting proxy on one event loop (foreground, or --detach).

    One server per home: a second one exits 1 naming the running one. Without a terminal the master
    password comes from AGENT_VAULT_MASTER_PASSWORD or --password-stdin."""
    if ctx.invoked_subcommand is not None:
        return
    from agent_vault.proxy import engine_compat

    engine_compat.require_compatible()  # before the patching modules are imported: one line, exit 1
    options: dict[str, object] = {
        "host": host,
        "port": port,
        "proxy_host": proxy_host,
        "proxy_port": proxy_port,
        "disable_proxy": disable_proxy or None,
        "public_url": public_url,
        "database_url": database_url,
        "log_level": log_level,
        "allow_net": tuple(allow_net or ()),
        "upstream_ca": upstream_ca,
        "max_request_bytes": max_request_bytes,
        "max_buffered_bytes": max_buffered_bytes,
        "rate_limits": rate_limits,
        "audit_retention_days": audit_retention_days,
        "idle_timeout": idle_timeout,
        "auth_timeout": auth_timeout,
        "max_unauthenticated": max_unauthenticated,
        "connect_timeout": connect_timeout,
        "first_byte_timeout": first_byte_timeout,
        "no_step_up": no_step_up or None,
        "fast_path": fast_path,
        "offer_h2": offer_h2,
        "reuse_port": reuse_port or None,
        "freshness_bound": freshness_bound,
        "notify_url": tuple(notify_url or ()),
    }
    settings = env_settings(home=G.home, **options)  # an invalid value: one InvalidRequest line
    home = Home(settings.home)
    if detach:
        _detach(home, options, password_stdin, settings.database_url)
        return
    gcpolicy.hold_until_ready()  # start-up's objects live for the run: no collections until ready
    from agent_vault import server as srv
    from agent_vault.lifecycle import ServerLock

    with ServerLock(home) as lock:  # before any prompt: a second server never asks for a password
        master: str | None = None  # typed just now by `init`: not asked a third time
        if not settings.uses_postgres and not home.initialised():  # PostgreSQL: the database says
            if srv.foreground_tty():
                from agent_vault.cli.setup import initialise

                with contextlib.redirect_stdout(sys.stderr):  # stdout: the ready line alone (SPEC §2.1)
                    master = initialise(
                        key_mode="password", owner_email=None, password_stdin=False, starting_server=True
                    )
            else:
                raise NotInitialised(
                    f"{settings.home} is not initialised yet (no terminal to ask for passwords)",
                    hint="Run: printf '%s\\n' LOGIN_PASSWORD | AGENT_VAULT_MASTER_PASSWORD=... "
                    "agent-vault init --owner-email you@example.com --password-stdin",
                )
        srv.run(settings, password_stdin=password_stdin, lock=lock, master=master)


def _child_argv(home: Home, options: dict[str, object], password: bool) -> list[str]:
    """The detached server's command line: the same options, never a secret (the database URL, which
    may hold a password, reaches the child as DATABASE_URL in its environment)."""
    argv = [sys.executable, "-m", "agent_vault", "--home", str(home.root), "server"]
    for name, value in options.items():
        flag = "--" + name.replace("_", "-")
        if value is None or value == () or name == "database_url":
            continue
        if value is True:
            argv.append(flag)
        elif isinstance(value, tuple):
            for v in value:
                argv += [flag, str(v)]
        elif isinstance(value, Path):
            argv += [flag, str(value.expanduser().resolve())]
        else:
            argv += [flag, str(value)]
    if password:
        argv.append("--password-stdin")
    return argv


def _detach_password(home: Home, password_stdin: bool, database_url: str | None) -> str | None:
    """The master password for a detached server, read here (the child has no terminal)."""
    from agent_vault import keys
    from agent_vault import server as srv
    from agent_vault.cli.prompts import read_stdin_line
    from agent_vault.instance import identify
    from agent_vault.oskeyring import KeyringUnavailable

    settings = env_settings(home=home.root, database_url=database_url)
    ident = identify(settings)
    if ident.key_mode == "passwordless":
        return None
    pw = keys.master_password_from_env()
    if pw is None and password_stdin:
        pw = read_stdin_line()
    why = ""  # key mode keyring: why the keyring gave no password
    if pw is None and ident.key_mode == "keyring":  # read here: its failure is said here, not in the log
        try:
            pw = keys.keyring_get(ident.instance_id) or None
            why = "" if pw else "there is no master password in the OS keyring for this instance"
        except KeyringUnavailable as e:
            why = f"the OS keyring is unavailable ({e})"
        if pw is None and srv.foreground_tty():
            out.warn(f"note: {why}; asking for the master password")
    if pw is None:
        if not srv.foreground_tty():
            raise MasterPasswordRequired(
                "the master password is required to start a detached server" + (f": {why}" if why else ""),
                hint="Set AGENT_VAULT_MASTER_PASSWORD or pass --password-stdin",
            )
        pw = srv.prompted_unlock(lambda typed: _checked(settings, typed))  # 3 attempts, here
    return pw  # to the child through a pipe (key mode keyring too: the keyring is read once, here)


def _checked(settings: Settings, password: str) -> str:
    """`password` if it unlocks the instance (WrongMasterPassword otherwise): checked before detaching,
    so a typo is asked again at the terminal instead of failing in the background child."""
    from agent_vault.instance import unlock

    unlock(settings, password).store.close()
    return password


def _last_error(log: Path, offset: int) -> str:
    """The server's last `error:` line in its log since `offset` (else its last line)."""
    try:
        with open(log, "rb") as f:
            f.seek(offset)
            lines = [x.strip() for x in f.read().decode(errors="replace").splitlines() if x.strip()]
    except OSError:
        return "no output"
    errors = [x for x in lines if x.startswith("error:")]
    last = (errors or lines or ["no output"])[-1]
    return last.removeprefix("error:").strip()


def _detach(home: Home, options: dict[str, object], password_stdin: bool, database_url: str | None) -> None:
    postgres = (database_url or "").startswith(("postgresql://", "postgres://", "postgresql+psycopg://"))
    if not postgres and not home.initialised():
        raise NotInitialised(
            f"{home.root} is not initialised yet", hint="Run 'agent-vault init' first, then start the server."
        )
    running = probe(home)
    if running is not None:
        raise already_running(home, running)
    password = _detach_password(home, password_stdin, database_url)
    env = dict(os.environ)  # the master password was popped from it: the child's env never holds it
    env.pop("AGENT_VAULT_MASTER_PASSWORD", None)
    env["AGENT_VAULT_HOME"] = str(home.root)
    if database_url is not None:
        env["DATABASE_URL"] = database_url
    log = ensure_dir(home.root) / home.server_log.name  # a PostgreSQL replica's home may start empty
    fd = os.open(log, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    offset = os.lseek(fd, 0, os.SEEK_END)
    try:
        proc = subprocess.Popen(
            _child_argv(home, options, password is not None),
            stdin=subprocess.PIPE if password is not None else subprocess.DEVNULL,
            stdout=fd,
            stderr=fd,
            env=env,
            start_new_session=True,  # no controlling terminal: the shell's job control cannot stop it
            close_fds=True,
        )
    finally:
        os.close(fd)
    if proc.stdin is not None:
        assert password is not None
        try:
            proc.stdin.write(password.encode() + b"\n")
            proc.stdin.close()
        except BrokenPipeError:
            pass  # it exited already: reported below from its log
    deadline = time.monotonic() + DETACH_TIMEOUT_S
    while True:
        code = proc.poll()
        state = probe(home)
        if state is not None and state.ready and state.pid == proc.pid:
            break
        if code is not None:
            raise ServerStartError(
                f"the server did not start: {_last_error(log, offset)}", hint=f"full log: {log}"
            )
        if time.monotonic() >= deadline:
            proc.send_signal(signal.SIGTERM)
            raise ServerStartError(
                f"the server was not ready within {DETACH_TIMEOUT_S:g} s (stopped it)", hint=f"log: {log}"
            )
        time.sleep(0.05)
    if state.key_mode == "passwordless":  # SPEC §4.2: at every start, not only in server.log
        from agent_vault.keys import PASSWORDLESS_WARNING

        out.warn(PASSWORDLESS_WARNING.format(path=home.dek_file))
    out.data(
        {**state.as_dict(), "log": str(log)},
        f"agent-vault server running: pid {state.pid}, api {state.api}, proxy {state.proxy}, log {log}",
    )


@server_app.command("stop")
def stop(
    timeout: Annotated[float, typer.Option(help="Seconds to wait for it to exit.")] = STOP_TIMEOUT_S,
) -> None:
    """Stop the server running for this home (SIGTERM, then wait until it has exited)."""
    home = Home(G.home)
    running = probe(home)
    if running is None or running.pid is None:
        raise ServerUnreachable(
            f"no agent-vault server is running for {home.root}",
            hint="Check --home / AGENT_VAULT_HOME; 'agent-vault status' shows what runs for a home.",
        )
    os.kill(running.pid, signal.SIGTERM)  # the lock is held: this pid is the live server, not a stale one
    deadline = time.monotonic() + timeout
    while probe(home) is not None or not _exited(running.pid):
        if time.monotonic() >= deadline:
            raise ServerStartError(
                f"the server (pid {running.pid}) did not exit within {timeout:g} s",
                hint=f"see {home.server_log}",
            )
        time.sleep(0.05)
    out.data({"stopped": running.pid}, f"agent-vault server stopped (pid {running.pid})")


def _exited(pid: int) -> bool:
    """The process is gone, or a zombie: it exited and its new parent has not reaped it yet (it is not
    our child, so we cannot wait for it)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        return False
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False  # no procfs: alive as far as we can tell
    return stat.rsplit(")", 1)[-1].split()[0] == "Z"


def _describe(home: Home, running: Running | None) -> str:
    if running is None:
        return f"not running for {home.root}"
    return f"running for {home.root}: {running.describe()}"


@app.command()
def status() -> None:
    """Whether a server runs for this home (pid, addresses), then its version, key mode, login."""
    from agent_vault import keys
    from agent_vault.cli.common import api_addr  # --addr > AGENT_VAULT_ADDR > .agent-vault.toml

    home = Home(G.home)
    running = probe(home)
    explicit = api_addr()
    if running is None and not explicit:
        raise ServerUnreachable(
            f"no agent-vault server is running for {home.root}",
            hint="Start one with 'agent-vault server --detach'.",
        )
    local = {"server": _describe(home, running), **({"pid": running.pid} if running else {})}
    client = Client(explicit or (running.api if running else None), G.home)
    info = client.request("GET", "/v1/status", auth=False)
    me = None
    rejected: str | None = None  # why the token that is set does not log in
    if client.token:
        try:
            me = client.get("/v1/auth/me")
        except AgentVaultError as e:
            me = None
            if e.status == 401:
                rejected = (
                    f"the token from AGENT_VAULT_TOKEN was rejected ({e.message})"
                    if client.auth_source == "AGENT_VAULT_TOKEN"
                    else f"the stored login was rejected ({e.message}; run 'agent-vault auth login')"
                )
    info = {**local, **info, "addr": client.addr, "logged_in_as": (me or {}).get("name")}
    if rejected is not None:
        info["login_problem"] = rejected
    if running is not None and running.proxy:
        info.setdefault("proxy", running.proxy)
    if info.get("key_mode") == "passwordless":
        out.warn(keys.PASSWORDLESS_WARNING.format(path=G.home / "dek.key"))
    out.fields(info)  # in words: yes/no/none, never Python's True/None
