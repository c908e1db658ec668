"""The one environment every test-spawned product process starts from (and what the session strips).

`base_env(tmp, **extra)` builds an environment from scratch, never from `os.environ`: PATH, LANG/LC_ALL
(C.UTF-8), TZ (UTC), TMPDIR and PYENV_VERSION/PYENV_ROOT when set, HOME in `tmp` (so git, curl and node
never read the developer's dotfiles), AGENT_VAULT_HOME (default `tmp/agent-vault-home`), cheap Argon2
(AGENT_VAULT_TEST_KDF=1) and no OS keyring -- plus exactly what the caller passes. A test that needs a
variable (a proxy, a CA bundle, AGENT_VAULT_ADDR, ...) passes it.

`leaks(name)` is true for the variables of the developer's environment that would change what the product
or a client does (proxies, CA bundles, `AGENT_VAULT_*`): `tests/conftest.py` strips them for the session.
"""

from __future__ import annotations

import os
from pathlib import Path

CA_VARS = frozenset(
    {
        "SSL_CERT_FILE",
        "SSL_CERT_DIR",
        "REQUESTS_CA_BUNDLE",
        "CURL_CA_BUNDLE",
        "NODE_EXTRA_CA_CERTS",
        "GIT_SSL_CAINFO",
        "GIT_SSL_CAPATH",
        "DENO_CERT",
        "AWS_CA_BUNDLE",
        "PIP_CERT",
        "HTTPLIB2_CA_CERTS",
        "NIX_SSL_CERT_FILE",
    }
)
_DB = "DATABASE_URL"  # a developer's database must never be the one a test writes to
_PASSED_IF_SET = ("TMPDIR", "PYENV_VERSION", "PYENV_ROOT")


def leaks(name: str) -> bool:
    """A proxy (`*_PROXY`, any case, incl. NODE_USE_ENV_PROXY), CA bundle, DATABASE_URL or `AGENT_VAULT_*`."""
    upper = name.upper()
    return upper.endswith("_PROXY") or upper in CA_VARS or upper.startswith("AGENT_VAULT_") or upper == _DB


def base_env(tmp: Path, **extra: str) -> dict[str, str]:
    """A minimal, explicit environment for a product (or client) subprocess of a test owning `tmp`."""
    home = tmp / "user-home"
    home.mkdir(parents=True, exist_ok=True)
    env = {
        "PATH": os.environ.get("PATH") or os.defpath,
        "LANG": "C.UTF-8",
        "LC_ALL": "C.UTF-8",
        "TZ": "UTC",
        "HOME": str(home),
        "AGENT_VAULT_HOME": str(tmp / "agent-vault-home"),
        "AGENT_VAULT_TEST_KDF": "1",
        "AGENT_VAULT_KEYRING": "0",
        "PYTHON_KEYRING_BACKEND": "keyring.backends.fail.Keyring",
    }
    env.update({k: os.environ[k] for k in _PASSED_IF_SET if os.environ.get(k)})
    env.update(extra)
    return env
