"""`vault run -- CMD` (alias `run`): CMD gets a session token, the proxy and the CA in its env (SPEC §7).

Modes: human (CLI login: mint a session), agent (AGENT_VAULT_TOKEN=av_agt_…: the agent mints a session for
itself; the agent token is not passed on) and nested (AGENT_VAULT_TOKEN=av_sess_…: reused; nothing minted,
renewed or revoked). The token never goes to disk or argv. Exit: the child's code, 128+N if killed by signal
N, 125 wrapper failure, 126 not executable, 127 not found. `--isolate` runs CMD in a sandbox whose only way
out is the proxy and the API (cli/isolate.py, agent_vault/isolate/); it refuses (125) where it cannot.
"""

from __future__ import annotations

import os
import secrets
import shutil
import signal
import subprocess
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from types import FrameType
from typing import Annotated, Any
from urllib.parse import urlsplit

import typer

from agent_vault.childwait import wait_forwarding
from agent_vault.cli import G, app, choice
from agent_vault.cli import isolate as isolation
from agent_vault.cli.certs import fetch_ca, write_ca_files
from agent_vault.cli.client import Client
from agent_vault.cli.common import PROJECT_FILE, VaultOpt, client, exit_with, resolve_vault, vault_app
from agent_vault.cli.durations import parse_duration
from agent_vault.cli.output import out
from agent_vault.cli.runenv import build_child_env
from agent_vault.cli.runreport import acting_client, latest_seq, report_unmatched
from agent_vault.domain.names import check_key
from agent_vault.errors import AgentVaultError, BadServerResponse, InvalidRequest, NotFound, Unauthenticated
from agent_vault.isolate.sandbox import probe, sandbox_certs
from agent_vault.proxy.exfil import CANARY_PREFIX  # pure: no engine

WRAPPER_FAILED, NOT_EXECUTABLE, NOT_FOUND = 125, 126, 127
POLICIES = ("tunnel", "passthrough", "deny")
FORWARDED = (signal.SIGTERM, signal.SIGHUP, signal.SIGUSR1, signal.SIGUSR2)
IGNORED = (signal.SIGINT, signal.SIGQUIT)


@dataclass
class RunSession:
    token: str
    vault: str
    session_id: int | None  # None: nested, the session belongs to an outer wrapper
    ttl: int
    expires_at: str | None = None
    child: bool = False  # minted by an outer session (narrowed): not renewable, revoked with its own token


class Renewer:
    """Renews the session when less than half its TTL remains; sleeps in bounded steps; stops on `stop()`."""

    def __init__(
        self,
        renew: Callable[[], None],
        ttl: float,
        *,
        max_sleep: float = 60.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.renew, self.ttl, self.max_sleep, self.clock = renew, ttl, max_sleep, clock
        self.deadline = clock() + ttl
        self.renewals = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="session-renewer", daemon=True)

    def start(self) -> Renewer:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)

    def _loop(self) -> None:
        warned = False
        while not self._stop.is_set():
            due = self.deadline - self.ttl / 2
            now = self.clock()
            if now < due:
                self._stop.wait(min(due - now, self.max_sleep))
                continue
            try:
                self.renew()
                self.deadline = self.clock() + self.ttl
                self.renewals += 1
                warned = False
            except AgentVaultError as e:
                if not warned:
                    out.warn(f"agent-vault: warning: could not renew the session ({e.message}); retrying")
                    warned = True
                self._stop.wait(min(self.max_sleep, max(self.ttl / 10, 0.05)))


def check_command(cmd: str, path: str | None) -> int | None:
    """126/127 if CMD cannot be started (checked before anything is minted), else None."""
    if "/" in cmd:
        p = Path(cmd)
        if not p.exists():
            return NOT_FOUND
        return None if p.is_file() and os.access(p, os.X_OK) else NOT_EXECUTABLE
    if shutil.which(cmd, path=path):
        return None
    for d in (path or os.defpath).split(os.pathsep):
        if d and (Path(d) / cmd).is_file():
            return NOT_EXECUTABLE
    return NOT_FOUND


def split_list(values: list[str] | None) -> list[str] | None:
    """Repeatable, comma-separated option values (`--only-service a,b --only-service c`)."""
    items = [x.strip() for v in values or [] for x in v.split(",") if x.strip()]
    return items or None


