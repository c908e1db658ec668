"""ProxyRunner: an embedded mitmproxy Master with a lean addon chain, as an async context manager.

Lean chain (PERF-NOTES): core, proxyserver, nextlayer, tlsconfig + VaultAddon. No dumper, save,
HAR, web UI or onboarding (SPEC §14.13). The CA key file mitmproxy loads is written into run/
(0600) and deleted as soon as the engine has read it -- which is after every addon's `running`
hook: TlsConfig reloads the CA from confdir there and, if the file is gone, silently makes a new
mitmproxy CA that no agent trusts. Start fails if the engine's CA is not ours.

CA rotation (`prepare_ca`) builds a new in-memory certificate store and swaps it into TlsConfig:
new TLS connections get leaf certificates from the new CA at once; open ones keep theirs.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from pathlib import Path
from types import TracebackType

import agent_vault.proxy.lean_mitmproxy  # noqa: F401 - before mitmproxy.master imports mitmproxy.addons

# isort: split
import certifi
from cryptography import x509
from mitmproxy import certs, master, options
from mitmproxy.addons import core as mcore
from mitmproxy.addons import next_layer, proxyserver, tlsconfig

from agent_vault.errors import ConfigError, Locked, ServerStartError
from agent_vault.home import write_private
from agent_vault.keys import CA, write_engine_ca
from agent_vault.proxy import dispatch, engine, leafcerts, reuseport

log = logging.getLogger("agent_vault.proxy")
CLOSE_WAIT = 2.0  # after the drain: how long closed connections get to run their hooks (audit)


class BindError(ServerStartError):
    code = "bind_failed"
    status = 500


def upstream_bundle(run_dir: Path, extra_ca: Path | None) -> Path:
    """certifi roots + the system bundle + --upstream-ca, for upstream verification."""
    parts = [Path(certifi.where()).read_bytes()]
    system = Path("/etc/ssl/certs/ca-certificates.crt")
    if system.is_file():
        parts.append(system.read_bytes())
    if extra_ca is not None:
        try:
            parts.append(extra_ca.read_bytes())
        except OSError:
            raise ConfigError(f"cannot read --upstream-ca {extra_ca}") from None
    path = run_dir / "upstream-ca.pem"
    write_private(path, b"\n".join(parts), mode=0o644)
    return path


class _Running:
    """Set once every addon before it in the chain has run its `running` hook."""

    def __init__(self) -> None:
        self.event = asyncio.Event()

    def running(self) -> None:
        self.event.set()


class ProxyRunner:
    """Start/stop the proxy listener on the running loop; `port` is the bound port."""

    def __init__(
        self,
        addon: object,
        *,
        host: str,
        port: int,
        run_dir: Path,
        ca: CA,
        upstream_ca: Path | None,
        idle_timeout: int = 900,
        reuse_port: bool = False,
        http2: bool = True,
    ) -> None:
        self.addon, self.host, self.port = addon, host, port
        self.run_dir, self.ca, self.upstream_ca = run_dir, ca, upstream_ca
        self.idle_timeout = idle_timeout
        self.reuse_port = reuse_port  # SO_REUSEPORT: replicas on one host share the port (reuseport.py)
        self.http2 = http2  # False: ALPN offers only http/1.1 on both sides (`--offer-h2 off`)
        self.master: master.Master | None = None
        self._task: asyncio.Task[None] | None = None
        self._tls: tlsconfig.TlsConfig | None = None

    async def __aenter__(self) -> ProxyRunner:
        ca_file = write_engine_ca(self.run_dir, self.ca)
        bundle = upstream_bundle(self.run_dir, self.upstream_ca)
        logging.getLogger("mitmproxy").setLevel(logging.ERROR)
        opts = options.Options(listen_host=self.host, listen_port=self.port, confdir=str(self.run_dir))
        engine.install()
        leafcerts.install()
        if self.reuse_port:
            reuseport.install()
        m = master.Master(opts)
        ps = proxyserver.Proxyserver()  # type: ignore[no-untyped-call]
        tls, started = tlsconfig.TlsConfig(), _Running()
        chain = (mcore.Core(), ps, next_layer.NextLayer(), tls, self.addon, started)
        m.addons.add(*chain)  # type: ignore[no-untyped-call]
        opts.update(  # type: ignore[no-untyped-call]
            connection_strategy="lazy",
            rawtcp=False,  # non-HTTP in an intercepted connection is parsed (refused), never relayed raw
            ssl_verify_upstream_trusted_ca=str(bundle),
            http2=self.http2,
            websocket=True,
            stream_large_bodies="1m",
            tcp_timeout=self.idle_timeout,
        )
        self.master = m
        self._task = asyncio.create_task(m.run())
        try:
            # Master.run binds the listeners, then runs the `running` hooks (TlsConfig loads the CA).
            done = asyncio.ensure_future(started.event.wait())
            await asyncio.wait([done, self._task], timeout=10, return_when=asyncio.FIRST_COMPLETED)
            done.cancel()
            m.addons.remove(started)  # type: ignore[no-untyped-call]  # no per-flow hook walk
            dispatch.install(m.addons)  # the chain is final: resolve each hook's callables once
            store = tls.certstore if started.event.is_set() else None
            if store is None or store.default_ca.to_pem().strip() != self.ca.cert_pem.strip():
                raise ServerStartError("the proxy engine did not load the instance CA")
            addrs = ps.listen_addrs()
            if not addrs:
                raise BindError(
                    f"cannot bind the proxy listener on {self.host}:{self.port}",
                    hint="Pick another --proxy-port or stop what uses it.",
                )
            self.port = addrs[0][1]
            self._tls = tls
        except BaseException:
            await self.__aexit__(None, None, None)
            raise
        finally:
            ca_file.unlink(missing_ok=True)
        return self

    def prepare_ca(self, ca: CA) -> Callable[[], None]:
        """Build the engine's certificate store for `ca` (raises on a bad key/cert, changing nothing) and
        return the call that installs it. Thread-safe: the install is one attribute assignment, which the
        loop sees whole; leaf certificates minted by the old store are not reused (new cache)."""
        tls = self._tls
        if tls is None or tls.certstore is None:
            raise Locked("the proxy engine is not running", hint="Retry once the server has started.")
        key = certs.load_pem_private_key(ca.key_pem, None)
        cert = x509.load_pem_x509_certificate(ca.cert_pem)
        crl = certs.dummy_crl(key, cert)
        store = certs.CertStore(key, certs.Cert(cert), None, crl, tls.certstore.dhparams)

        def install() -> None:
            self.ca = ca
            tls.certstore = store

        return install

    async def drain(self, timeout: float) -> int:
        """SPEC §2.1 stop: accept no new connection, let the requests in flight finish (at most `timeout`
        seconds), then close every client connection, each request still open recorded as the agent's
        hang-up would be (the engine's and the fast path's `error` paths write its audit record).
        Returns how many requests were still in flight at the deadline."""
        m = self.master
        if m is None:
            return 0
        ps = m.addons.get("proxyserver")  # type: ignore[no-untyped-call]
        with contextlib.suppress(Exception):
            await ps.servers.update([])  # the listeners close: no new connection
        in_flight = getattr(self.addon, "in_flight", lambda: 0)
        deadline = time.monotonic() + timeout
        while in_flight() and time.monotonic() < deadline:
            await asyncio.sleep(0.02)
        left = int(in_flight())
        for handler in list(ps.connections.values()):
            with contextlib.suppress(Exception):
                handler.close_connection(handler.client)
        closing = time.monotonic() + CLOSE_WAIT
        while ps.connections and time.monotonic() < closing:  # their disconnect hooks (audit) run
            await asyncio.sleep(0.02)
        return left

    async def __aexit__(
        self, et: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        m, task = self.master, self._task
        if m is None or task is None:
            return
        ps = m.addons.get("proxyserver")  # type: ignore[no-untyped-call]
        with contextlib.suppress(Exception):
            await ps.servers.update([])
        dispatch.uninstall(m.addons)
        m.shutdown()  # type: ignore[no-untyped-call]
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await asyncio.wait_for(task, timeout=10)
        self.master, self._tls = None, None
        engine.uninstall()
        leafcerts.uninstall()
        reuseport.uninstall()
