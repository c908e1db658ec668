"""ProxyRunner: the engine serves the instance CA, and its key file does not outlive start-up."""

from __future__ import annotations

import asyncio
import datetime
import json
import re
import socket
import ssl
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import trustme
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from helpers.env import base_env
from helpers.proxy import RawConn, basic
from helpers.server import ServerProc
from helpers.upstream import PlainUpstream, TLSUpstream
from mitmproxy import certs
from mitmproxy.addons import tlsconfig
from mitmproxy.proxy.layers import http as mhttp

from agent_vault import keys
from agent_vault.errors import AgentVaultError
from agent_vault.home import ensure_dir
from agent_vault.proxy import engine
from agent_vault.proxy.runner import ProxyRunner


class Quiet:
    """An addon without hooks."""


def _leaf_issuer(port: int, cafile: Path) -> str:
    return _leaf(port, cafile)[0]


def _leaf(port: int, cafile: Path) -> tuple[str, x509.Certificate]:
    """(issuer organisation, the leaf) the proxy presents for example.com."""
    with socket.create_connection(("127.0.0.1", port), timeout=5) as raw:
        raw.sendall(b"CONNECT example.com:443 HTTP/1.1\r\nHost: example.com:443\r\n\r\n")
        assert raw.recv(1024).startswith(b"HTTP/1.1 200")
        ctx = ssl.create_default_context(cafile=str(cafile))  # verification fails unless our CA signed it
        with ctx.wrap_socket(raw, server_hostname="example.com") as tls:
            cert = tls.getpeercert()
            der = tls.getpeercert(binary_form=True)
    assert der is not None
    return str(dict(x[0] for x in cert["issuer"])["organizationName"]), x509.load_der_x509_certificate(der)


def test_engine_uses_the_instance_ca_and_wipes_the_key_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # TlsConfig.running() reloads the CA file; make it late, as it sometimes is in a busy process.
    original = tlsconfig.TlsConfig.running

    async def late_running(self: tlsconfig.TlsConfig) -> None:
        await asyncio.sleep(0.2)  # scenario: the late reload itself, not a wait for something
        original(self)

    monkeypatch.setattr(tlsconfig.TlsConfig, "running", late_running)
    ca = keys.new_ca("0123456789abcdef")
    cafile = tmp_path / "ca.pem"
    cafile.write_bytes(ca.cert_pem)
    run_dir = ensure_dir(tmp_path / "run")

    async def once() -> None:
        runner = ProxyRunner(Quiet(), host="127.0.0.1", port=0, run_dir=run_dir, ca=ca, upstream_ca=None)
        async with runner:
            assert mhttp.HttpStream is engine.VaultHttpStream
            assert not (run_dir / "mitmproxy-ca.pem").exists()  # the key lived only for start-up
            issuer, leaf = await asyncio.to_thread(_leaf, runner.port, cafile)
            assert issuer == "agent-vault"
            # SPEC §4.3: leaves valid <= 30 days (mitmproxy's default is 199)
            assert leaf.not_valid_after_utc - leaf.not_valid_before_utc <= datetime.timedelta(days=30)
        assert mhttp.HttpStream is not engine.VaultHttpStream

    asyncio.run(once())


