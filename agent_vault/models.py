"""SQLModel tables (rows only). Portable types; timestamps are aware UTC.

Danger: some rows hold ciphertexts or digests. `repr=False` keeps them out of reprs and logs.
"""

from __future__ import annotations

from datetime import UTC, datetime

from sqlalchemy import BigInteger, Column, Integer, LargeBinary, Text, UniqueConstraint
from sqlmodel import Field, SQLModel


def utcnow() -> datetime:
    """Current time, timezone-aware UTC (what every timestamp column stores)."""
    return datetime.now(UTC)


class MasterKey(SQLModel, table=True):
    """The DEK wrapped under the Argon2id KEK (password/keyring modes only)."""

    __tablename__ = "master_key"
    id: int = Field(default=1, primary_key=True)
    wrapped_dek: bytes = Field(sa_column=Column(LargeBinary, nullable=False), repr=False)
    salt: bytes = Field(sa_column=Column(LargeBinary, nullable=False), repr=False)
    time_cost: int
    memory_kib: int
    parallelism: int
    key_version: int = 1


class InstanceState(SQLModel, table=True):
    """The instance itself, one row (id 1): identity, key mode and the CA. Lives in the database so any
    replica with the master password can serve it. The CA key is AES-GCM-sealed under the DEK."""

    __tablename__ = "instance_state"
    id: int = Field(default=1, primary_key=True)
    instance_id: str
    key_mode: str  # password | keyring | passwordless (SQLite only)
    created_at: datetime = Field(default_factory=utcnow)
    ca_cert: bytes = Field(sa_column=Column(LargeBinary, nullable=False))  # PEM, public
    ca_key_sealed: bytes = Field(sa_column=Column(LargeBinary, nullable=False), repr=False)


class User(SQLModel, table=True):
    __tablename__ = "users"
    id: int | None = Field(default=None, primary_key=True)
    email: str = Field(unique=True, index=True)
    password_hash: str = Field(repr=False)
    role: str = "member"  # owner | member
    created_at: datetime = Field(default_factory=utcnow)


class Agent(SQLModel, table=True):
    __tablename__ = "agents"
    id: int | None = Field(default=None, primary_key=True)
    name: str = Field(unique=True, index=True)
    description: str = ""
    status: str = "active"  # active | revoked
    created_at: datetime = Field(default_factory=utcnow)
    last_used_at: datetime | None = None


class Vault(SQLModel, table=True):
    __tablename__ = "vaults"
    id: int | None = Field(default=None, primary_key=True)
    name: str = Field(unique=True, index=True)
    unmatched_policy: str = "tunnel"  # tunnel | passthrough | deny
    enforcement: str = "enforce"  # enforce | dry-run
    rate_limits: str | None = None  # default | strict | off; None = the server's --rate-limits
    next_proposal_seq: int = 1
    created_at: datetime = Field(default_factory=utcnow)


class Grant(SQLModel, table=True):
    """A role of a user or an agent on one vault."""

    __tablename__ = "grants"
    __table_args__ = (UniqueConstraint("vault_id", "subject_kind", "subject_id"),)
    id: int | None = Field(default=None, primary_key=True)
    vault_id: int = Field(foreign_key="vaults.id", index=True, ondelete="CASCADE")
    subject_kind: str  # user | agent
    subject_id: int
    role: str  # proxy | member | admin


class Token(SQLModel, table=True):
    """Any bearer token, stored only as the SHA-256 digest of its text."""

    __tablename__ = "tokens"
    id: int | None = Field(default=None, primary_key=True)
    digest: str = Field(unique=True, index=True, repr=False)
    kind: str  # user | agent | session | approval | invite
    user_id: int | None = Field(default=None, foreign_key="users.id", ondelete="CASCADE")
    agent_id: int | None = Field(default=None, foreign_key="agents.id", ondelete="CASCADE")
    vault_id: int | None = Field(default=None, foreign_key="vaults.id", ondelete="CASCADE")
    label: str = ""
    unmatched_policy: str | None = None  # session override (stricter only)
    only_services: str | None = None  # narrowed session: JSON list of service names (None: all)
    only_methods: str | None = None  # narrowed session: JSON list of methods (None: all)
    # The session that minted this one (a child session, issue 19): revoking, expiring or deleting the
    # parent does the same to it. No foreign key: a child shares its parent's agent/user and vault, so
    # every path that deletes the parent deletes the child too (and the ORM deletes them row by row).
    parent_id: int | None = Field(default=None, index=True)
    created_at: datetime = Field(default_factory=utcnow)
    expires_at: datetime | None = None
    revoked_at: datetime | None = None
    last_used_at: datetime | None = None


