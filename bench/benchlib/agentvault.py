"""The agent-vault column: set-up through the CLI contract (SPEC §2.1, §10), HTTP API fallbacks (§9)."""

from __future__ import annotations

import contextlib
import json
import os
import re
import shlex
import shutil
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .common import (
    BENCH_HOST,
    BENCH_SERVICE,
    CORES,
    OWNER_EMAIL,
    OWNER_PASSWORD,
    SECRET,
    VENV,
    BenchError,
    log,
    pin_threads,
    read_line,
    run,
    spawn,
)


@dataclass
class AgentVault:
    proc: subprocess.Popen[Any] | None = None
    api: str = ""
    proxy_port: int = 0
    token: str = ""
    token_big: str = ""
    ca: str = ""
    ready_s: float | None = None
    services_big: int = 0
    services_load_s: float | None = None
    error: str | None = None
    error_big: str | None = None
    cli_fallbacks: list[str] = field(default_factory=list)
    cli_wants_password: bool = False
    rss_10_services_kb: int | None = None
    rss_big_services_kb: int | None = None


def av_exe() -> str:
    exe = VENV / "bin" / "agent-vault"
    return str(exe) if exe.exists() else (shutil.which("agent-vault") or "agent-vault")


def av_env(home: Path) -> dict[str, str]:
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.lower().endswith("_proxy") and not k.startswith("AGENT_VAULT_")
    }
    env["AGENT_VAULT_HOME"] = str(home)
    env["NO_COLOR"] = "1"
    env["AGENT_VAULT_DEBUG"] = "1"  # only changes error output: a traceback instead of "internal error"
    # Keep the CLI's login in the throwaway home (cli/session.json), never in the user's OS keyring.
    env["PYTHON_KEYRING_BACKEND"] = "keyring.backends.null.Keyring"
    return env


def api_call(
    api: str, method: str, path: str, body: Any = None, token: str | None = None, timeout: float = 120
) -> Any:
    data = None if body is None else json.dumps(body, separators=(",", ":")).encode()
    req = urllib.request.Request(api + path, data=data, method=method)
    if data is not None:
        req.add_header("Content-Type", "application/json")
    if token:
        req.add_header("Authorization", f"Bearer {token}")
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    try:
        with opener.open(req, timeout=timeout) as r:
            raw = r.read()
    except urllib.error.HTTPError as e:
        raise BenchError(f"{method} {path} -> {e.code}: {e.read()[:300].decode(errors='replace')}") from e
    except OSError as e:
        raise BenchError(f"{method} {path} failed: {e}") from e
    return json.loads(raw) if raw.strip() else None


def extract_token(out: str) -> str:
    try:
        tok = json.loads(out).get("token")
        if tok:
            return str(tok)
    except (ValueError, AttributeError):
        pass
    m = re.search(r"av_agt_[A-Za-z0-9_\-]+", out)
    if not m:
        raise BenchError(f"no agent token (av_agt_...) in output: {out[:200]!r}")
    return m.group(0)


def cli_step(
    av: AgentVault,
    env: dict[str, str],
    cmd: list[str],
    stdin: str | None,
    api_fallback: Callable[[], Any] | None,
) -> str:
    """Run `agent-vault --addr API CMD`. If it fails: when the error asks for a password, retry with
    --password-stdin (SPEC §3.4/§10; the contract says --no-step-up needs none); then do the same
    through the HTTP API (SPEC §9). Every deviation is recorded with the exact command and error."""
    g = [av_exe(), "--addr", av.api]
    if stdin is None and av.cli_wants_password:  # learned from an earlier step: don't pay twice
        with contextlib.suppress(BenchError):
            return run(
                [*g, *cmd, "--password-stdin"], timeout=300, env=env, stdin=OWNER_PASSWORD + "\n"
            ).stdout
    try:
        return run([*g, *cmd], timeout=300, env=env, stdin=stdin).stdout
    except BenchError as e:
        err = e
    if stdin is None and "password" in str(err):
        try:
            out = run(
                [*g, *cmd, "--password-stdin"], timeout=300, env=env, stdin=OWNER_PASSWORD + "\n"
            ).stdout
        except BenchError as e2:
            err = e2
        else:
            av.cli_wants_password = True
            av.cli_fallbacks.append(
                f"{err} -> succeeded with --password-stdin (despite --no-step-up); later step-up commands "
                "were given --password-stdin directly"
            )
            log(f"agent-vault CLI needed --password-stdin despite --no-step-up: {' '.join(cmd[:3])}")
            return out
    if api_fallback is None:
        raise err
    out = str(api_fallback())
    av.cli_fallbacks.append(f"{err} -> used the HTTP API instead")
    log(f"agent-vault CLI step failed, used the HTTP API instead: {err}")
    return out


