"""The client-side CA files (SPEC §2.2, §7.3): `certs/ca-cert.pem` and `certs/ca-bundle.pem`, both 0644.

The bundle is the system trust roots followed by the instance CA, because `SSL_CERT_FILE` and friends replace
(not extend) the trust store of most clients, and tunnelled hosts present their real certificates.
Only certificates are ever written here; the CA key never leaves the server.
"""

from __future__ import annotations

import os
import ssl
from dataclasses import dataclass
from pathlib import Path

from agent_vault.cli.client import ApiError, Client
from agent_vault.errors import AgentVaultError, BadServerResponse, FileAccessError
from agent_vault.home import ensure_dir, write_private

DEBIAN_BUNDLE = Path("/etc/ssl/certs/ca-certificates.crt")


class CaUnavailable(AgentVaultError):
    code = "ca_unavailable"
    status = 404
    hint = "Start the server without --disable-proxy."


@dataclass(frozen=True)
class FetchedCa:
    pem: bytes
    proxy_port: int | None


def system_roots_file() -> Path | None:
    """OpenSSL's default verify file, else the Debian bundle, else certifi's."""
    cafile = ssl.get_default_verify_paths().cafile
    for candidate in (cafile, DEBIAN_BUNDLE):
        if candidate and Path(candidate).is_file():
            return Path(candidate)
    try:
        import certifi

        return Path(certifi.where())
    except ImportError:  # pragma: no cover - certifi is a dependency
        return None


def fetch_ca(c: Client) -> FetchedCa:
    """GET /v1/mitm/ca.pem (public). 404 -> CaUnavailable (the proxy is disabled)."""
    try:
        r = c.request("GET", "/v1/mitm/ca.pem", auth=False, raw=True)
    except ApiError as e:
        if e.status == 404:
            raise CaUnavailable("the server has no proxy (CA unavailable)") from None
        raise
    pem = r.content
    if b"-----BEGIN CERTIFICATE-----" not in pem:
        raise BadServerResponse("the server did not return a PEM certificate")
    port = r.headers.get("x-mitm-port", "")
    return FetchedCa(pem=pem, proxy_port=int(port) if port.isdigit() else None)


def _write_public(path: Path, data: bytes) -> None:
    write_private(path, data, mode=0o644)
    os.chmod(path, 0o644)  # public certificates: undo a restrictive umask


def write_ca_files(ca_pem: bytes, directory: Path, *, home: Path | None = None) -> tuple[Path, Path]:
    """Write ca-cert.pem and ca-bundle.pem into `directory` atomically; returns their paths."""
    if home is not None and directory == home / "certs":
        ensure_dir(home)
        ensure_dir(directory, 0o755)
    else:
        try:
            directory.mkdir(parents=True, exist_ok=True)
        except OSError:
            raise FileAccessError(f"cannot create {directory}") from None
    roots = system_roots_file()
    system = roots.read_bytes() if roots else b""
    if system and not system.endswith(b"\n"):
        system += b"\n"
    cert = ca_pem if ca_pem.endswith(b"\n") else ca_pem + b"\n"
    cert_path, bundle_path = directory / "ca-cert.pem", directory / "ca-bundle.pem"
    try:
        _write_public(cert_path, cert)
        _write_public(bundle_path, system + cert)
    except OSError:
        raise FileAccessError(f"cannot write the CA files in {directory}") from None
    return cert_path, bundle_path