class Credential(SQLModel, table=True):
    __tablename__ = "credentials"
    __table_args__ = (UniqueConstraint("vault_id", "key"),)
    id: int | None = Field(default=None, primary_key=True)
    vault_id: int = Field(foreign_key="vaults.id", index=True, ondelete="CASCADE")
    key: str
    ciphertext: bytes | None = Field(default=None, sa_column=Column(LargeBinary, nullable=True), repr=False)
    key_version: int = 1
    description: str = ""
    version: int = 0
    created_at: datetime = Field(default_factory=utcnow)
    updated_at: datetime = Field(default_factory=utcnow)
    updated_by: str = ""
    # Dynamic source (credsource.SourceSpec): kind in clear (command | file; NULL = a stored value),
    # the spec sealed under the DEK (a command may embed a secret), the TTL in clear for listings.
    source_kind: str | None = None
    source: bytes | None = Field(default=None, sa_column=Column(LargeBinary, nullable=True), repr=False)
    source_ttl: float | None = None


class Service(SQLModel, table=True):
    __tablename__ = "services"
    __table_args__ = (UniqueConstraint("vault_id", "name"),)
    id: int | None = Field(default=None, primary_key=True)
    vault_id: int = Field(foreign_key="vaults.id", index=True, ondelete="CASCADE")
    name: str
    position: int
    enabled: bool = True
    definition: str = Field(sa_column=Column(Text, nullable=False))  # ServiceDef JSON


class Proposal(SQLModel, table=True):
    __tablename__ = "proposals"
    __table_args__ = (UniqueConstraint("vault_id", "seq"),)
    id: int | None = Field(default=None, primary_key=True)
    vault_id: int = Field(foreign_key="vaults.id", index=True, ondelete="CASCADE")
    seq: int
    status: str = "pending"  # pending | applied | rejected | expired
    actor: str  # e.g. agent:ci-bot, session:12:agent:ci-bot
    message: str = ""
    services: str = Field(default="[]", sa_column=Column(Text, nullable=False))
    credentials: str = Field(default="[]", sa_column=Column(Text, nullable=False))
    review_note: str | None = None
    reviewed_by: str | None = None
    approval_digest: str | None = Field(default=None, repr=False)
    approval_expires_at: datetime | None = None
    created_at: datetime = Field(default_factory=utcnow)
    reviewed_at: datetime | None = None
    expires_at: datetime


class Invite(SQLModel, table=True):
    __tablename__ = "invites"
    id: int | None = Field(default=None, primary_key=True)
    digest: str = Field(unique=True, index=True, repr=False)
    email: str
    role: str = "member"
    vaults: str = Field(default="[]", sa_column=Column(Text, nullable=False))
    created_at: datetime = Field(default_factory=utcnow)
    expires_at: datetime
    accepted_at: datetime | None = None
    created_by: str = ""


class AuditEvent(SQLModel, table=True):
    """One link of the audit hash chain. `record` is the canonical JSON without the hash."""

    __tablename__ = "audit_events"
    # BIGINT on PostgreSQL (it only grows); INTEGER on SQLite, where that is already 64-bit.
    seq: int = Field(primary_key=True, sa_type=BigInteger().with_variant(Integer(), "sqlite"))
    ts: str = Field(index=True)
    kind: str = Field(index=True)
    actor: str = ""
    vault: str | None = Field(default=None, index=True)
    decision: str | None = None
    host: str | None = None
    status: int | None = None
    record: str = Field(sa_column=Column(Text, nullable=False))
    hash: str


class Change(SQLModel, table=True):
    """The change counter (store/changes.py): one row, bumped by every write to a snapshot table."""

    __tablename__ = "changes"
    id: int = Field(default=1, primary_key=True)
    version: int = 0
    vaults_version: int = 0
