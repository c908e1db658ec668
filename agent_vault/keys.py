"""Key management: DEK creation/unwrap per key mode, master-password sources, the instance CA.

Dangers: the DEK and the CA private key live only in server memory after unlock. The CA key is
stored AES-GCM-sealed under the DEK in the database (`instance_state`); its plaintext touches disk only
inside run/ (0600), briefly. Homes made before the CA moved into the database keep it in ca/ (the
legacy files, read once by `read_legacy_ca` and then copied, still sealed, into the row).
"""

from __future__ import annotations

import base64
import datetime
import hashlib
import hmac
import os
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from mitmproxy import certs
from sqlmodel import Session, select

from agent_vault import crypto, oskeyring
from agent_vault.errors import InvalidRequest, KeyMaterialUnavailable, WrongMasterPassword
from agent_vault.home import Home, write_private
from agent_vault.models import InstanceState, MasterKey, User
from agent_vault.store import Store

KEY_MODES = ("password", "keyring", "passwordless")
KEYRING_SERVICE = oskeyring.SERVICE
PASSWORDLESS_WARNING = "WARNING: passwordless mode — anyone who can read {path} can decrypt every credential"


def dek_aad(instance_id: str) -> bytes:
    return crypto.aad_for("dek", instance_id)


def ca_key_aad(instance_id: str) -> bytes:
    return crypto.aad_for("ca-key", instance_id)


def kdf_profile() -> crypto.KdfProfile:
    """PRODUCTION unless AGENT_VAULT_TEST_KDF=1 (test suites only: makes Argon2 cheap)."""
    return crypto.TEST if os.environ.get("AGENT_VAULT_TEST_KDF") == "1" else crypto.PRODUCTION


def check_master_password(password: str) -> None:
    if len(password) < 12:
        raise InvalidRequest(
            "the master password must be at least 12 characters",
            hint=master_source_hint(
                password,
                typed="Choose a longer one (12+ characters).",
                env="Set AGENT_VAULT_MASTER_PASSWORD to 12+ characters.",
            ),
        )


def owner_password_matches(store: Store, password: str) -> bool:
    """Whether `password` is some owner's login password (SPEC §4.2: the master password must differ).
    Runs Argon2 once per owner: for rare admin commands only."""
    from agent_vault.passwords import verify_password  # passwords imports keys (kdf_profile)

    with store.read() as s:
        owners = list(s.exec(select(User).where(User.role == "owner")))
    return any(verify_password(o.password_hash, password) for o in owners)


def create_dek(home: Home, s: Session, instance_id: str, mode: str, master_password: str | None) -> bytes:
    """Create a new DEK for `mode`, its wrapping added to the session `s` (or dek.key for passwordless);
    returns it (keep it in memory only)."""
    dek = crypto.new_key()
    if mode == "passwordless":
        write_private(home.dek_file, base64.b64encode(dek))
        return dek
    if master_password is None:
        raise InvalidRequest("a master password is required for key mode " + mode)
    check_master_password(master_password)
    profile = kdf_profile()
    salt = os.urandom(16)
    kek = crypto.derive_kek(master_password, salt, profile)
    row = MasterKey(
        wrapped_dek=crypto.seal(kek, dek, dek_aad(instance_id)),
        salt=salt,
        time_cost=profile.time_cost,
        memory_kib=profile.memory_kib,
        parallelism=profile.parallelism,
    )
    s.add(row)
    return dek  # mode keyring: the caller stores the password with keyring_set and reports failure


def unwrap_dek(home: Home, store: Store, instance_id: str, mode: str, master_password: str | None) -> bytes:
    """The DEK from dek.key (passwordless) or by unwrapping with the master password.

    Raises WrongMasterPassword when the GCM tag fails (never returns garbage).
    """
    if mode == "passwordless":
        try:
            return base64.b64decode(home.dek_file.read_bytes(), validate=True)
        except (OSError, ValueError):
            raise KeyMaterialUnavailable(f"cannot read {home.dek_file}") from None
    if master_password is None:
        raise WrongMasterPassword("a master password is required to unlock this instance")
    with store.read() as s:
        row = s.exec(select(MasterKey)).first()
    if row is None:
        raise KeyMaterialUnavailable("the wrapped data key is missing from the database")
    profile = crypto.KdfProfile(row.time_cost, row.memory_kib, row.parallelism)
    kek = crypto.derive_kek(master_password, row.salt, profile)
    try:
        return crypto.open_sealed(kek, row.wrapped_dek, dek_aad(instance_id))
    except crypto.DecryptionError:
        raise WrongMasterPassword(
            "wrong master password",
            hint=master_source_hint(
                master_password,
                typed="Type the master password chosen at init (not your login password).",
                env="Check AGENT_VAULT_MASTER_PASSWORD.",
            ),
        ) from None


def keyring_user(instance_id: str) -> str:
    return f"master-password:{instance_id}"


