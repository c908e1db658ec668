"""`agent-vault server`: one asyncio loop = store + keys + ProxyRunner + uvicorn + signals.

Prints exactly one line to stdout when both listeners are bound:
`agent-vault ready api=http://H:P proxy=http://H:Q key-mode=M`. Everything else goes to stderr.
A bind failure on either listener is fatal (exit 1) and leaves nothing running. One server per home:
`run` holds `<home>/server.lock` (agent_vault/lifecycle.py) from before the master password is asked
until exit, and publishes its pid and addresses in `<home>/server.json` just before the ready line.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import logging
import os
import resource
import signal
import socket
import sys
from collections.abc import Callable, Generator, Iterator

import uvicorn

from agent_vault import gcpolicy, keys
from agent_vault.api.app import create_app
from agent_vault.audit import AuditWriter
from agent_vault.config import Settings
from agent_vault.core import Core, Services
from agent_vault.domain.ca import follow_stored_ca
from agent_vault.errors import ConfigError, MasterPasswordRequired, WrongMasterPassword
from agent_vault.freshness import Freshness
from agent_vault.holds import HoldManager
from agent_vault.home import Home
from agent_vault.housekeeping import start_housekeeping
from agent_vault.instance import Unlocked, identify, unlock
from agent_vault.lifecycle import ServerLock
from agent_vault.metrics import Metrics
from agent_vault.notify import Notifier
from agent_vault.oskeyring import KeyringUnavailable
from agent_vault.proxy.addon import VaultAddon
from agent_vault.proxy.runner import BindError, ProxyRunner
from agent_vault.proxy.ssrf import Egress
from agent_vault.runtime import Runtime
from agent_vault.store.changes import listen_connection, origin_of
from agent_vault.usage import UsageMeter

log = logging.getLogger("agent_vault")
DRAIN_SECONDS = 10.0  # SPEC §2.1: in-flight requests get this long after SIGINT/SIGTERM


class _Server(uvicorn.Server):
    """uvicorn without its own signal handling: the server owns SIGINT/SIGTERM."""

    @contextlib.contextmanager
    def capture_signals(self) -> Generator[None, None, None]:
        yield


def _bind(host: str, port: int, reuse_port: bool = False) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)  # asyncio sets TCP_NODELAY
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        if reuse_port:  # replicas on one host share the API port too (--reuse-port)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        sock.bind((host, port))
    except OSError:
        sock.close()
        raise BindError(
            f"cannot bind the API listener on {host}:{port} (address in use or not allowed)",
            hint="Pick another --port or stop what uses it.",
        ) from None
    sock.listen(512)
    sock.setblocking(False)
    return sock


def _is_loopback(host: str) -> bool:
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return host == "localhost"


def master_password(key_mode: str, instance_id: str, password_stdin: bool) -> str | None:
    """SPEC §4.2 sources: env (then removed) > stdin > keyring (keyring mode); None for passwordless,
    or when the terminal must be asked (`prompted_unlock`)."""
    if key_mode == "passwordless":
        return None
    env = keys.master_password_from_env()
    if env:
        return env
    if password_stdin:
        return sys.stdin.readline().rstrip("\r\n")
    if key_mode == "keyring":
        try:
            kr = keys.keyring_get(instance_id)
        except KeyringUnavailable as e:
            kr = None
            print(
                f"note: OS keyring unavailable ({e}); asking the other master password sources",
                file=sys.stderr,
            )
        else:
            if kr is None:
                print("note: no master password in the OS keyring for this instance", file=sys.stderr)
        if kr:
            return kr
    if foreground_tty():
        return None  # the caller asks at the terminal (`prompted_unlock`)
    raise MasterPasswordRequired(
        "the master password is required and there is no terminal to ask for it",
        hint="Set AGENT_VAULT_MASTER_PASSWORD or pass --password-stdin; to run it in the background: "
        "'agent-vault server --detach' with one of them",
    )


PROMPT_ATTEMPTS = 3


def prompted_unlock[T](unlock_with: Callable[[str], T]) -> T:
    """Ask for the master password at the terminal until `unlock_with` accepts it: 3 attempts, then its
    WrongMasterPassword stands (SPEC §4.1)."""
    import getpass

    for attempt in range(1, PROMPT_ATTEMPTS + 1):
        try:
            return unlock_with(getpass.getpass("Master password: "))
        except WrongMasterPassword:
            if attempt == PROMPT_ATTEMPTS:
                raise
            print("wrong master password, try again", file=sys.stderr)
    raise AssertionError("unreachable")


def foreground_tty() -> bool:
    """stdin is a terminal and we are its foreground job. A background job (`agent-vault server &`) that
    reads the terminal is stopped by the shell (SIGTTIN) and would wait silently forever."""
    try:
        fd = sys.stdin.fileno()
        return os.isatty(fd) and os.tcgetpgrp(fd) == os.getpgrp()
    except (OSError, ValueError, AttributeError):
        return False


def resolve_overrides() -> dict[str, str]:
    """AGENT_VAULT_RESOLVE=host=ip,... : static name overrides (split DNS, tests). Still SSRF-checked."""
    out: dict[str, str] = {}
    for item in os.environ.get("AGENT_VAULT_RESOLVE", "").split(","):
        name, _, ip = item.strip().partition("=")
        if name and ip:
            out[name.lower()] = ip
    return out


async def serve(
    settings: Settings,
    unlocked: Unlocked,
    ready: asyncio.Event | None = None,
    lock: ServerLock | None = None,
) -> None:
    """Run until SIGINT/SIGTERM (or `core.services.stop` is set). With `lock` (held by the caller), the
    state file (pid and addresses) is written just before the ready line."""
    home = Home(settings.home)
    home.reset_run_dir()
    store = unlocked.store
    runtime = Runtime(store, unlocked.dek)
    await asyncio.to_thread(runtime.reload)
    audit = AuditWriter(store.engine, home.audit_head)
    audit.start()
    metrics = Metrics()
    core = Core(
        settings,
        home,
        store,
        unlocked.instance_id,
        unlocked.key_mode,
        unlocked.dek,
        unlocked.ca,
        runtime,
        audit,
    )
    stop = asyncio.Event()
    core.services = Services(metrics=metrics, resolve=resolve_overrides(), stop=stop)
    core.services.holds = HoldManager(
        core.record, lambda event, data: core.notify(event, data["vault"], data)
    )
    if settings.notify_url:
        guard = Egress(settings.allow_net, core.services.resolve)
        core.services.notifier = Notifier(
            settings.notify_url,
            guard.address,
            public_url=lambda: core.public_url,
            upstream_ca=settings.upstream_ca,
        )
        core.services.notifier.start()
    core.services.usage = UsageMeter(core.home.root / "usage.json")  # token budgets survive restarts
    if store.engine.dialect.name == "postgresql":  # replicas: follow the other replicas' changes
        core.services.freshness = Freshness(
            runtime,
            lambda: listen_connection(store.engine),
            bound=settings.freshness_bound,
            on_full_reload=lambda: follow_stored_ca(core),  # a CA rotated through another replica
            origin=origin_of(store.engine),
        )
        core.services.freshness.start()
    housekeeping = start_housekeeping(core)
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError, RuntimeError):
            loop.add_signal_handler(sig, stop.set)
    try:
        async with contextlib.AsyncExitStack() as stack:
            api_sock = _bind(settings.host, settings.port, settings.reuse_port)
            stack.callback(api_sock.close)
            api_port = api_sock.getsockname()[1]
            core.api_url = f"http://{_fmt(settings.host)}:{api_port}"
            runner: ProxyRunner | None = None
            if not settings.disable_proxy:
                runner = ProxyRunner(
                    VaultAddon(core, metrics),
                    host=settings.effective_proxy_host,
                    port=settings.proxy_port,
                    run_dir=home.run_dir,
                    ca=unlocked.ca,
                    upstream_ca=settings.upstream_ca,
                    idle_timeout=settings.idle_timeout,
                    reuse_port=settings.reuse_port,
                    http2=settings.offer_h2,
                )
                await stack.enter_async_context(runner)
                core.proxy_port = runner.port
                core.proxy_ready = True
                core.services.ca_engine = runner.prepare_ca  # `ca rotate` re-signs new connections
            app = create_app(allowed_hosts=lambda: _allowed_hosts(core))
            app.state.core = core
            config = uvicorn.Config(  # ws="none": the API has no WebSocket route (and no `websockets` import)
                app, log_level="warning", lifespan="off", access_log=False, timeout_keep_alive=30, ws="none"
            )
            server = _Server(config)
            task = asyncio.create_task(server.serve(sockets=[api_sock]))
            while not server.started and not task.done():
                await asyncio.sleep(0.01)
            if task.done():
                task.result()
                raise BindError("the API server failed to start")
            _warnings(settings, unlocked.key_mode, home)
            core.record("server.start", "server", details={"no_step_up": settings.no_step_up})
            proxy = (
                f"http://{_fmt(settings.effective_proxy_host)}:{core.proxy_port}"
                if core.proxy_port
                else "off"
            )
            if lock is not None:
                lock.write_state(core.api_url, proxy, unlocked.key_mode)
            gcpolicy.tune_for_server()  # start-up is done: freeze it, fewer collections from here on
            print(
                f"agent-vault ready api={core.api_url} proxy={proxy} key-mode={unlocked.key_mode}", flush=True
            )
            if ready is not None:
                ready.set()
            await stop.wait()
            log.info("shutting down")
            if core.services.holds is not None and core.services.holds.shutdown():
                await asyncio.sleep(0.3)  # let the held requests' 503 answers go out
            server.should_exit = True  # SPEC §2.1: both listeners stop accepting, in-flight work gets 10 s
            drained = runner.drain(DRAIN_SECONDS) if runner is not None else asyncio.sleep(0)
            api_done = asyncio.wait_for(task, timeout=DRAIN_SECONDS)
            await asyncio.gather(api_done, drained, return_exceptions=True)
    finally:
        housekeeping.cancel()
        if core.services.freshness is not None:
            await asyncio.to_thread(core.services.freshness.stop)
        if core.services.notifier is not None:
            await core.services.notifier.close()
        with contextlib.suppress(Exception):
            core.record("server.stop", "server")
        with contextlib.suppress(Exception):  # bookkeeping: never in the way of a clean stop
            await asyncio.to_thread(core.services.last_used.flush, store)
        await asyncio.to_thread(audit.close)
        home.wipe_run_dir()
        store.close()


def _fmt(host: str) -> str:
    return f"[{host}]" if ":" in host else host


def _allowed_hosts(core: Core) -> set[str]:
    """Host header values the API accepts (DNS-rebinding guard)."""
    port = core.api_url.rsplit(":", 1)[-1]
    hosts = {f"{_fmt(core.settings.host)}:{port}", f"localhost:{port}", f"127.0.0.1:{port}"}
    if core.settings.public_url:
        from urllib.parse import urlsplit

        netloc = urlsplit(core.settings.public_url).netloc
        hosts |= {netloc, netloc.split(":")[0]}
    return hosts


def _warnings(settings: Settings, key_mode: str, home: Home) -> None:
    if key_mode == "passwordless":
        print(keys.PASSWORDLESS_WARNING.format(path=home.dek_file), file=sys.stderr)
    if settings.no_step_up:
        print(
            "WARNING: step-up authentication is disabled (--no-step-up): throwaway instances only",
            file=sys.stderr,
        )
    for h in (settings.host, settings.effective_proxy_host):
        if not _is_loopback(h):
            print(f"WARNING: listening on {h}: tokens cross that link in cleartext", file=sys.stderr)


@contextlib.contextmanager
def _logging(level: str) -> Iterator[None]:
    """`--log-level` applies to agent-vault's own loggers only. Third-party libraries stay at WARNING
    whatever the level: their debug output includes header values (hpack logs every header it
    encodes, Authorization included), which would put credentials in the server log (SPEC §14.1)."""
    logging.basicConfig(
        stream=sys.stderr,
        level=logging.WARNING,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    logging.getLogger("agent_vault").setLevel(getattr(logging, level.upper(), logging.INFO))
    yield


def raise_nofile_limit() -> int:
    """Raise the soft open-files limit to the hard one (capped at 2**20) and return it: every proxy
    connection is a descriptor, and a flood of idle sockets must not starve the API of them."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = 1 << 20 if hard == resource.RLIM_INFINITY else min(hard, 1 << 20)
    if soft != resource.RLIM_INFINITY and soft < target:
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


def run(
    settings: Settings,
    password_stdin: bool = False,
    lock: ServerLock | None = None,
    master: str | None = None,
) -> None:
    """Blocking entry point used by the CLI. Raises AgentVaultError for user-facing failures.

    `lock`: the home's ServerLock, already held (the CLI takes it before any prompt); None takes it here.
    `master`: the master password when the caller has it already (a first start that just ran `init`)."""
    settings.sqlalchemy_url()  # checks the URL scheme early
    if settings.reuse_port and not hasattr(socket, "SO_REUSEPORT"):
        raise ConfigError("--reuse-port needs SO_REUSEPORT, which this platform lacks")
    raise_nofile_limit()
    home = Home(settings.home)
    with contextlib.ExitStack() as stack:
        if lock is None:
            lock = stack.enter_context(ServerLock(home))
        ident = identify(settings)
        with _logging(settings.log_level):
            password = master or master_password(ident.key_mode, ident.instance_id, password_stdin)
            if password is None and ident.key_mode != "passwordless":  # at the terminal: 3 attempts
                unlocked = prompted_unlock(lambda pw: unlock(settings, pw))
            else:
                unlocked = unlock(settings, password)
            asyncio.run(serve(settings, unlocked, lock=lock))
