"""`vault run` end to end (SPEC §7): real server, real CLI, real clients (curl, requests) in the child."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
from helpers.cli_fixtures import (
    SECRET,
    Call,
    assert_clean,
    child_env,
    mserver,
    mupstream,
    parallel,
    proxy_status,
)
from helpers.env import base_env
from helpers.server import ServerProc
from helpers.upstream import TLSUpstream

__all__ = ["mserver", "mupstream"]
CURL = "/usr/bin/curl"


@pytest.fixture(scope="module")
def echo(mserver: ServerProc, mupstream: TLSUpstream) -> str:
    """A bearer service for the local upstream; returns its URL."""
    mserver.set_credential("API_TOKEN", SECRET)
    mserver.add_service(
        {
            "name": "echo-api",
            "host": "localhost",
            "port": mupstream.port,
            "auth": {"type": "bearer", "token": "API_TOKEN"},
        }
    )
    return f"https://localhost:{mupstream.port}/echo"


def seen_auth(up: TLSUpstream, count: int = 1) -> list[str]:
    return [
        dict((k.lower(), v) for k, v in r["headers"]).get("authorization", "")
        for r in up.requests_seen.wait_for(count)
    ]


def test_curl_and_requests_get_the_credential_injected(
    mserver: ServerProc, mupstream: TLSUpstream, echo: str
) -> None:
    mupstream.requests_seen.clear()
    script = (
        f"import requests; r = requests.get({echo + '/py'!r}, headers={{'Authorization': 'Bearer fake'}}); "
        "print(r.status_code, r.json()['headers']['authorization'])"
    )
    curl, py = parallel(
        mserver,
        Call("vault", "run", "--", CURL, "-sS", echo + "/curl"),
        Call("run", "--quiet", "--", sys.executable, "-c", script),
    )
    assert json.loads(curl.stdout)["headers"]["authorization"] == "Bearer [REDACTED:API_TOKEN]"
    assert py.stdout.strip() == "200 Bearer [REDACTED:API_TOKEN]"
    assert seen_auth(mupstream, 2) == [f"Bearer {SECRET}"] * 2
    assert "agent-vault: vault default via proxy" in curl.stderr and "/v1/discover" in curl.stderr
    assert "agent-vault:" not in py.stderr  # --quiet: no banner
    for cp in (curl, py):
        assert_clean(cp, SECRET)


def test_child_environment(mserver: ServerProc, mupstream: TLSUpstream, echo: str) -> None:
    inherited = {
        **mserver.env,
        "HTTPS_PROXY": "http://corp-proxy:3128",
        "ssl_cert_file": "/nope.pem",
        "NO_PROXY": "internal.corp",
        "KEEP_ME": "yes",
    }
    cp = mserver.cli(
        "vault",
        "run",
        "--no-proxy",
        "build.lan",
        "--placeholder",
        "OPENAI_API_KEY",
        "--",
        "env",
        env=inherited,
    )
    env = child_env(cp.stdout)
    assert_clean(cp, SECRET)
    assert "av_agt_" not in cp.stdout and "av_usr_" not in cp.stdout
    token = env["AGENT_VAULT_TOKEN"]
    assert token.startswith("av_sess_") and env["AGENT_VAULT_VAULT"] == "default"
    assert env["AGENT_VAULT_ADDR"] == mserver.api
    proxy = f"http://{token}:default@127.0.0.1:{mserver.proxy_port}"
    for name in ("HTTPS_PROXY", "HTTP_PROXY", "https_proxy", "http_proxy"):
        assert env[name] == proxy
    # inherited entries kept; loopback defaults left out because a service lives on localhost
    assert env["NO_PROXY"] == env["no_proxy"] == "internal.corp,build.lan"
    bundle = str(mserver.home / "certs" / "ca-bundle.pem")
    for name in (
        "SSL_CERT_FILE",
        "NODE_EXTRA_CA_CERTS",
        "REQUESTS_CA_BUNDLE",
        "CURL_CA_BUNDLE",
        "GIT_SSL_CAINFO",
        "DENO_CERT",
    ):
        assert env[name] == bundle
    assert "ssl_cert_file" not in env and env["KEEP_ME"] == "yes" and env["NODE_USE_ENV_PROXY"] == "1"
    assert env["OPENAI_API_KEY"] == "{{OPENAI_API_KEY}}"
    # the child's session was revoked when it exited
    assert proxy_status(mserver, token, echo) == 407


def test_exit_codes(mserver: ServerProc, tmp_path: Path) -> None:
    mserver.make_agent("exit-bot")
    plain = tmp_path / "not-executable.sh"
    plain.write_text("#!/bin/sh\nexit 0\n")
    seven, missing, not_exec, unknown_vault, looser = parallel(
        mserver,
        Call("vault", "run", "--", "sh", "-c", "exit 7", check=False),
        Call("vault", "run", "--", "no-such-command-xyz", check=False),
        Call("run", "--", str(plain), check=False),
        Call("vault", "run", "--vault", "no-such-vault", "--", "true", check=False),
        Call("vault", "run", "--vault", "strict-vault", "--policy", "tunnel", "--", "true", check=False),
    )
    assert seven.returncode == 7
    assert missing.returncode == 127 and "command not found" in missing.stderr
    assert not_exec.returncode == 126
    assert unknown_vault.returncode == 125 and unknown_vault.stderr.startswith("error: ")
    assert looser.returncode == 125 and "looser" in looser.stderr
    killed, attributed = parallel(
        mserver,
        Call("run", "--", "sh", "-c", "kill -TERM $$", check=False),
        Call("vault", "run", "--agent", "exit-bot", "--label", "attributed", "--", "true"),
    )
    assert killed.returncode == 128 + 15
    assert attributed.returncode == 0
    for cp in (seven, missing, not_exec, unknown_vault, looser, killed, attributed):
        assert "Traceback" not in cp.stderr


@pytest.fixture(scope="module", autouse=True)
def strict_vault(mserver: ServerProc) -> None:
    with mserver.http() as c:
        c.post("/v1/vaults", json={"name": "strict-vault"}).raise_for_status()
        c.patch(
            "/v1/vaults/strict-vault", json={"password": "owner-password-123", "unmatched_policy": "deny"}
        )


def test_agent_mode_and_nested_run(
    mserver: ServerProc, mupstream: TLSUpstream, echo: str, tmp_path: Path
) -> None:
    agent_token = mserver.make_agent("run-bot")
    env = base_env(
        tmp_path, AGENT_VAULT_HOME=str(tmp_path), AGENT_VAULT_ADDR=mserver.api, AGENT_VAULT_TOKEN=agent_token
    )  # no CLI login in this home
    mupstream.requests_seen.clear()
    nested = f"{sys.executable} -m agent_vault run --quiet -- sh -c 'echo NESTED=$AGENT_VAULT_TOKEN'"
    script = f"env; {CURL} -sS {echo}/agent-mode; echo; {nested}"
    cp = mserver.cli("run", "--policy", "deny", "--", "sh", "-c", script, env=env)
    assert_clean(cp, SECRET)
    child = child_env(cp.stdout)
    session = child["AGENT_VAULT_TOKEN"]
    assert session.startswith("av_sess_") and agent_token not in cp.stdout
    assert child["HTTPS_PROXY"].startswith(f"http://{session}:default@")
    assert "[REDACTED:API_TOKEN]" in cp.stdout
    assert seen_auth(mupstream) == [f"Bearer {SECRET}"]
    assert child["NESTED"] == session  # nested run reuses the session as is
    assert proxy_status(mserver, session, echo) == 407  # revoked by the outer wrapper only
    assert proxy_status(mserver, agent_token, echo) == 200  # the agent token itself is untouched


def test_a_session_revoked_during_the_run_is_not_reported_at_exit(mserver: ServerProc) -> None:
    """The child's session revoked before the command ends (by itself here; by a human, or with the
    session that minted it, in life): the wrapper's own revoke at exit finds it gone (404) and says
    nothing, where it used to warn that it "could not revoke" a session that no longer works."""
    script = (
        "import httpx, os; a = os.environ['AGENT_VAULT_ADDR']; "
        "h = {'Authorization': 'Bearer ' + os.environ['AGENT_VAULT_TOKEN']}; "
        "sid = httpx.get(a + '/v1/auth/me', headers=h, trust_env=False).json()['session_id']; "
        "print('REVOKED', httpx.delete(f'{a}/v1/sessions/{sid}', headers=h, trust_env=False).status_code)"
    )
    cp = mserver.cli("vault", "run", "--", sys.executable, "-c", script)
    assert "REVOKED 204" in cp.stdout
    assert "could not revoke" not in cp.stderr and "warning" not in cp.stderr, cp.stderr
