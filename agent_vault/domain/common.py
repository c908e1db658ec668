"""Lookups and checks shared by the domain modules."""

from __future__ import annotations

from datetime import UTC, datetime

from sqlmodel import Session, select

from agent_vault.core import Core
from agent_vault.domain.principal import Principal
from agent_vault.errors import NotFound, RateLimited, StepUpFailed
from agent_vault.models import User, Vault
from agent_vault.passwords import verify_password
from agent_vault.ratelimit import FailureLimiter


def iso(dt: datetime | None) -> str | None:
    return None if dt is None else dt.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def get_vault(s: Session, name: str) -> Vault:
    v = s.exec(select(Vault).where(Vault.name == name)).first()
    if v is None:
        raise NotFound(f"vault {name} not found", hint="List vaults with 'agent-vault vault list'.")
    return v


def check_limiter(limiter: FailureLimiter, key: str) -> None:
    wait = limiter.retry_after(key)
    if wait:
        raise RateLimited("too many failed password attempts", retry_after=wait, limiter="login")


def login_limiter(core: Core) -> FailureLimiter:
    lim = core.services.login_limiter
    if lim is None:
        strict = core.settings.rate_limits == "strict"
        lim = core.services.login_limiter = FailureLimiter(5 if strict else 10, 15 * 60)
    return lim


#: What a step-up request without a password is told (the CLI sends none when it has no terminal to ask on).
STEP_UP_MISSING_HINT = (
    'Send your login password in the "password" field; with the CLI, run it at a terminal '
    "or pass --password-stdin and pipe the password on stdin."
)


def step_up(core: Core, p: Principal, password: str | None) -> None:
    """Require the user's own password in the request (SPEC §3.4) unless --no-step-up.

    A wrong password counts toward the login limiter and is audited as `auth.login_failed`. A missing
    (None or empty) one is not a guess: it is refused (401 step_up_failed, hint naming --password-stdin)
    without counting or auditing, so scripted admin commands without a terminal cannot lock the owner out.
    """
    p.require_user()
    if core.settings.no_step_up:
        return
    if not password:
        raise StepUpFailed("this action needs your login password (step-up)", hint=STEP_UP_MISSING_HINT)
    limiter = login_limiter(core)
    check_limiter(limiter, p.name)
    with core.store.read() as s:
        user = s.get(User, p.user_id)
    if user is None or not verify_password(user.password_hash, password):
        limiter.fail(p.name)
        core.record("auth.login_failed", p.actor, details={"reason": "step_up"})
        raise StepUpFailed("password confirmation failed")
