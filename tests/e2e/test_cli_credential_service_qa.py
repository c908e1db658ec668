"""QA findings on `vault credential …`, `vault service add|set` and `agent rotate`, through the real CLI
against a real server: method lists (`*` means any; `--any-method`/`--any-port` reset), non-UTF-8 values,
every key without a value named, case-insensitive `--token-auth`/`--substitute-in`, durations never
echoed, `get --reveal` refusing a dynamic key before any prompt, and usage errors exiting 2."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from helpers.cli_fixtures import assert_clean, mserver
from helpers.server import OWNER_PASSWORD, ServerProc
from helpers.terminal import Term

__all__ = ["mserver"]
PW = OWNER_PASSWORD + "\n"
BIN_SECRET = b"SEKRET\xff\xfe-bin\n"


def _service(srv: ServerProc, name: str) -> dict[str, Any]:
    with srv.http() as c:
        r = c.get(f"/v1/vaults/default/services/{name}")
    assert r.status_code == 200, r.text
    return dict(r.json())


def _keys(srv: ServerProc) -> set[str]:
    with srv.http() as c:
        return {x["key"] for x in c.get("/v1/vaults/default/credentials").json()["credentials"]}


def _add(srv: ServerProc, name: str, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return srv.cli(
        "vault", "service", "add", name, "--host", f"{name}.example.com", "--password-stdin", *args,
        input=PW, check=check,
    )  # fmt: skip


def _one_line_error(cp: subprocess.CompletedProcess[str], code: int) -> str:
    assert cp.returncode == code, (cp.returncode, cp.stdout, cp.stderr)
    lines = cp.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), cp.stderr
    assert_clean(cp)
    return lines[0]


# 2. methods: '*' / ALL / ANY mean any method; --any-method / --any-port reset a service to "any".


def test_star_and_all_mean_any_method_and_set_can_reset_methods_and_port(mserver: ServerProc) -> None:
    _add(mserver, "star-methods", "--auth-type", "passthrough", "--method", "*")
    assert _service(mserver, "star-methods")["methods"] is None
    _add(mserver, "all-methods", "--auth-type", "passthrough", "--method", "all")
    assert _service(mserver, "all-methods")["methods"] is None
    mixed = _add(
        mserver,
        "mixed-methods",
        "--auth-type",
        "passthrough",
        "--method",
        "GET",
        "--method",
        "*",
        check=False,
    )
    assert "must be given alone" in _one_line_error(mixed, 1)
    bad = _add(mserver, "bad-methods", "--auth-type", "passthrough", "--method", "G/ET", check=False)
    assert "HTTP methods such as GET" in _one_line_error(bad, 1)
    with mserver.http() as c:  # the API stores '*' as "any" too
        r = c.post(
            "/v1/vaults/default/services",
            json={
                "password": OWNER_PASSWORD,
                "service": {
                    "name": "api-star",
                    "host": "api-star.example.com",
                    "methods": ["*"],
                    "auth": {"type": "passthrough"},
                    "approval": {"methods": ["*"]},
                },
            },
        )
    assert r.status_code == 201, r.text
    assert r.json()["methods"] is None and r.json()["approval"]["methods"] is None

    _add(mserver, "reset-me", "--auth-type", "passthrough", "--method", "get", "--port", "8443")
    before = _service(mserver, "reset-me")
    assert before["methods"] == ["GET"] and before["port"] == 8443
    mserver.cli(
        "vault", "service", "set", "reset-me", "--any-method", "--any-port", "--password-stdin", input=PW
    )
    after = _service(mserver, "reset-me")
    assert after["methods"] is None and after["port"] is None
    both = mserver.cli(
        "vault", "service", "set", "reset-me", "--any-method", "--method", "GET", "--password-stdin",
        input=PW, check=False,
    )  # fmt: skip
    assert "--any-method" in _one_line_error(both, 2)
    helptext = mserver.cli("vault", "service", "set", "--help").stdout
    assert "--any-method" in helptext and "--any-port" in helptext


# 3. a value that is not UTF-8 text: one line, exit 1, nothing written, never shown.


def _raw_cli(
    srv: ServerProc, args: list[str], stdin: bytes, env: dict[str, Any]
) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run(
        [sys.executable, "-m", "agent_vault", *args],
        input=stdin,
        capture_output=True,
        env={**srv.env, "AGENT_VAULT_ADDR": srv.api, **env},
        timeout=60,
    )


@pytest.mark.parametrize("how", ["stdin", "file", "env"])
def test_a_value_that_is_not_utf8_is_refused_in_one_line(
    mserver: ServerProc, tmp_path: Path, how: str
) -> None:
    key = f"BIN_{how.upper()}"
    args = ["vault", "credential", "set", key]
    env: dict[str, Any] = {}
    if how == "stdin":
        args.append("--stdin")
    elif how == "file":
        (tmp_path / "bin.txt").write_bytes(BIN_SECRET)
        args += ["--from-file", str(tmp_path / "bin.txt")]
    else:
        env["BIN_VAR"] = BIN_SECRET.rstrip(b"\n")  # bytes: passed to execve as they are
        args += ["--from-env", "BIN_VAR"]
    cp = _raw_cli(mserver, args, BIN_SECRET if how == "stdin" else b"", env)
    err = cp.stderr.decode(errors="replace")
    assert cp.returncode == 1, err
    assert err.strip() == "error: the value must be UTF-8 text" or err.strip().startswith(
        "error: the value must be UTF-8 text"
    ), err
    assert len(err.strip().splitlines()) == 1 and b"SEKRET" not in cp.stderr + cp.stdout
    assert key not in _keys(mserver)


# 4. every key without a value is named, for every auth type.


def test_every_key_without_a_value_is_named(mserver: ServerProc) -> None:
    basic = _add(
        mserver,
        "miss-basic",
        "--auth-type",
        "basic",
        "--username-key",
        "MISS_ONE",
        "--password-key",
        "MISS_TWO",
    )
    assert "MISS_ONE, MISS_TWO have no value yet" in basic.stdout, basic.stdout
    custom = _add(
        mserver, "miss-custom", "--auth-type", "custom", "--custom-header", "X-A: {{ NOKEY }}",
        "--custom-header", "X-B: pre {{NOKEY_TWO}} post",
    )  # fmt: skip
    assert "NOKEY, NOKEY_TWO have no value yet" in custom.stdout, custom.stdout
    single = _add(mserver, "miss-one", "--auth-type", "custom", "--custom-header", "X-A: {{ LONE_KEY }}")
    assert (
        "LONE_KEY has no value yet: set it with 'agent-vault vault credential set LONE_KEY'" in single.stdout
    )
    google = mserver.cli(
        "vault",
        "service",
        "add",
        "miss-google",
        "--from-catalog",
        "google-oauth",
        "--password-stdin",
        input=PW,
    )
    assert "GOOGLE_CLIENT_ID, GOOGLE_CLIENT_SECRET, GOOGLE_REFRESH_TOKEN have no value yet" in google.stdout


# 5. --token-auth (and --substitute-in) are case-insensitive and suggest the closest value.


def test_token_auth_and_substitute_in_are_case_insensitive(mserver: ServerProc) -> None:
    oauth = [
        "--auth-type", "oauth2-client-credentials", "--token-url", "https://idp.example.com/token",
        "--client-id-key", "TA_ID", "--client-secret-key", "TA_SECRET",
    ]  # fmt: skip
    cp = _add(mserver, "ta-upper", *oauth, "--token-auth", "POST", "--json")
    assert json.loads(cp.stdout)["auth"]["token_auth"] == "post"
    typo = _add(mserver, "ta-typo", *oauth, "--token-auth", "psot", check=False)
    line = _one_line_error(typo, 2)
    assert "did you mean post" in line and "Input should be" not in line
    subs = _add(
        mserver, "subs-upper", "--auth-type", "bearer", "--token-key", "SUB_TOKEN",
        "--substitute-in", "Header,QUERY", "--json",
    )  # fmt: skip
    assert json.loads(subs.stdout)["substitutions"]["in"] == ["header", "query"]


# 6. a bad duration is never echoed (API and CLI).


def test_a_bad_ttl_is_not_echoed(mserver: ServerProc) -> None:
    with mserver.http() as c:
        r = c.put(
            "/v1/vaults/default/credentials/TTL_KEY",
            json={
                "source": {"kind": "command", "command": "true", "ttl": "bogus-SEKRET"},
                "password": OWNER_PASSWORD,
            },
        )
    assert 400 <= r.status_code < 500 and "SEKRET" not in r.text, r.text
    assert "ttl" in r.json()["message"]
    cp = mserver.cli(
        "vault", "credential", "set", "TTL_KEY", "--command", "true", "--ttl", "abc-SEKRET",
        "--password-stdin", input=PW, check=False,
    )  # fmt: skip
    assert "ttl" in _one_line_error(cp, 2) and "SEKRET" not in cp.stderr + cp.stdout
    grace = mserver.cli(
        "agent", "rotate", "nobody-bot", "--grace", "x-SEKRET", "--password-stdin", input=PW, check=False
    )
    assert "SEKRET" not in grace.stderr and grace.returncode == 2


# 7. get --reveal on a dynamic key refuses before any prompt.


def test_reveal_of_a_dynamic_key_refuses_before_any_prompt(mserver: ServerProc) -> None:
    with mserver.http() as c:
        r = c.put(
            "/v1/vaults/default/credentials/CMD_K",
            json={"source": {"kind": "command", "command": "true"}, "password": OWNER_PASSWORD},
        )
    assert r.status_code == 200, r.text
    term = Term(
        ["vault", "credential", "get", "CMD_K", "--reveal"],
        {**mserver.env, "AGENT_VAULT_ADDR": mserver.api},
        timeout=15,
    )
    rc, text = term.finish()
    assert "to confirm" not in text and "assword" not in text, text
    assert rc == 1 and "comes from a command source" in text, (rc, text)


# 8. usage errors exit 2 with one line.


@pytest.mark.parametrize(
    "args",
    [
        ["vault", "credential", "set", "U_K", "--stdin", "--from-env", "HOME"],
        ["vault", "credential", "set", "U_K", "--ttl", "5m", "--stdin"],
        ["vault", "credential", "set", "U_K", "--command", "true", "--file", "/etc/hostname"],
        ["vault", "credential", "set", "U_K", "--command", "true", "--stdin"],
        ["vault", "credential", "set", "U_K", "--file", "/etc/hostname", "--shell"],
        ["agent", "rotate", "some-bot", "--grace", "2d", "--password-stdin"],
    ],
)
def test_usage_errors_exit_2_with_one_line(mserver: ServerProc, args: list[str]) -> None:
    cp = mserver.cli(*args, input="value\n", check=False)
    _one_line_error(cp, 2)
    assert "U_K" not in _keys(mserver)
