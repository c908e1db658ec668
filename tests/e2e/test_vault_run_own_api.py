"""A `vault run` child reaches agent-vault's own API even when its calls go through the proxy.

With a service on a loopback name, `vault run` takes the loopback names out of the child's NO_PROXY (so
that service is injected), and the child's calls to AGENT_VAULT_ADDR (discover, proposals) go through
the proxy. Under `unmatched_policy: deny` and without `--allow-net` for loopback they were refused
(`service_not_allowed`, a hint pointing at proposals that were refused the same way; `ssrf_blocked`
under `tunnel`). The proxy lets exactly the API's own address through for agents on this machine
(`proxy/ownapi.py`), uninjected and audited, and nothing else on loopback.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import trustme
from helpers.server import OWNER_EMAIL, OWNER_PASSWORD, ServerProc

# the child: GET $AGENT_VAULT_ADDR/v1/discover, then a loopback port that is not the API, through the
# proxy the environment names (urllib honours HTTP_PROXY and NO_PROXY); prints status and error codes
CHILD = r"""
import json, os, sys, urllib.error, urllib.request
def get(url, token):
    req = urllib.request.Request(url, headers={"Authorization": "Bearer " + token})
    try:
        with urllib.request.urlopen(req, timeout=20) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read() or b"{}")
addr, token = os.environ["AGENT_VAULT_ADDR"], os.environ["AGENT_VAULT_TOKEN"]
status, body = get(addr + "/v1/discover", token)
other_status, other = get("http://127.0.0.1:" + sys.argv[1] + "/", token)
print(json.dumps({"no_proxy": os.environ.get("NO_PROXY", ""), "status": status, "vault": body.get("vault"),
                  "other_status": other_status, "other_error": other.get("error")}))
"""


@pytest.fixture(scope="module")
def guarded(tmp_path_factory: pytest.TempPathFactory, upstream_ca: trustme.CA) -> Iterator[ServerProc]:
    """A server whose SSRF guard blocks loopback (no --allow-net), owner logged in, a vault with a
    service on `localhost` and `unmatched_policy: deny`."""
    with ServerProc(tmp_path_factory.mktemp("own-api"), upstream_ca, allow_net=False) as s:
        s.cli("auth", "login", "--email", OWNER_EMAIL, "--password-stdin", input=OWNER_PASSWORD + "\n")
        s.set_credential("LOCAL_TOKEN", "local-secret-value-0123456789")
        s.add_service(
            {
                "name": "local-dev",
                "host": "localhost",
                "port": 9,
                "auth": {"type": "bearer", "token": "LOCAL_TOKEN"},
            }
        )
        with s.http() as c:
            r = c.patch("/v1/vaults/default", json={"password": OWNER_PASSWORD, "unmatched_policy": "deny"})
            assert r.status_code == 200, r.text
        yield s


def _run_child(server: ServerProc, tmp: Path, other_port: int) -> dict[str, object]:
    script = tmp / "child.py"
    script.write_text(CHILD)
    cp = server.cli("vault", "run", "--", sys.executable, str(script), str(other_port))
    assert "Traceback" not in cp.stderr, cp.stderr
    # the child's own calls to the API are not reported as a host that matched no service
    assert "the command reached" not in cp.stderr, cp.stderr
    return dict(json.loads(cp.stdout.strip().splitlines()[-1]))


def _api_port(server: ServerProc) -> int:
    return int(server.api.rsplit(":", 1)[-1])


def test_the_child_reaches_the_api_through_the_proxy_under_deny(guarded: ServerProc, tmp_path: Path) -> None:
    got = _run_child(guarded, tmp_path, _api_port(guarded) + 1)
    assert "127.0.0.1" not in str(got["no_proxy"]).split(","), got  # the call did go through the proxy
    assert got["status"] == 200 and got["vault"] == "default", got
    # only the API's own address: another loopback port is refused as before
    assert got["other_status"] == 403 and got["other_error"] == "service_not_allowed", got
    with guarded.http() as c:
        logs = c.get("/v1/vaults/default/logs", params={"kind": "proxy.request", "limit": 50}).json()["logs"]
    api_port = _api_port(guarded)
    mine = [
        x for x in logs if x.get("port") == api_port and str(x.get("path", "")).startswith("/v1/discover")
    ]
    assert mine and all(
        x["decision"] == "unmatched_passthrough" and x["injected_keys"] == [] for x in mine
    ), mine


def test_the_child_reaches_the_api_under_tunnel_without_allow_net(
    guarded: ServerProc, tmp_path: Path
) -> None:
    with guarded.http() as c:
        r = c.patch("/v1/vaults/default", json={"password": OWNER_PASSWORD, "unmatched_policy": "tunnel"})
        assert r.status_code == 200, r.text
    try:
        got = _run_child(guarded, tmp_path, _api_port(guarded) + 1)
    finally:
        with guarded.http() as c:
            c.patch("/v1/vaults/default", json={"password": OWNER_PASSWORD, "unmatched_policy": "deny"})
    assert got["status"] == 200 and got["vault"] == "default", got
    assert got["other_status"] == 403 and got["other_error"] == "ssrf_blocked", got  # the guard still holds