def open_session(
    c: Client,
    *,
    vault: str | None,
    agent: str | None,
    ttl: int,
    policy: str | None,
    label: str,
    only_services: list[str] | None = None,
    only_methods: list[str] | None = None,
) -> RunSession:
    token = os.environ.get("AGENT_VAULT_TOKEN", "")
    narrow = {"only_services": only_services, "only_methods": only_methods}
    if token.startswith("av_sess_") and (only_services or only_methods):  # nested and narrower: a child
        child = {"vault": vault, "ttl_seconds": ttl, "label": label[:200], "unmatched_policy": policy}
        return _minted(c.post("/v1/sessions", {**child, **narrow}), ttl, child=True)
    if token.startswith("av_sess_"):  # nested: reuse as is
        me = c.get("/v1/auth/me")
        bound = str((me.get("vaults") or [{}])[0].get("name") or "")
        if vault and vault != bound:
            raise InvalidRequest(f"this session is bound to vault {bound}, not {vault}")
        if agent:
            out.warn("agent-vault: --agent is ignored inside a session (the session is reused)")
        return RunSession(token=token, vault=bound, session_id=None, ttl=ttl)
    name, source = resolve_vault(vault)
    if not c.token:
        raise Unauthenticated("not logged in", hint="Run 'agent-vault auth login' or set AGENT_VAULT_TOKEN.")
    body: dict[str, Any] = {
        "vault": None if token.startswith("av_agt_") and source == "default" else name,
        "ttl_seconds": ttl,
        "agent": agent,
        "label": label[:200],
        "unmatched_policy": policy,
        **narrow,
    }
    try:
        return _minted(c.post("/v1/sessions", body), ttl)
    except AgentVaultError as e:
        raise _name_the_source(e, name, source) from None


def _name_the_source(e: AgentVaultError, vault: str, source: str) -> AgentVaultError:
    """`e` about `vault`, saying where the name came from when the user did not type it on this command
    line (a `.agent-vault.toml`, AGENT_VAULT_VAULT, 'vault use'): that is the place to fix."""
    if source in ("--vault", "default") or e.code not in ("not_found", "vault_forbidden"):
        return e
    if not e.message.endswith(f"vault {vault}") and not e.message.startswith(f"vault {vault} "):
        return e  # about something else (--agent NAME)
    if source == "AGENT_VAULT_VAULT":
        e.message += " (from AGENT_VAULT_VAULT)"
        e.hint = "Fix or unset AGENT_VAULT_VAULT, or pass --vault NAME ('agent-vault vault list' shows them)."
    elif Path(source).name == PROJECT_FILE:
        e.message += f" (named in {source})"
        e.hint = f"Fix `vault = ...` in {source}, or pass --vault NAME ('agent-vault vault list' shows them)."
    else:  # cli/context, written by `vault use`
        e.message += " (chosen with 'agent-vault vault use')"
        e.hint = "Choose another with 'agent-vault vault use NAME', or pass --vault NAME."
    return e


def _minted(data: dict[str, Any], ttl: int, *, child: bool = False) -> RunSession:
    """The RunSession of a session POST /v1/sessions just minted (revoked when the run ends)."""
    return RunSession(
        token=str(data["token"]),
        vault=str(data["vault"]),
        session_id=int(data["id"]),
        ttl=ttl,
        expires_at=data.get("expires_at"),
        child=child,
    )


def spawn(argv: list[str], env: dict[str, str]) -> int:
    """Spawn in our process group; ignore SIGINT/SIGQUIT; forward TERM/HUP/USR1/USR2; the exit code."""
    child: list[subprocess.Popen[bytes]] = []
    pending: list[int] = []

    def forward(signum: int, _frame: FrameType | None) -> None:
        if child and child[0].poll() is None:
            child[0].send_signal(signum)
        elif not child:
            pending.append(signum)

    def ignore(_signum: int, _frame: FrameType | None) -> None:
        """A Python handler rather than SIG_IGN: exec resets it to the default in the child."""

    saved = {s: signal.signal(s, ignore) for s in IGNORED}
    saved.update({s: signal.signal(s, forward) for s in FORWARDED})
    try:
        try:
            child.append(subprocess.Popen(argv, env=env))
        except FileNotFoundError:
            out.error(f"{argv[0]}: command not found")
            return NOT_FOUND
        except OSError as e:
            out.error(f"{argv[0]}: cannot execute ({e.strerror})")
            return NOT_EXECUTABLE
        for s in pending:
            child[0].send_signal(s)
        rc = wait_forwarding(child[0])
    finally:
        for s, h in saved.items():
            signal.signal(s, h)
    return 128 - rc if rc < 0 else rc


