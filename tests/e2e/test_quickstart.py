"""README's five-minute quickstart, typed on a real terminal (issue 23): every prompt answered as a
person would, the server in the background with `--detach`, and the final `vault run -- curl`
injected. The only changes to the README's lines: the upstream is a local HTTPS server (so the
service's host is `localhost:<port>`, the server gets `--allow-net`/`--upstream-ca`), and the ports
are free ones."""

from __future__ import annotations

import re
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest
import trustme
from helpers.env import base_env
from helpers.terminal import Term
from helpers.upstream import TLSUpstream

pytestmark = pytest.mark.e2e

EMAIL = "me@example.com"
LOGIN, MASTER = "login-password-1", "master-password-12"
SECRET = "ghp_quickstart_0123456789abcdef"


@pytest.fixture
def up(upstream_ca: trustme.CA) -> Iterator[TLSUpstream]:
    with TLSUpstream(ca=upstream_ca) as u:
        yield u


def test_the_quickstart_works_as_written(tmp_path: Path, upstream_ca: trustme.CA, up: TLSUpstream) -> None:
    curl = shutil.which("curl")
    assert curl is not None, "curl is needed (installed by .ci/run)"
    ca_file = tmp_path / "upstream-ca.pem"
    upstream_ca.cert_pem.write_to_path(str(ca_file))
    env = base_env(tmp_path, AGENT_VAULT_HOME=str(tmp_path / "av-home"))

    def run(args: list[str], answers: list[tuple[str, str]], **extra: str) -> str:
        t = Term(args, {**env, **extra}, timeout=60)
        for prompt, answer in answers:
            t.expect(prompt)
            t.send(answer)
        rc, text = t.finish()
        assert rc == 0, (args, text)
        return text

    # agent-vault init --owner-email me@example.com   (asks for the login and master passwords)
    run(
        ["init", "--owner-email", EMAIL],
        [("Login password", LOGIN), ("Repeat", LOGIN), ("Master password", MASTER), ("Repeat", MASTER)],
    )
    # agent-vault server --detach   (asks for the master password before it detaches)
    started = run(
        ["server", "--detach", "--port", "0", "--proxy-port", "0", "--allow-net", "127.0.0.0/8"]
        + ["--upstream-ca", str(ca_file)],
        [("Master password", MASTER)],
    )
    m = re.search(r"api (http://[0-9.:]+)", started)
    assert m, started
    env["AGENT_VAULT_ADDR"] = m.group(1)
    try:
        # agent-vault status / auth login / credential set / service add / agent create
        assert "running" in run(["status"], [])
        run(["auth", "login", "--email", EMAIL], [("Password for", LOGIN)])
        run(["vault", "credential", "set", "GITHUB_TOKEN"], [("Value for GITHUB_TOKEN", SECRET)])
        added = run(
            ["vault", "service", "add", "github", "--host", "localhost", "--port", str(up.port)]
            + ["--auth-type", "bearer", "--token-key", "GITHUB_TOKEN"],
            [("login password", LOGIN)],
        )
        assert "added service github" in added and "has no value" not in added  # the value is set
        missing = run(
            ["vault", "service", "add", "other", "--host", "other.example.com"]
            + ["--auth-type", "bearer", "--token-key", "OTHER_TOKEN"],
            [("login password", LOGIN)],
        )
        assert (
            "OTHER_TOKEN has no value yet: set it with 'agent-vault vault credential set OTHER_TOKEN'"
            in missing
        )
        created = run(["agent", "create", "ci-bot", "--vault", "default"], [("login password", LOGIN)])
        assert "av_" in created  # the agent token, shown once
        # agent-vault vault run -- curl -s https://api.github.com/user   (here: the local upstream)
        out = run(["vault", "run", "--", curl, "-s", f"https://localhost:{up.port}/echo/user"], [])
        assert SECRET not in out and "[REDACTED:GITHUB_TOKEN]" in out
        seen = up.requests_seen.wait_for(1)[-1]
        assert ("authorization", f"Bearer {SECRET}") in [(k.lower(), v) for k, v in seen["headers"]]
    finally:
        run(["server", "stop"], [])
