"""Tools, names and upstreams: nginx + Go toolchain, the load generator build, /etc/hosts, the test PKI,
nginx, the SSE upstream and the mitmdump baselines."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import socket
import subprocess
import time
from pathlib import Path
from typing import Any

from .common import (
    BENCH,
    BENCH_HOST,
    HOSTS_LINE,
    LOADGEN_BIN,
    LOADGEN_SRC,
    SECRET,
    TUNNEL_HOST,
    VENV,
    BenchError,
    free_port,
    log,
    read_line,
    run,
    spawn,
    wait_port,
)


def ensure_tools() -> dict[str, str]:
    missing = [
        pkg
        for exe, pkg in (("nginx", "nginx-light"), ("go", "golang-go"))
        if not shutil.which(exe) and not (exe == "nginx" and Path("/usr/sbin/nginx").exists())
    ]
    if missing:
        if os.geteuid() != 0 or not shutil.which("apt-get"):
            raise BenchError(
                f"missing {missing}; install them (Debian: apt-get install -y {' '.join(missing)})"
            )
        log(f"installing {missing} with apt-get")
        env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
        cp = run(["apt-get", "install", "-y", "-q", *missing], timeout=900, env=env, check=False)
        if cp.returncode != 0:
            run(["apt-get", "update", "-q"], timeout=900, env=env)
            run(["apt-get", "install", "-y", "-q", *missing], timeout=900, env=env)
    nginx = shutil.which("nginx") or "/usr/sbin/nginx"
    go = shutil.which("go") or ""
    return {"nginx": nginx, "go": go}


def build_loadgen(go: str) -> None:
    srcs = list(LOADGEN_SRC.glob("*.go")) + [LOADGEN_SRC / "go.mod"]
    if LOADGEN_BIN.exists() and LOADGEN_BIN.stat().st_mtime > max(s.stat().st_mtime for s in srcs):
        return
    if not go:
        raise BenchError("Go toolchain not found and bench/bin/loadgen is missing or stale")
    LOADGEN_BIN.parent.mkdir(parents=True, exist_ok=True)
    env = dict(
        os.environ, GOFLAGS="-mod=mod", GOPROXY="off", GOTOOLCHAIN="local", CGO_ENABLED="0", GO111MODULE="on"
    )
    if "HOME" not in env:
        env["GOCACHE"] = str(BENCH / "bin" / ".gocache")
    log("building bench/loadgen (Go, stdlib only, offline)")
    try:
        cp = subprocess.run(
            [go, "build", "-o", str(LOADGEN_BIN), "."],
            cwd=LOADGEN_SRC,
            env=env,
            capture_output=True,
            text=True,
            timeout=300,
        )
    except subprocess.TimeoutExpired as e:
        raise BenchError("go build timed out") from e
    if cp.returncode != 0:
        raise BenchError(f"go build failed: {cp.stderr.strip()}")


def ensure_hosts() -> str:
    """bench.local and tunnel.local must resolve to 127.0.0.1 for the client and every proxy."""

    def ok() -> bool:
        try:
            return all(socket.gethostbyname(h) == "127.0.0.1" for h in (BENCH_HOST, TUNNEL_HOST))
        except OSError:
            return False

    if ok():
        return "already resolving"
    try:
        text = Path("/etc/hosts").read_text()
        with open("/etc/hosts", "a") as f:
            f.write(("" if text.endswith("\n") else "\n") + HOSTS_LINE + "  # agent-vault bench\n")
    except OSError as e:
        raise BenchError(
            f"{BENCH_HOST}/{TUNNEL_HOST} do not resolve to 127.0.0.1 and /etc/hosts is not "
            f"writable ({e}); add the line '{HOSTS_LINE}' to /etc/hosts"
        ) from e
    if not ok():
        raise BenchError(f"added '{HOSTS_LINE}' to /etc/hosts but the names still do not resolve")
    return "added to /etc/hosts"


# --------------------------------------------------------------------------- upstreams


def make_pki(work: Path) -> dict[str, Any]:
    import trustme
    from cryptography import x509

    ca = trustme.CA(organization_name="agent-vault bench upstream CA")
    leaf = ca.issue_cert(BENCH_HOST, TUNNEL_HOST)
    pki = work / "pki"
    pki.mkdir()
    ca.cert_pem.write_to_path(str(pki / "upstream-ca.pem"))
    leaf.private_key_pem.write_to_path(str(pki / "server.key"))
    chain = b"".join(b.bytes() for b in leaf.cert_chain_pems)
    (pki / "server.pem").write_bytes(chain)
    subj = x509.load_pem_x509_certificate(ca.cert_pem.bytes()).subject
    org = subj.get_attributes_for_oid(x509.NameOID.ORGANIZATION_NAME)[0].value
    return {
        "ca": str(pki / "upstream-ca.pem"),
        "cert": str(pki / "server.pem"),
        "key": str(pki / "server.key"),
        "ca_org": org,
    }


NGINX_CONF = """\
worker_processes 1;
daemon off;
master_process off;
pid {work}/nginx.pid;
error_log {work}/nginx-error.log warn;
events {{ worker_connections 16384; }}
http {{
    access_log off;
    client_body_temp_path {work}/tmp/body;
    proxy_temp_path {work}/tmp/proxy;
    fastcgi_temp_path {work}/tmp/fastcgi;
    uwsgi_temp_path {work}/tmp/uwsgi;
    scgi_temp_path {work}/tmp/scgi;
    keepalive_timeout 600s;
    keepalive_requests 100000000;
    sendfile on;
    map $http_authorization $bench_auth {{
        "Bearer {secret}" "injected-ok";
        "~." "other";
        default "missing";
    }}
    server {{
        listen 127.0.0.1:{port} ssl http2;  # h2 only for clients that offer it (loadgen -h2)
        server_name {bench} {tunnel};
        ssl_certificate {cert};
        ssl_certificate_key {key};
        ssl_protocols TLSv1.3;
        location = / {{ default_type text/plain; return 200 "bench-ok\\n"; }}
        location = /auth {{ default_type text/plain; return 200 "auth=$bench_auth\\n"; }}
        location = /echo {{
            default_type application/json; return 200 '{{"authorization":"$http_authorization"}}\\n';
        }}
        location = /10m {{ default_type application/octet-stream; alias {work}/www/10m.bin; }}
    }}
}}
"""


def start_nginx(nginx: str, work: Path, pki: dict[str, Any]) -> tuple[int, str]:
    nw = work / "nginx"
    (nw / "tmp").mkdir(parents=True)
    (nw / "www").mkdir()
    blob = os.urandom(10 * 1024 * 1024)
    (nw / "www" / "10m.bin").write_bytes(blob)
    port = free_port()
    conf = nw / "nginx.conf"
    conf.write_text(
        NGINX_CONF.format(
            work=nw,
            port=port,
            cert=pki["cert"],
            key=pki["key"],
            secret=SECRET,
            bench=BENCH_HOST,
            tunnel=TUNNEL_HOST,
        )
    )
    cmd = [nginx, "-p", str(nw), "-c", str(conf), "-e", str(nw / "nginx-error.log")]
    p = spawn("nginx", cmd, nw / "nginx.stderr", "other", stdout=subprocess.DEVNULL)
    try:
        wait_port(port, 15, p)
    except BenchError as e:
        err = " ".join(
            f.read_text()[-500:] for f in (nw / "nginx.stderr", nw / "nginx-error.log") if f.exists()
        )
        raise BenchError(f"nginx did not start: {e}: {err}") from e
    return port, hashlib.sha256(blob).hexdigest()


def start_sse(pki: dict[str, Any]) -> int:
    cmd = [str(LOADGEN_BIN), "-mode", "serve-sse", "-cert", pki["cert"], "-key", pki["key"]]
    p = spawn("sse-upstream", cmd, None, "other", stdout=subprocess.PIPE)
    addr = json.loads(read_line(p, 15))["addr"]
    return int(addr.rsplit(":", 1)[1])


def start_mitmdump(
    work: Path, pki: dict[str, Any], name: str, extra: list[str]
) -> tuple[subprocess.Popen[Any], int, str]:
    mitmdump = VENV / "bin" / "mitmdump"
    if not mitmdump.exists():
        mitmdump = Path(shutil.which("mitmdump") or "mitmdump")
    conf = work / name
    conf.mkdir()
    port = free_port()
    cmd = [
        str(mitmdump),
        "-q",
        "--listen-host",
        "127.0.0.1",
        "--listen-port",
        str(port),
        "--set",
        f"confdir={conf}",
        "--set",
        f"ssl_verify_upstream_trusted_ca={pki['ca']}",
        *extra,
    ]
    p = spawn(name, cmd, work / f"{name}.log", "proxy", stdout=subprocess.DEVNULL)
    return p, port, str(conf / "mitmproxy-ca-cert.pem")


def wait_mitmdump(name: str, p: subprocess.Popen[Any], port: int, ca_path: str) -> None:
    """mitmdump is up when it listens and has written its CA certificate."""
    wait_port(port, 60, p)
    ca = Path(ca_path)
    deadline = time.monotonic() + 15
    while not ca.exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    if not ca.exists():
        raise BenchError(f"{name}: {ca} was not created")