def unmatched_behaviour(discover: dict[str, Any]) -> str:
    """What the proxy does with a host no service matches, as it will act: under `dry-run` (or `learn`)
    enforcement nothing is refused (a `deny` only logs), which the bare policy name would hide."""
    policy = str(discover.get("unmatched_policy"))
    enforcement = discover.get("enforcement")
    if enforcement not in ("dry-run", "learn"):
        return policy
    what = "logged and drafted as proposals" if enforcement == "learn" else "logged"
    if policy == "deny":
        return f"deny ({enforcement}: {what}, not enforced)"
    return f"{policy}; enforcement {enforcement}: refusals {what}, not enforced"


def _banner(s: RunSession, addr: str, proxy: str, discover: dict[str, Any], *, isolated: bool) -> None:
    n = len(discover.get("services", []))
    when = (
        f", session {s.session_id} until {s.expires_at}" if s.session_id else " (reusing the outer session)"
    )
    out.info(
        f"agent-vault: vault {s.vault} via proxy {proxy}{when}; {n} service(s), unmatched hosts: "
        f"{unmatched_behaviour(discover)}" + ("; isolated: the proxy is the only way out" * isolated)
    )
    out.info(f'agent-vault: discover: curl -H "Authorization: Bearer $AGENT_VAULT_TOKEN" {addr}/v1/discover')
    out.info(
        f"agent-vault: need another service? POST {discover.get('proposals_url') or addr + '/v1/proposals'}"
        " (see 'agent-vault agent-guide')"
    )


