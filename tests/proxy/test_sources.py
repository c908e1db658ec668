"""Dynamic sources without the server: spec validation, sealing, and the resolver's cache, shared run,
bounds and failures, with real subprocesses and real files."""

from __future__ import annotations

import asyncio
import os
import sys
import time
from pathlib import Path

import pytest

from agent_vault import credsource, crypto
from agent_vault.credsource import SourceSpec, make_spec, parse_duration
from agent_vault.errors import CredentialUnavailable, InvalidRequest
from agent_vault.proxy.sources import SourceResolver


@pytest.mark.parametrize(
    ("text", "seconds"),
    [("30", 30.0), ("30s", 30.0), ("5m", 300.0), ("1h", 3600.0), ("1d", 86400.0), (2, 2.0)],
)
def test_durations(text: str | int, seconds: float) -> None:
    assert parse_duration(text) == seconds


@pytest.mark.parametrize(
    "data",
    [
        {"kind": "command"},
        {"kind": "command", "command": "   "},
        {"kind": "command", "command": "echo 'unbalanced"},
        {"kind": "command", "command": "echo x", "ttl": "0s"},
        {"kind": "command", "command": "echo x", "ttl": "8d"},
        {"kind": "command", "command": "echo x", "ttl": "soon"},
        {"kind": "command", "command": "echo x", "timeout": "10m"},
        {"kind": "command", "command": "echo x", "path": "/etc/hostname"},
        {"kind": "file", "path": "relative/path"},
        {"kind": "file", "path": "/x", "command": "echo"},
        {"kind": "env", "name": "X"},
        {"kind": "file", "path": "/x", "extra": 1},
    ],
)
def test_invalid_specs_are_refused(data: dict[str, object]) -> None:
    with pytest.raises(InvalidRequest):
        make_spec(data)


def test_defaults_repr_and_seal() -> None:
    spec = make_spec({"kind": "command", "command": "tool --token s3cr3t-arg get"})
    assert spec.ttl == credsource.DEFAULT_COMMAND_TTL and spec.argv() == [
        "tool",
        "--token",
        "s3cr3t-arg",
        "get",
    ]
    assert "s3cr3t" not in repr(spec)
    assert spec.public(owner=False) == {"kind": "command", "ttl": 300.0}
    assert make_spec({"kind": "command", "command": "a | b", "shell": True}).argv() == [
        "/bin/sh",
        "-c",
        "a | b",
    ]
    dek = crypto.new_key()
    sealed = credsource.seal_spec(dek, spec, 7, "KEY", 1)
    assert b"s3cr3t" not in sealed
    assert credsource.open_spec(dek, sealed, 7, "KEY", 1) == spec
    with pytest.raises(crypto.DecryptionError):  # bound to its vault and key
        credsource.open_spec(dek, sealed, 8, "KEY", 1)


def _counter(tmp: Path, delay: float = 0.0) -> tuple[Path, SourceSpec]:
    state = tmp / "n"
    script = tmp / "count.py"
    script.write_text(
        "import pathlib, sys, time\n"
        "p = pathlib.Path(sys.argv[1])\n"
        "n = int(p.read_text()) + 1 if p.exists() else 1\n"
        "p.write_text(str(n))\n"
        f"time.sleep({delay})\n"
        "print('value-' + str(n))\n"
    )
    return state, make_spec({"kind": "command", "command": f"{sys.executable} {script} {state}", "ttl": 1})


def test_concurrent_callers_share_one_run_and_the_ttl_expires(tmp_path: Path) -> None:
    state, spec = _counter(tmp_path, delay=0.3)

    async def main() -> list[str]:
        r = SourceResolver()
        first = await asyncio.gather(*(r.resolve(1, "K", spec) for _ in range(10)))
        await asyncio.sleep(1.1)
        return [*first, await r.resolve(1, "K", spec)]

    got = asyncio.run(main())
    assert got[:10] == ["value-1"] * 10 and got[10] == "value-2" and state.read_text() == "2"