def start_agent_vault(
    work: Path,
    pki: dict[str, Any],
    av: AgentVault,
    extra_args: tuple[str, ...] = (),
    name: str = "agent-vault",
) -> None:
    """The CLI contract of SPEC §2.1/§10; every failure names the command. `extra_args` go to
    `agent-vault server` (e.g. `--fast-path on`); `name` keeps homes and logs of several servers apart."""
    home = work / ("avhome" if name == "agent-vault" else f"avhome-{name}")
    home.mkdir(mode=0o700)
    env = av_env(home)
    exe = av_exe()
    run(
        [
            exe,
            "init",
            "--key-mode",
            "passwordless",
            "--owner-email",
            OWNER_EMAIL,
            "--password-stdin",
            "--yes",
        ],
        timeout=120,
        env=env,
        stdin=OWNER_PASSWORD + "\n",
    )
    cmd = [
        exe,
        "server",
        "--port",
        "0",
        "--proxy-port",
        "0",
        "--allow-net",
        "127.0.0.0/8",
        "--upstream-ca",
        pki["ca"],
        "--rate-limits",
        "off",
        "--no-step-up",
        *extra_args,
    ]
    wrap = os.environ.get("AV_BENCH_SERVER_WRAP")  # e.g. "python -m cProfile -o f" (bench/profile.py)
    if wrap:
        cmd = [*shlex.split(wrap), *cmd]
    t0 = time.monotonic()
    log_path = work / f"{name}.log"
    p = spawn(
        name,
        cmd,
        log_path,
        "proxy",
        env=env,
        stdout=subprocess.PIPE,
        stdin=subprocess.DEVNULL,
    )
    av.proc = p
    try:
        line = read_line(p, 60)
    except BenchError as e:
        tail = log_path.read_text(errors="replace").strip().splitlines()[-5:]
        raise BenchError(f"`{' '.join(cmd)}`: {e}; stderr: {' | '.join(tail)}") from e
    av.ready_s = round(time.monotonic() - t0, 3)
    m = re.search(r"agent-vault ready api=(\S+) proxy=http://([\d.]+):(\d+)", line)
    if not m:
        raise BenchError(f"`agent-vault server` printed an unexpected ready line: {line!r}")
    av.api, av.proxy_port = m.group(1).rstrip("/"), int(m.group(3))
    g = [exe, "--addr", av.api]

    def step(cmd: list[str], stdin: str | None, api_fallback: Callable[[], Any]) -> str:
        return cli_step(av, env, cmd, stdin, api_fallback)

    try:
        run(
            [*g, "auth", "login", "--email", OWNER_EMAIL, "--password-stdin"],
            timeout=60,
            env=env,
            stdin=OWNER_PASSWORD + "\n",
        )
    except BenchError as e:
        av.cli_fallbacks.append(f"{e} -> logged in with POST /v1/auth/login")
        log(f"agent-vault CLI step failed: {e}")
    user_tok = api_call(av.api, "POST", "/v1/auth/login", {"email": OWNER_EMAIL, "password": OWNER_PASSWORD})[
        "token"
    ]
    step(
        ["vault", "credential", "set", "BENCH_TOKEN", "--stdin"],
        SECRET + "\n",
        lambda: api_call(
            av.api, "PUT", "/v1/vaults/default/credentials/BENCH_TOKEN", {"value": SECRET}, token=user_tok
        ),
    )
    step(
        [
            "vault",
            "service",
            "add",
            "bench",
            "--host",
            BENCH_HOST,
            "--auth-type",
            "bearer",
            "--token-key",
            "BENCH_TOKEN",
        ],
        None,
        lambda: api_call(
            av.api,
            "POST",
            "/v1/vaults/default/services",
            {"password": OWNER_PASSWORD, "service": BENCH_SERVICE},
            token=user_tok,
        ),
    )
    out = step(
        ["agent", "create", "bench-agent", "--vault", "default", "--json"],
        None,
        lambda: json.dumps(
            api_call(
                av.api,
                "POST",
                "/v1/agents",
                {
                    "name": "bench-agent",
                    "password": OWNER_PASSWORD,
                    "vaults": [{"vault": "default", "role": "proxy"}],
                },
                token=user_tok,
            )
        ),
    )
    av.token = extract_token(out)
    # Nine more services so the vault holds 10, the baseline of the 10 000-service case.
    for i in range(1, 10):
        api_call(
            av.api,
            "POST",
            "/v1/vaults/default/services",
            {"password": OWNER_PASSWORD, "service": filler_service(i)},
            token=user_tok,
        )
    # The CA lives in the database (issue 18): fetch it, one file per server (each has its own CA).
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    with opener.open(av.api + "/v1/mitm/ca.pem", timeout=30) as r:
        (work / f"{home.name}-ca.pem").write_bytes(r.read())
    av.ca = str(work / f"{home.name}-ca.pem")
    pin_threads(p.pid, CORES["proxy"])