def keyring_get(instance_id: str) -> str | None:
    """The master password from the OS keyring, or None if there is no entry.

    Raises oskeyring.KeyringUnavailable when the keyring is off, missing or failing (the caller
    falls back to the `password` sources and says so once)."""
    return oskeyring.get(keyring_user(instance_id))


def keyring_set(instance_id: str, password: str) -> str | None:
    """Store the master password in the OS keyring; None on success, else why not (a short reason)."""
    try:
        oskeyring.put(keyring_user(instance_id), password)
    except oskeyring.KeyringUnavailable as e:
        return str(e)
    return None


# A digest of the last password read from AGENT_VAULT_MASTER_PASSWORD: a wrong one names the variable.
_env_digest: bytes | None = None


def _digest(password: str) -> bytes:
    return hashlib.sha256(password.encode()).digest()


def master_source_hint(password: str, *, typed: str, env: str) -> str:
    """The hint of an error about `password`: `env` (naming the variable) when it is the one last read
    from AGENT_VAULT_MASTER_PASSWORD, since the user typed nothing ("check the command's arguments"
    would send them the wrong way), else `typed`."""
    from_env = _env_digest is not None and hmac.compare_digest(_digest(password), _env_digest)
    return env if from_env else typed


def same_as_login(password: str) -> InvalidRequest:
    """The refusal of a master password equal to the owner's login password (init, key-mode change)."""
    return InvalidRequest(
        "the master password must differ from the owner's login password",
        hint=master_source_hint(
            password,
            typed="Choose another master password.",
            env="Set AGENT_VAULT_MASTER_PASSWORD to another password.",
        ),
    )


def master_password_from_env() -> str | None:
    """Read AGENT_VAULT_MASTER_PASSWORD and remove it from the process environment at once."""
    global _env_digest
    value = os.environ.pop("AGENT_VAULT_MASTER_PASSWORD", None) or None
    if value is not None:
        _env_digest = _digest(value)
    return value


@dataclass(frozen=True)
class CA:
    cert_pem: bytes
    key_pem: bytes  # plaintext; in memory only

    def __repr__(self) -> str:
        return "CA(<certificate>, <key hidden>)"

    @property
    def fingerprint_sha256(self) -> str:
        return x509.load_pem_x509_certificate(self.cert_pem).fingerprint(hashes.SHA256()).hex()

    @property
    def not_after(self) -> str:
        """The certificate's expiry, ISO-8601 UTC (`2036-01-31T12:00:00Z`)."""
        when = x509.load_pem_x509_certificate(self.cert_pem).not_valid_after_utc
        return when.strftime("%Y-%m-%dT%H:%M:%SZ")


_CA_KEY, _CA_CERT, _NEXT = "ca-key.enc", "ca-cert.pem", ".next"