def test_the_server_imports_only_the_lean_chain_of_mitmproxy_addons(tmp_path: Path) -> None:
    """SPEC §14.13: no web UI, onboarding app, HAR export or LDAP auth is even imported."""
    code = (
        "import sys\n"
        "from agent_vault.proxy import engine_compat\n"
        "engine_compat.require_compatible()  # what `agent-vault server` runs first\n"
        "import agent_vault.server\n"
        "loaded = {m.split('.')[0] for m in sys.modules} | set(sys.modules)\n"
        "unwanted = {'flask', 'ldap3', 'mitmproxy.tools.web', 'mitmproxy.addons.onboarding',\n"
        "            'mitmproxy.addons.savehar', 'mitmproxy.addons.save', 'mitmproxy.addons.dumper'}\n"
        "bad = sorted(loaded & unwanted)\n"
        "assert not bad, bad\n"
        "assert 'mitmproxy.addons.proxyserver' in sys.modules\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, env=base_env(tmp_path))


def test_prepare_ca_switches_new_handshakes_only_when_installed(tmp_path: Path) -> None:
    """CA rotation, engine side: preparing builds the new store but changes nothing; installing makes
    the very next handshake use the new CA (no restart) and the old CA no longer verifies."""
    old = keys.new_ca("0123456789abcdef")
    new = keys.new_ca("0123456789abcdef")
    old_file, new_file = tmp_path / "old.pem", tmp_path / "new.pem"
    old_file.write_bytes(old.cert_pem)
    new_file.write_bytes(new.cert_pem)
    run_dir = ensure_dir(tmp_path / "run")

    async def once() -> None:
        runner = ProxyRunner(Quiet(), host="127.0.0.1", port=0, run_dir=run_dir, ca=old, upstream_ca=None)
        async with runner:
            install = runner.prepare_ca(new)
            assert await asyncio.to_thread(_leaf_issuer, runner.port, old_file) == "agent-vault"
            install()
            assert runner.ca is new
            assert await asyncio.to_thread(_leaf_issuer, runner.port, new_file) == "agent-vault"
            with pytest.raises(ssl.SSLCertVerificationError):
                await asyncio.to_thread(_leaf_issuer, runner.port, old_file)
        with pytest.raises(AgentVaultError):  # a stopped engine cannot be rotated
            runner.prepare_ca(new)

    asyncio.run(once())


def test_the_ca_is_ecdsa_p256_with_mitmproxys_extensions() -> None:
    """New CAs are ECDSA P-256 (the leaf certificates mitmproxy issues carry the CA's key, so every agent
    handshake signs with it: ~10x cheaper than RSA-2048) and otherwise shaped like mitmproxy's own CA:
    the same extensions with the same criticality, 10 years, and mitmproxy's `dummy_cert` (what its
    CertStore calls) issues leaves from it that verify."""
    ca = keys.new_ca("0123456789abcdef")
    cert = x509.load_pem_x509_certificate(ca.cert_pem)
    key = cert.public_key()
    assert isinstance(key, ec.EllipticCurvePublicKey) and key.curve.name == "secp256r1"
    _, reference = certs.create_ca("agent-vault", "reference", 2048)

    def shape(c: x509.Certificate) -> list[tuple[str, bool]]:
        return sorted((e.oid.dotted_string, e.critical) for e in c.extensions)

    assert shape(cert) == shape(reference)
    assert cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    assert (cert.not_valid_after_utc - cert.not_valid_before_utc).days == certs.CA_EXPIRY.days
    priv = serialization.load_pem_private_key(ca.key_pem, None)  # as the engine loads it from its confdir
    leaf = certs.dummy_cert(priv, cert, "api.example.com", [x509.DNSName("api.example.com")], None)
    leaf.to_cryptography().verify_directly_issued_by(cert)


# ---- SPEC §14.13 in the running server ----------------------------------------------------------------

# Planted in the server process (sitecustomize): once the proxy engine has started, write what it runs
# (its addon chain, every option it knows with the values of the risky ones, the mitmproxy modules
# loaded) to AV_CHAIN_FILE. It reads; it changes nothing.
CHAIN_PROBE = """
import json
import os
import sys
if os.environ.get("AV_CHAIN_FILE"):
    import agent_vault.proxy.runner as _runner
    _enter = _runner.ProxyRunner.__aenter__

    async def __aenter__(self):
        out = await _enter(self)
        m = self.master
        opts = m.options
        probe = {
            "chain": [[type(a).__module__, type(a).__name__] for a in m.addons.chain],
            "names": sorted(m.addons.lookup),
            "options": sorted(opts.keys()),
            "values": {k: getattr(opts, k) for k in ("mode", "store_streamed_bodies", "server")},
            "modules": sorted(n for n in sys.modules if n.startswith(("mitmproxy.addons", "mitmproxy.tool"))),
        }
        with open(os.environ["AV_CHAIN_FILE"], "w") as f:
            json.dump(probe, f)
        return out

    _runner.ProxyRunner.__aenter__ = __aenter__
"""
LEAN_CHAIN = [
    ["mitmproxy.addons.core", "Core"],
    ["mitmproxy.addons.proxyserver", "Proxyserver"],
    ["mitmproxy.addons.next_layer", "NextLayer"],
    ["mitmproxy.addons.tlsconfig", "TlsConfig"],
    ["agent_vault.proxy.addon", "VaultAddon"],
]
# options that only dumping, saving, HAR export, replay, scripts, the web UI or the onboarding app declare
RISKY_OPTION = re.compile(r"save|har|dump|flow_detail|web_|onboarding|rfile|replay|script|intercept|termlog")


@pytest.fixture(scope="module")
def live(
    tmp_path_factory: pytest.TempPathFactory, upstream_ca: trustme.CA
) -> Iterator[tuple[ServerProc, Path]]:
    tmp = tmp_path_factory.mktemp("lean-chain")
    (tmp / "probe").mkdir()
    (tmp / "probe" / "sitecustomize.py").write_text(CHAIN_PROBE)
    chain_file = tmp / "chain.json"
    env = {
        "PYTHONPATH": str(tmp / "probe"),
        "AV_CHAIN_FILE": str(chain_file),
        "AGENT_VAULT_RESOLVE": "mitm.it=127.0.0.1",
    }
    with ServerProc(tmp, upstream_ca, env=env) as s:
        yield s, chain_file


def test_the_running_engine_has_exactly_the_lean_addon_chain(live: tuple[ServerProc, Path]) -> None:
    """SPEC §14.13: the live Master of `agent-vault server` runs exactly the lean chain (no dumper, save,
    HAR, web UI or onboarding addon), declares none of their options, and never loaded their modules."""
    _, chain_file = live
    probe = json.loads(chain_file.read_text())
    assert probe["chain"] == LEAN_CHAIN
    assert probe["names"] == sorted(["core", "proxyserver", "nextlayer", "tlsconfig", "vaultaddon"])
    assert [o for o in probe["options"] if RISKY_OPTION.search(o)] == []
    assert "connection_strategy" in probe["options"]  # the probe did read the engine's options
    assert probe["values"] == {
        "mode": ["regular"],
        "store_streamed_bodies": False,
        "server": True,
    }
    unwanted = (
        "onboarding",
        "dumper",
        "save",
        "savehar",
        "web",
        "asgiapp",
        "script",
        "readfile",
        "serverplayback",
    )
    loaded = {m.rsplit(".", 1)[-1] for m in probe["modules"]}
    assert not loaded & set(unwanted), probe["modules"]
    assert not any(m.startswith("mitmproxy.tools") for m in probe["modules"]), probe["modules"]


ONBOARDING_PATHS = ("/", "/cert/pem")  # the onboarding app's page and its CA download


def _not_onboarding(status: int, headers: dict[str, str], body: bytes) -> None:
    """Not mitmproxy's onboarding app (its page names mitmproxy and hands out its CA certificate)."""
    low = body.lower()
    assert b"mitmproxy" not in low and b"begin certificate" not in low, (status, body[:300])
    assert not headers.get("content-type", "").startswith(("text/html", "application/x-x509")), headers


def test_mitm_it_never_reaches_an_onboarding_app(
    live: tuple[ServerProc, Path], upstream_ca: trustme.CA
) -> None:
    """http(s)://mitm.it/ through the proxy is an ordinary host: refused (no token, or by policy and
    egress), or, when a service names it, answered by that host itself -- never by an onboarding app."""
    srv, _ = live
    token = srv.make_agent("onboarding-probe")
    with RawConn(srv.proxy_port) as conn:  # no token: the challenge, whatever the host
        r = conn.request("GET", "http://mitm.it/", {"Host": "mitm.it"})
    assert r.status == 407 and r.headers["x-agent-vault-proxy-error"] == "true"
    _not_onboarding(r.status, r.headers, r.body)
    for path in ("/", "/cert/pem"):  # unlisted (the default policy, tunnel): no onboarding page either
        with RawConn(srv.proxy_port) as conn:
            r = conn.request(
                "GET", f"http://mitm.it{path}", {"Host": "mitm.it", "Proxy-Authorization": basic(token)}
            )
        _not_onboarding(r.status, r.headers, r.body)
        assert r.headers.get("x-agent-vault-proxy-error") == "true" or r.status != 200, (r.status, r.body)
    with TLSUpstream(ca=upstream_ca, hostnames=("mitm.it",)) as tls_up, PlainUpstream() as plain:
        for port, scheme in ((tls_up.port, "https"), (plain.port, "http")):
            srv.add_service(
                {
                    "name": f"mitm-it-{scheme}",
                    "host": "mitm.it",
                    "port": port,
                    "auth": {"type": "passthrough"},
                    "allow_http": scheme == "http",
                }
            )
        target = f"mitm.it:{tls_up.port}"
        with RawConn(srv.proxy_port) as conn:  # MITM'd (no ALPN: the engine, where addons see requests)
            assert conn.connect(target, {"Proxy-Authorization": basic(token)}).status == 200
            conn.start_tls("mitm.it", srv.ca_bundle)
            answers = [conn.request("GET", p, {"Host": target}) for p in ONBOARDING_PATHS]
        with RawConn(srv.proxy_port) as conn:  # absolute-form http://
            hdrs = {"Host": f"mitm.it:{plain.port}", "Proxy-Authorization": basic(token)}
            answers += [
                conn.request("GET", f"http://mitm.it:{plain.port}{p}", hdrs) for p in ("/", "/cert/pem")
            ]
        for r, path in zip(answers, ONBOARDING_PATHS * 2, strict=True):
            _not_onboarding(r.status, r.headers, r.body)
            assert (r.status, r.json()) == (404, {"error": "not found", "path": path})  # the host's own
        assert [q["path"] for q in tls_up.requests_seen.snapshot()] == list(ONBOARDING_PATHS)
        assert [q["path"] for q in plain.requests_seen.snapshot()] == list(ONBOARDING_PATHS)
    with RawConn(srv.proxy_port) as conn:  # https to the unlisted default port: refused at CONNECT
        r = conn.connect("mitm.it:443", {"Proxy-Authorization": basic(token)})
    _not_onboarding(r.status, r.headers, r.body)