def filler_service(i: int) -> dict[str, Any]:
    if i % 10 == 0:  # one in ten is a wildcard
        return {
            "name": f"wild-{i}",
            "host": f"*.w{i}.example.com",
            "auth": {"type": "bearer", "token": "BENCH_TOKEN"},
        }
    return {
        "name": f"svc-{i}",
        "host": f"h{i}.example.com",
        "auth": {"type": "bearer", "token": "BENCH_TOKEN"},
    }


def load_big_vault(work: Path, av: AgentVault, n: int) -> None:
    """Vault "big": n services with the bench service last (worst case for a linear scan)."""
    env = av_env(work / "avhome")
    user_tok = api_call(av.api, "POST", "/v1/auth/login", {"email": OWNER_EMAIL, "password": OWNER_PASSWORD})[
        "token"
    ]
    api_call(av.api, "POST", "/v1/vaults", {"name": "big"}, token=user_tok)
    api_call(av.api, "PUT", "/v1/vaults/big/credentials/BENCH_TOKEN", {"value": SECRET}, token=user_tok)
    services = [filler_service(i) for i in range(1, n)]
    services.append(BENCH_SERVICE)
    t0 = time.monotonic()
    try:
        api_call(
            av.api,
            "PUT",
            "/v1/vaults/big/services",
            {"password": OWNER_PASSWORD, "services": services},
            token=user_tok,
            timeout=300,
        )
    except BenchError as e:
        log(f"PUT /v1/vaults/big/services failed ({e}); trying `vault service import`")
        f = work / "big-services.yaml"  # JSON is valid YAML
        f.write_text(json.dumps({"services": services}))
        cli_step(av, env, ["vault", "service", "import", str(f), "--vault", "big"], None, None)
    av.services_load_s = round(time.monotonic() - t0, 2)
    got = api_call(av.api, "GET", "/v1/vaults/big/services", token=user_tok, timeout=120)
    av.services_big = len(got.get("services", [])) if isinstance(got, dict) else 0
    out = cli_step(
        av,
        env,
        ["agent", "create", "bench-agent-big", "--vault", "big", "--json"],
        None,
        lambda: json.dumps(
            api_call(
                av.api,
                "POST",
                "/v1/agents",
                {
                    "name": "bench-agent-big",
                    "password": OWNER_PASSWORD,
                    "vaults": [{"vault": "big", "role": "proxy"}],
                },
                token=user_tok,
            )
        ),
    )
    av.token_big = extract_token(out)