def _create_ca(organization: str, cn: str) -> tuple[ec.EllipticCurvePrivateKey, x509.Certificate]:
    """mitmproxy's `certs.create_ca` (same names, validity and extensions) with an ECDSA P-256 key.

    mitmproxy signs every leaf certificate with the CA key *and* gives the leaf that same key, so the
    key type decides the cost of every TLS handshake an agent makes with the proxy: an ECDSA P-256
    signature is about 10x cheaper than an RSA-2048 one."""
    now = datetime.datetime.now(datetime.UTC)  # mitmproxy passes a naive local time; this is exact
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name(
        [
            x509.NameAttribute(NameOID.COMMON_NAME, cn),
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, organization),
        ]
    )
    usage = x509.KeyUsage(
        digital_signature=False,
        content_commitment=False,
        key_encipherment=False,
        data_encipherment=False,
        key_agreement=False,
        key_cert_sign=True,
        crl_sign=True,
        encipher_only=False,
        decipher_only=False,
    )
    builder = (
        x509.CertificateBuilder()
        .serial_number(x509.random_serial_number())
        .subject_name(name)
        .issuer_name(name)
        .not_valid_before(now + certs.CERT_VALIDITY_OFFSET)
        .not_valid_after(now + certs.CERT_VALIDITY_OFFSET + certs.CA_EXPIRY)
        .public_key(key.public_key())
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(usage, critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
    )
    return key, builder.sign(private_key=key, algorithm=hashes.SHA256())


def new_ca(instance_id: str) -> CA:
    """A new self-signed CA (SPEC §4.3; ECDSA P-256), in memory only; `sealed_ca` prepares it for the
    database."""
    key, cert = _create_ca("agent-vault", f"agent-vault CA {instance_id[:8]}")
    key_pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    return CA(cert.public_bytes(serialization.Encoding.PEM), key_pem)


def sealed_ca(instance_id: str, dek: bytes, ca: CA) -> tuple[bytes, bytes]:
    """(certificate PEM, key sealed under the DEK): what `instance_state` stores."""
    return ca.cert_pem, crypto.seal(dek, ca.key_pem, ca_key_aad(instance_id))


def store_ca(store: Store, instance_id: str, dek: bytes, ca: CA) -> None:
    """Replace the CA in the instance row (one transaction: certificate and key move together)."""
    cert, sealed = sealed_ca(instance_id, dek, ca)
    with store.write() as s:
        row = s.get(InstanceState, 1)
        if row is None:
            raise KeyMaterialUnavailable("the instance row is missing from the database")
        row.ca_cert, row.ca_key_sealed = cert, sealed
        s.add(row)


def open_ca(row: InstanceState, dek: bytes) -> CA:
    """The CA of the instance row, its key unsealed with the DEK."""
    try:
        key_pem = crypto.open_sealed(dek, row.ca_key_sealed, ca_key_aad(row.instance_id))
    except crypto.DecryptionError:
        raise KeyMaterialUnavailable("the CA private key failed to decrypt (tampered or wrong key)") from None
    return CA(row.ca_cert, key_pem)


def _finish_ca_move(ca_dir: Path) -> None:
    """Legacy homes: finish (or drop) a CA replacement an older version's crash interrupted."""
    key_next, cert_next = ca_dir / (_CA_KEY + _NEXT), ca_dir / (_CA_CERT + _NEXT)
    if not cert_next.exists():  # the new pair was never complete: keep the old CA
        key_next.unlink(missing_ok=True)
        return
    if key_next.exists():
        os.replace(key_next, ca_dir / _CA_KEY)
    os.replace(cert_next, ca_dir / _CA_CERT)
    fd = os.open(ca_dir, os.O_RDONLY)
    try:
        os.fsync(fd)  # the renames themselves survive a power loss
    finally:
        os.close(fd)


def read_legacy_ca(home: Home) -> tuple[bytes, bytes]:
    """(certificate PEM, sealed key) from a home made before the CA moved into the database. Never
    decrypts. Raises KeyMaterialUnavailable when the files are missing."""
    try:
        _finish_ca_move(home.ca_dir)
        return (home.ca_dir / _CA_CERT).read_bytes(), (home.ca_dir / _CA_KEY).read_bytes()
    except OSError:
        raise KeyMaterialUnavailable(f"the instance CA is missing under {home.ca_dir}") from None


def write_engine_ca(run_dir: Path, ca: CA) -> Path:
    """Write key+cert where mitmproxy loads its CA (run/mitmproxy-ca.pem, 0600). Caller deletes it."""
    path = run_dir / "mitmproxy-ca.pem"
    write_private(path, ca.key_pem + ca.cert_pem)
    return path


def _set_key_mode(s: Session, mode: str) -> None:
    """The instance row's key mode, in the same transaction as the wrapping it describes."""
    row = s.get(InstanceState, 1)
    if row is not None:
        row.key_mode = mode
        s.add(row)


def change_key_mode(
    home: Home,
    store: Store,
    instance_id: str,
    old_mode: str,
    old_password: str | None,
    new_mode: str,
    new_password: str | None,
) -> str | None:
    """Re-wrap the same DEK for `new_mode` (server stopped). Values are not re-encrypted.
    Returns a note when mode `keyring` could not store the password in the OS keyring (why).
    Leaving mode `keyring` removes the keyring entry.

    Order matters for crash safety: the new wrapping is written before the old one is removed.
    """
    dek = unwrap_dek(home, store, instance_id, old_mode, old_password)
    if new_mode == "passwordless" and store.dialect == "postgresql":
        raise InvalidRequest(
            "passwordless mode is not available with PostgreSQL (its key file would be local to one host)"
        )
    if new_mode == "passwordless":
        write_private(home.dek_file, base64.b64encode(dek))
        with store.write() as s:
            for row in s.exec(select(MasterKey)):
                s.delete(row)
            _set_key_mode(s, new_mode)
        oskeyring.delete(keyring_user(instance_id))
        return None
    if new_password is None:
        raise InvalidRequest("a new master password is required")
    check_master_password(new_password)
    if owner_password_matches(store, new_password):  # checked after the unwrap: no oracle without the key
        raise same_as_login(new_password)
    profile = kdf_profile()
    salt = os.urandom(16)
    kek = crypto.derive_kek(new_password, salt, profile)
    with store.write() as s:
        row = s.exec(select(MasterKey)).first() or MasterKey(
            wrapped_dek=b"", salt=b"", time_cost=0, memory_kib=0, parallelism=0
        )
        row.wrapped_dek = crypto.seal(kek, dek, dek_aad(instance_id))
        row.salt, row.time_cost = salt, profile.time_cost
        row.memory_kib, row.parallelism = profile.memory_kib, profile.parallelism
        s.add(row)
        _set_key_mode(s, new_mode)
    home.dek_file.unlink(missing_ok=True)
    if new_mode == "keyring":
        return keyring_set(instance_id, new_password)
    oskeyring.delete(keyring_user(instance_id))
    return None
