"""What a fresh install says, end to end (the real server and CLI): API errors with a hint, `vault run`
naming a missing vault (and the file that named it), the unmatched-host note naming host:port, the banner
saying dry-run denies nothing, `credential list` with durations and uncut piped tables, dynamic sources
checked at set time, and no pydantic "Value error, " in a service error."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from helpers.cli_fixtures import SECRET, assert_clean, mserver, mupstream
from helpers.server import OWNER_PASSWORD, ServerProc
from helpers.upstream import TLSUpstream

__all__ = ["mserver", "mupstream"]
CURL = "/usr/bin/curl"
VAULT = "polish"
PW = OWNER_PASSWORD + "\n"


@pytest.fixture(scope="module", autouse=True)
def polish_vault(mserver: ServerProc) -> None:
    """A vault of this module's own (its service on 127.0.0.1 must not change the other vaults' NO_PROXY)."""
    with mserver.http() as c:
        c.post("/v1/vaults", json={"name": VAULT}).raise_for_status()
        c.post("/v1/vaults", json={"name": "drybox"}).raise_for_status()
        c.patch(
            "/v1/vaults/drybox",
            json={"password": OWNER_PASSWORD, "unmatched_policy": "deny", "enforcement": "dry-run"},
        ).raise_for_status()


def _cli_in(server: ServerProc, cwd: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "agent_vault", *args],
        capture_output=True,
        text=True,
        env={**server.env, "AGENT_VAULT_ADDR": server.api},
        cwd=cwd,
        timeout=60,
    )


def test_api_errors_carry_a_hint(mserver: ServerProc) -> None:
    with mserver.http() as c:
        missing = c.get("/v1/no-such-endpoint")
        no_service = c.get(f"/v1/vaults/{VAULT}/services/no-such-service")
        token = c.post("/v1/sessions", json={"vault": "default", "ttl_seconds": 600}).json()["token"]
    with mserver.http(token) as session:
        role = session.get("/v1/sessions")  # a proxy-role session token listing sessions (member+)
    assert missing.status_code == 404 and missing.json()["error"] == "not_found"
    assert missing.json()["hint"].strip(), missing.json()
    assert no_service.status_code == 404 and "vault service list" in no_service.json()["hint"]
    assert role.status_code == 403 and role.json()["error"] == "forbidden"
    assert "session token" in role.json()["hint"], role.json()


def test_run_says_a_missing_vault_does_not_exist_and_where_its_name_came_from(
    mserver: ServerProc, tmp_path: Path
) -> None:
    flag = mserver.cli("vault", "run", "--vault", "nosuch", "--", "true", check=False)
    assert flag.returncode == 125, flag.stderr  # SPEC §7.4: vault unknown is a wrapper failure
    (line,) = flag.stderr.splitlines()
    assert line.startswith("error: vault nosuch not found ("), line
    listing = mserver.cli("vault", "credential", "list", "--vault", "nosuch", check=False)
    assert listing.returncode == 1 and "vault nosuch not found" in listing.stderr

    (tmp_path / ".agent-vault.toml").write_text('vault = "nosuch"\n')
    project = _cli_in(mserver, tmp_path, "vault", "run", "--", "true")
    assert project.returncode == 125, project.stderr
    (line,) = project.stderr.splitlines()
    toml = str((tmp_path / ".agent-vault.toml").resolve())
    assert line.startswith(f"error: vault nosuch not found (named in {toml}) ("), line
    assert_clean(project)


def test_the_unmatched_note_names_host_and_port(mserver: ServerProc, mupstream: TLSUpstream) -> None:
    """A service on 127.0.0.1 at another port: the request matched none because of its port, so the note
    names 127.0.0.1:PORT (the host alone would contradict the service list)."""
    mserver.set_credential("API_TOKEN", SECRET, vault=VAULT)
    other_port = 1 if mupstream.port != 1 else 2
    mserver.add_service(
        {
            "name": "other-port",
            "host": "127.0.0.1",
            "port": other_port,
            "auth": {"type": "bearer", "token": "API_TOKEN"},
        },
        vault=VAULT,
    )
    url = f"https://127.0.0.1:{mupstream.port}/echo/unmatched-port"
    cp = mserver.cli("vault", "run", "--vault", VAULT, "--", CURL, "-sSk", url)
    assert_clean(cp, SECRET)
    notes = [line for line in cp.stderr.splitlines() if "no service of vault" in line]
    assert notes == [
        f"agent-vault: the command reached 127.0.0.1:{mupstream.port}, which no service of vault {VAULT} "
        "matches (nothing injected); add one with 'agent-vault vault service add'"
    ], cp.stderr


def test_the_banner_says_dry_run_denies_nothing(mserver: ServerProc) -> None:
    cp = mserver.cli("vault", "run", "--vault", "drybox", "--", "true")
    banner = next(line for line in cp.stderr.splitlines() if "unmatched hosts:" in line)
    assert banner.endswith("unmatched hosts: deny (dry-run: logged, not enforced)"), banner
    enforced = mserver.cli("vault", "run", "--vault", VAULT, "--", "true").stderr
    assert "unmatched hosts: tunnel\n" in enforced + "\n" and "dry-run" not in enforced


def test_credential_list_shows_durations_and_a_piped_table_whole(mserver: ServerProc) -> None:
    key = "A_RATHER_LONG_CREDENTIAL_KEY_NAME_FOR_THE_TABLE"
    mserver.cli(
        "vault", "credential", "set", key, "--vault", VAULT, "--description",
        "a description that by itself is wider than a piped eighty-column table would allow",
        "--command", f"{sys.executable} -c print(1)", "--ttl", "5m", "--password-stdin", input=PW,
    )  # fmt: skip
    cp = mserver.cli("vault", "credential", "list", "--vault", VAULT)  # stdout is a pipe; no COLUMNS
    row = next(line for line in cp.stdout.splitlines() if key in line)
    cells = [c.strip() for c in row.strip("│ ").split("│")]
    assert "5m" in cells and "300.0" not in row, row
    assert "…" not in cp.stdout and "has_value" in cp.stdout
    assert "wider than a piped eighty-column table would allow" in row
    as_json = mserver.cli("vault", "credential", "list", "--vault", VAULT, "--json").stdout
    assert '"ttl": 300.0' in as_json  # --json is the API's data, unchanged


def test_dynamic_sources_are_checked_at_set_time(mserver: ServerProc, tmp_path: Path) -> None:
    def set_source(key: str, *flags: str) -> subprocess.CompletedProcess[str]:
        return mserver.cli(
            "vault", "credential", "set", key, "--vault", VAULT, *flags, "--password-stdin",
            input=PW, check=False,
        )  # fmt: skip

    directory = set_source("DIR_KEY", "--file", str(tmp_path))
    assert directory.returncode == 1
    assert directory.stderr.splitlines() == [
        f"error: {tmp_path} is not a regular file "
        "(A file source reads a regular file (not a directory, device or pipe).)"
    ]
    later = tmp_path / "appears-later.txt"
    missing = set_source("LATER_KEY", "--file", str(later))
    assert missing.returncode == 0, missing.stderr
    assert f"warning: {later} does not exist yet" in missing.stderr
    program = set_source("GH_KEY", "--command", "gh-not-installed-x7 auth token")
    assert program.returncode == 0, program.stderr
    assert "warning: program gh-not-installed-x7 was not found on the server's PATH" in program.stderr
    fine = set_source("FINE_KEY", "--command", f"{sys.executable} -c print(2)")
    assert fine.returncode == 0 and "warning" not in fine.stderr
    with mserver.http() as c:
        keys = {x["key"] for x in c.get(f"/v1/vaults/{VAULT}/credentials").json()["credentials"]}
    assert "DIR_KEY" not in keys and {"LATER_KEY", "GH_KEY", "FINE_KEY"} <= keys


def test_a_service_error_has_no_pydantic_prefix(mserver: ServerProc) -> None:
    cp = mserver.cli(
        "vault", "service", "add", "t1", "--vault", VAULT, "--host", "api.example.com",
        "--auth-type", "bearer", "--token-key", "API_TOKEN", check=False,
    )  # fmt: skip
    assert cp.returncode == 1
    (line,) = cp.stderr.splitlines()
    assert line.startswith("error: invalid service definition: name: name 't1' must be 3-64 characters"), line
    assert "Value error" not in line
    with mserver.http() as c:
        r = c.post(
            f"/v1/vaults/{VAULT}/services",
            json={
                "password": OWNER_PASSWORD,
                "service": {
                    "name": "t1",
                    "host": "api.example.com",
                    "auth": {"type": "bearer", "token": "K"},
                },
            },
        )
    assert r.status_code in (400, 422) and "Value error" not in r.text, r.text
    assert "name 't1' must be" in r.text
