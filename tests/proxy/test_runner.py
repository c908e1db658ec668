"""ProxyRunner: the engine serves the instance CA, and its key file does not outlive start-up."""

from __future__ import annotations

import asyncio
import datetime
import socket
import ssl
import subprocess
import sys
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from helpers.env import base_env
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
