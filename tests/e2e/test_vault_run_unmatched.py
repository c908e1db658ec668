"""`vault run` names, once on stderr after the child exits, each host the child reached that matched no
service of the vault (nothing injected there); --quiet silences it."""

from __future__ import annotations

from helpers.cli_fixtures import SECRET, assert_clean, mserver, mupstream
from helpers.server import ServerProc
from helpers.upstream import TLSUpstream

__all__ = ["mserver", "mupstream"]
CURL = "/usr/bin/curl"
HINT = (
    "which no service of vault default matches (nothing injected); "
    "add one with 'agent-vault vault service add'"
)


def test_run_names_hosts_that_matched_no_service(mserver: ServerProc, mupstream: TLSUpstream) -> None:
    # a service on localhost (so loopback goes through the proxy); 127.0.0.1 matches none: tunnelled
    mserver.set_credential("API_TOKEN", SECRET)
    mserver.add_service(
        {
            "name": "echo-api",
            "host": "localhost",
            "port": mupstream.port,
            "auth": {"type": "bearer", "token": "API_TOKEN"},
        }
    )
    unmatched = f"https://127.0.0.1:{mupstream.port}/echo/unmatched"
    matched = f"https://localhost:{mupstream.port}/echo/matched"
    cp = mserver.cli("vault", "run", "--", CURL, "-sSk", unmatched, unmatched, matched)
    assert_clean(cp, SECRET)
    assert '"path"' in cp.stdout or "echo" in cp.stdout  # the child reached the upstream
    reports = [line for line in cp.stderr.splitlines() if "no service of vault" in line]
    assert reports == [f"agent-vault: the command reached 127.0.0.1, {HINT}"], cp.stderr

    only_matched = mserver.cli("vault", "run", "--", CURL, "-sS", matched)
    assert "no service of vault" not in only_matched.stderr
    assert "agent-vault: vault default via proxy" in only_matched.stderr

    quiet = mserver.cli("vault", "run", "--quiet", "--", CURL, "-sSk", unmatched)
    assert "agent-vault:" not in quiet.stderr and quiet.stdout