def test_a_cancelled_caller_does_not_cancel_the_shared_run(tmp_path: Path) -> None:
    _, spec = _counter(tmp_path, delay=0.3)

    async def main() -> str:
        r = SourceResolver()
        t = asyncio.ensure_future(r.resolve(1, "K", spec))
        await asyncio.sleep(0.05)
        t.cancel()
        return await r.resolve(1, "K", spec)

    assert asyncio.run(main()) == "value-1"


def test_output_is_bounded_and_the_group_is_killed(tmp_path: Path) -> None:
    spec = make_spec({"kind": "command", "command": "yes y", "timeout": 5})
    started = time.monotonic()
    with pytest.raises(CredentialUnavailable, match="larger than 1 KiB"):
        asyncio.run(SourceResolver(limit=1024).resolve(1, "BIG", spec))
    assert time.monotonic() - started < 4


def test_a_child_that_keeps_stdout_open_does_not_hang_the_request(tmp_path: Path) -> None:
    # `setsid` puts the sleeper outside the killed group, holding the pipe: asyncio's wait() alone
    # would wait for it (8 s); the resolver cuts the pipe instead
    spec = make_spec({"kind": "command", "command": "sh -c 'setsid sleep 8 & exec yes y'", "timeout": 5})
    started = time.monotonic()
    with pytest.raises(CredentialUnavailable, match="larger than 1 KiB"):
        asyncio.run(SourceResolver(limit=1024).resolve(1, "BIG", spec))
    assert time.monotonic() - started < 4


def test_a_failure_is_held_briefly_then_retried(tmp_path: Path) -> None:
    flag = tmp_path / "ok"
    spec = make_spec({"kind": "command", "command": f"cat {flag}"})

    async def main() -> str:
        r = SourceResolver()
        with pytest.raises(CredentialUnavailable, match="exited with status 1"):
            await r.resolve(1, "K", spec)
        flag.write_text("now-there\n")
        with pytest.raises(CredentialUnavailable):  # within the hold
            await r.resolve(1, "K", spec)
        await asyncio.sleep(1.05)
        return await r.resolve(1, "K", spec)

    assert asyncio.run(main()) == "now-there"


def test_a_command_does_not_inherit_the_servers_secrets(monkeypatch: pytest.MonkeyPatch) -> None:
    secrets = {
        "DATABASE_URL": "postgresql://vault:db-s3cret@db/av",
        "PGPASSWORD": "db-s3cret",
        "AGENT_VAULT_MASTER_PASSWORD": "master-s3cret",
        "AGENT_VAULT_NOTIFY_URL": "https://hooks.example/s3cret",
        "AGENT_VAULT_METRICS_TOKEN": "metrics-s3cret",
    }
    for name, value in secrets.items():
        monkeypatch.setenv(name, value)
    monkeypatch.setenv("KEEP_ME", "kept")
    script = "import os; print(repr(sorted(k for k in os.environ if k in %r)), os.environ['KEEP_ME'])"
    spec = make_spec({"kind": "command", "command": f'{sys.executable} -c "{script % sorted(secrets)}"'})
    assert asyncio.run(SourceResolver().resolve(1, "K", spec)) == "[] kept"


def test_file_sources_regular_files_only_and_bounded(tmp_path: Path) -> None:
    big = tmp_path / "big"
    big.write_bytes(b"x" * 2048)
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)

    async def main() -> None:
        r = SourceResolver(limit=1024)
        with pytest.raises(CredentialUnavailable, match="larger than 1 KiB"):
            await r.resolve(1, "A", make_spec({"kind": "file", "path": str(big)}))
        with pytest.raises(CredentialUnavailable, match="not a regular file"):
            await r.resolve(1, "B", make_spec({"kind": "file", "path": str(fifo)}))
        with pytest.raises(CredentialUnavailable, match="cannot be read"):
            await r.resolve(1, "C", make_spec({"kind": "file", "path": str(tmp_path / "missing")}))

    asyncio.run(main())
