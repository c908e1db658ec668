"""Nothing of the developer's environment reaches the product, not even in module-scoped fixtures.

A pytest subprocess runs a generated test file whose server is module-scoped, with a hostile developer
environment: proxies and AGENT_VAULT_ADDR pointing at a dead port, a missing CA bundle, a foreign
AGENT_VAULT_HOME. The session fixture of tests/conftest.py (loaded as a plugin) must strip all of it before
the module fixtures run, and the server and CLI (helpers.env.base_env) must never see it.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from helpers.env import base_env

pytestmark = pytest.mark.e2e

TESTS = Path(__file__).resolve().parents[1]
DEAD = "http://127.0.0.1:9"  # discard port: nothing answers

GENERATED = textwrap.dedent(
    """
    import os

    import httpx
    import pytest
    from helpers.server import OWNER_EMAIL, OWNER_PASSWORD, ServerProc
    from helpers.upstream import TLSUpstream

    LEAKED = (
        "HTTPS_PROXY", "HTTP_PROXY", "https_proxy", "AGENT_VAULT_ADDR", "SSL_CERT_FILE", "AGENT_VAULT_HOME"
    )
    DEV_HOME = os.environ["DEV_HOME"]  # read at import, before any fixture: the developer's value


    @pytest.fixture(scope="module")
    def seen_by_module_fixture():
        return {k: os.environ.get(k) for k in LEAKED}


    @pytest.fixture(scope="module")
    def srv(tmp_path_factory, upstream_ca):
        with ServerProc(tmp_path_factory.mktemp("leak"), upstream_ca) as s:
            # in-process, module scope, environment trusted: a leaked HTTP_PROXY would send this to port 9
            assert httpx.get(s.api + "/health", timeout=10).status_code == 200
            yield s


    @pytest.fixture(scope="module")
    def up(upstream_ca):
        with TLSUpstream(ca=upstream_ca) as u:
            yield u


    def test_nothing_leaks_into_module_fixtures_or_the_server(seen_by_module_fixture, srv, up):
        assert seen_by_module_fixture["AGENT_VAULT_HOME"] != DEV_HOME
        assert {k: v for k, v in seen_by_module_fixture.items() if k != "AGENT_VAULT_HOME"} == dict.fromkeys(
            LEAKED[:-1]
        )
        assert not any(k in srv.env for k in LEAKED[:-1]) and srv.env["AGENT_VAULT_HOME"] == str(srv.home)
        # the CLI honours AGENT_VAULT_ADDR: it reaches this server, not port 9
        srv.cli("auth", "login", "--email", OWNER_EMAIL, "--password-stdin", input=OWNER_PASSWORD + "\\n")
        assert "owner@example.com" in srv.cli("auth", "status").stdout
        # `vault run` builds the child's proxy/CA variables from this server only
        out = srv.cli("vault", "run", "--", "env").stdout
        child = dict(line.split("=", 1) for line in out.splitlines() if "=" in line)
        assert "http://127.0.0.1:9" not in child.values() and "no-such-bundle" not in out
        assert child["HTTPS_PROXY"].endswith(f"@127.0.0.1:{srv.proxy_port}"), child["HTTPS_PROXY"]
        srv.set_credential("API_TOKEN", "leak-test-secret-value")
        bearer = {"type": "bearer", "token": "API_TOKEN"}
        srv.add_service({"name": "echo", "host": "localhost", "port": up.port, "auth": bearer})
        token = srv.make_agent("leak-bot")
        with httpx.Client(proxy=srv.proxy_url(token), verify=str(srv.ca_bundle), timeout=15) as c:
            r = c.get(f"https://localhost:{up.port}/echo/x")
        assert r.status_code == 200 and r.json()["headers"]["authorization"] == "Bearer [REDACTED:API_TOKEN]"
    """
)


def test_a_hostile_developer_environment_does_not_leak_into_module_scoped_servers(tmp_path: Path) -> None:
    test_file = tmp_path / "test_generated_leak.py"
    test_file.write_text(GENERATED)
    dev_home = tmp_path / "developer-agent-vault-home"
    env = base_env(
        tmp_path,
        HTTPS_PROXY=DEAD,
        HTTP_PROXY=DEAD,
        https_proxy=DEAD,
        AGENT_VAULT_ADDR=DEAD,
        SSL_CERT_FILE=str(tmp_path / "no-such-bundle.pem"),
        AGENT_VAULT_HOME=str(dev_home),
        DEV_HOME=str(dev_home),
    )
    cp = subprocess.run(
        [
            sys.executable,
            "-m",
            "pytest",
            "-p",
            "conftest",  # tests/conftest.py (on the ini pythonpath): its session fixture is under test
            "-p",
            "no:cacheprovider",
            "--rootdir",
            str(TESTS.parent),
            "-c",
            str(TESTS.parent / "pyproject.toml"),
            str(test_file),
        ],
        cwd=TESTS.parent,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert cp.returncode == 0 and "1 passed" in cp.stdout, cp.stdout[-4000:] + cp.stderr[-2000:]
    assert not dev_home.exists()  # the developer's AGENT_VAULT_HOME was never touched