def run_command(
    cmd: Annotated[
        list[str] | None, typer.Argument(metavar="-- CMD [ARGS...]", help="The command to run.")
    ] = None,
    vault: VaultOpt = None,
    agent: Annotated[str | None, typer.Option("--agent", help="Attribute the session to this agent.")] = None,
    ttl: Annotated[
        str,
        typer.Option("--ttl", metavar="DURATION", help="Session TTL, 5m-7d; renewed while the command runs."),
    ] = "24h",
    policy: Annotated[
        str | None,
        typer.Option(
            "--policy", help="tunnel | passthrough | deny: stricter-only override for unmatched hosts."
        ),
    ] = None,
    placeholder: Annotated[
        list[str] | None,
        typer.Option("--placeholder", metavar="KEY", help="Set KEY={{KEY}} for the proxy to fill in."),
    ] = None,
    canary: Annotated[
        list[str] | None,
        typer.Option(
            "--canary",
            metavar="KEY",
            help="Set KEY to a random canary value; a request carrying it is refused (exfiltration_blocked).",
        ),
    ] = None,
    no_proxy: Annotated[
        list[str] | None,
        typer.Option("--no-proxy", metavar="HOSTS", help="Extra NO_PROXY entries (comma list)."),
    ] = None,
    label: Annotated[str | None, typer.Option("--label", help="Session label (vault session list).")] = None,
    only_service: Annotated[
        list[str] | None,
        typer.Option("--only-service", metavar="NAMES", help="Narrow the session to these services (a,b)."),
    ] = None,
    only_method: Annotated[
        list[str] | None,
        typer.Option("--only-method", metavar="METHODS", help="Narrow the session to these methods (GET)."),
    ] = None,
    isolate: Annotated[
        bool,
        typer.Option(
            "--isolate", help="Linux: sandbox CMD (bubblewrap); its only way out is the proxy. No fallback."
        ),
    ] = False,
) -> None:
    """Run CMD with a short-lived session token, the proxy and the CA in its environment; revoke on exit."""
    argv = list(cmd or [])
    if argv and argv[0] == "--":
        argv = argv[1:]
    try:
        if not argv:
            raise InvalidRequest(
                "missing command", hint="Usage: agent-vault vault run [OPTIONS] -- CMD [ARGS...]"
            )
        if argv[0].startswith("-"):
            raise InvalidRequest(f"unknown option {argv[0]}", hint="Put the command after '--'.")
        if policy is not None:
            try:
                policy = choice(policy, POLICIES, "--policy")
            except typer.BadParameter as e:  # a wrapper failure (exit 125), not a usage error
                raise InvalidRequest(e.format_message()) from None
        for key in [*(placeholder or []), *(canary or [])]:
            check_key(key)
        both = sorted(set(placeholder or []) & set(canary or []))
        if both:
            raise InvalidRequest(f"{both[0]} is given to both --placeholder and --canary")
        canaries = {k: f"{CANARY_PREFIX}{k}-{secrets.token_urlsafe(12)}" for k in canary or []}
        ttl_s = parse_duration(ttl)
    except AgentVaultError as e:
        out.error(e)
        exit_with(WRAPPER_FAILED)
    missing = check_command(argv[0], os.environ.get("PATH"))
    if missing is not None:
        out.error(f"{argv[0]}: {'command not found' if missing == NOT_FOUND else 'permission denied'}")
        exit_with(missing)
    bwrap = ""
    if isolate:
        try:
            bwrap = probe(os.environ.get("PATH"))
        except AgentVaultError as e:
            out.error(e)
            exit_with(WRAPPER_FAILED)
    c = client()
    sandbox: isolation.Plan | None = None
    session: RunSession | None = None
    try:
        session = open_session(
            c,
            vault=vault,
            agent=agent,
            ttl=ttl_s,
            policy=policy,
            label=label or f"run {Path(argv[0]).name}",
            only_services=split_list(only_service),
            only_methods=split_list(only_method),
        )
        ca = fetch_ca(c)
        if ca.proxy_port is None:
            raise BadServerResponse("the server did not report its proxy port (X-MITM-Port)")
        _cert, bundle = write_ca_files(ca.pem, G.home / "certs", home=G.home)
        discover = Client(c.addr, G.home, token=session.token).get("/v1/discover")
        if session.session_id is None and policy and policy != discover.get("unmatched_policy"):
            raise InvalidRequest(
                f"--policy {policy} differs from the outer session's "
                f"{discover.get('unmatched_policy')}; a nested run cannot change it"
            )
        proxy_host = urlsplit(c.addr).hostname or "127.0.0.1"
        if isolate:
            sandbox = isolation.plan(c.addr, proxy_host, ca.proxy_port)
        env = build_child_env(
            os.environ,
            token=session.token,
            vault=session.vault,
            addr=sandbox.addr if sandbox else c.addr,
            proxy_host=sandbox.proxy_host if sandbox else proxy_host,
            proxy_port=sandbox.proxy_port if sandbox else ca.proxy_port,
            ca_bundle=str(sandbox_certs(G.home) / bundle.name if sandbox else bundle),
            no_proxy=no_proxy or [],
            placeholders=placeholder or [],
            canaries=canaries,
            service_hosts=[s["host"] for s in discover.get("services", [])],
        )
    except AgentVaultError as e:
        out.error(e)
        _revoke(c, session)
        exit_with(WRAPPER_FAILED)
    except BaseException:  # interrupted or a bug: still revoke what was minted, then let main() report it
        _revoke(c, session)
        raise
    _banner(session, c.addr, f"http://{proxy_host}:{ca.proxy_port}", discover, isolated=sandbox is not None)
    start_seq = None if out.quiet or session.session_id is None else latest_seq(c, session.vault)
    renewer = None
    if session.session_id is not None and not session.child:
        sid = session.session_id
        renewer = Renewer(lambda: c.post(f"/v1/sessions/{sid}/renew", {"ttl_seconds": ttl_s}), ttl_s).start()
    try:
        code = isolation.run(bwrap, sandbox, argv, env, home=G.home) if sandbox else spawn(argv, env)
        if not out.quiet:
            report_unmatched(
                c, session, start_seq, [str(x.get("host")) for x in discover.get("services", [])]
            )
    finally:
        if renewer is not None:
            renewer.stop()
        _revoke(c, session)
    exit_with(code)


def _revoke(c: Client, session: RunSession | None) -> None:
    if session is None or session.session_id is None:
        return
    try:
        acting_client(c, session).delete(f"/v1/sessions/{session.session_id}")
    except AgentVaultError as e:
        if e.code == NotFound.code:  # revoked already (by a human, or with the session that minted it)
            return
        out.warn(
            f"agent-vault: warning: could not revoke session {session.session_id} ({e.message}); "
            f"it expires by itself"
        )


_SETTINGS = {"allow_interspersed_args": False, "ignore_unknown_options": True}
vault_app.command("run", context_settings=_SETTINGS)(run_command)
app.command("run", context_settings=_SETTINGS, help="Alias of 'vault run'.")(run_command)
