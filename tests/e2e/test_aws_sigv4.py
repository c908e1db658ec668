"""AWS SigV4 brokered auth (issue #16) through the real server: boto3 and curl `--aws-sigv4` under
`vault run` with PLACEHOLDER keys, re-signed by the proxy with the vault's keys, against a local
upstream that recomputes every signature with the real secret (`helpers.sigv4.SigV4Upstream`);
STS assume-role against moto's standalone server behind a local TLS front.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
import trustme
from helpers.cli_fixtures import start_server
from helpers.proxy import audit_records
from helpers.server import ServerProc
from helpers.sigv4 import SigV4Upstream, StsFront
from helpers.wait import wait_until
from moto.server import ThreadedMotoServer

KEY_ID = "AKIAREALKEY000000001"
SECRET = "real-secret-access-key-0000000000000001"
SESSION = "real-session-token-0000000000000001"
ROLE_KEY_ID = "AKIABASEKEY000000002"
ROLE_SECRET = "base-secret-access-key-000000000000002"
CURL = "/usr/bin/curl"
PLACEHOLDER_ENV = {"AWS_ACCESS_KEY_ID": "PLACEHOLDER", "AWS_SECRET_ACCESS_KEY": "placeholder"}


@pytest.fixture(scope="module")
def aws(upstream_ca: trustme.CA) -> Iterator[SigV4Upstream]:
    with SigV4Upstream(ca=upstream_ca, keys={KEY_ID: (SECRET, SESSION)}) as u:
        yield u


@pytest.fixture(scope="module")
def role_aws(upstream_ca: trustme.CA) -> Iterator[SigV4Upstream]:
    with SigV4Upstream(ca=upstream_ca, keys={}) as u:
        yield u


@pytest.fixture(scope="module")
def sts(upstream_ca: trustme.CA, role_aws: SigV4Upstream) -> Iterator[StsFront]:
    moto = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    moto.start()
    try:
        host, port = moto.get_host_and_port()
        with StsFront(ca=upstream_ca, moto_url=f"http://{host}:{port}", register=role_aws) as front:
            yield front
    finally:
        moto.stop()


def _sig(name: str, host: str, port: int, **auth: Any) -> dict[str, Any]:
    base = {"type": "aws-sigv4", "region": "us-east-1", "access_key_id": "AWS_KEY_ID"}
    return {"name": name, "host": host, "port": port, "auth": {**base, **auth}}


@pytest.fixture(scope="module")
def srv(
    tmp_path_factory: pytest.TempPathFactory,
    upstream_ca: trustme.CA,
    aws: SigV4Upstream,
    role_aws: SigV4Upstream,
    sts: StsFront,
) -> Iterator[ServerProc]:
    for s in start_server(tmp_path_factory.mktemp("sigv4"), upstream_ca):
        for key, value in {
            "AWS_KEY_ID": KEY_ID,
            "AWS_SECRET": SECRET,
            "AWS_SESSION": SESSION,
            "BASE_KEY_ID": ROLE_KEY_ID,
            "BASE_SECRET": ROLE_SECRET,
            "ROLE_EXTERNAL_ID": "external-id-0001",
        }.items():
            s.set_credential(key, value)
        s3 = {"service": "s3", "secret_access_key": "AWS_SECRET", "session_token": "AWS_SESSION"}
        sqs = {"service": "sqs", "secret_access_key": "AWS_SECRET", "session_token": "AWS_SESSION"}
        s.add_service(_sig("s3-api", "localhost", aws.port, **s3))
        s.add_service(_sig("sqs-api", "127.0.0.1", aws.port, **sqs))
        role = {
            "service": "s3",
            "access_key_id": "BASE_KEY_ID",
            "secret_access_key": "BASE_SECRET",
            "role_arn": "arn:aws:iam::123456789012:role/agent",
            "external_id": "ROLE_EXTERNAL_ID",
            "sts_endpoint": f"https://localhost:{sts.port}/",
        }
        s.add_service(_sig("role-s3", "localhost", role_aws.port, **role))
        yield s


def _run(srv: ServerProc, *cmd: str) -> Any:
    cp = srv.cli("vault", "run", "--quiet", "--", *cmd, env={**srv.env, **PLACEHOLDER_ENV})
    for secret in (SECRET, SESSION, ROLE_SECRET):
        assert secret not in cp.stdout + cp.stderr
    return cp


BOTO = """
import json, os, sys, boto3
from botocore.config import Config
url, service = sys.argv[1], sys.argv[2]
kw = dict(endpoint_url=url, region_name="us-east-1", verify=os.environ["SSL_CERT_FILE"])
if service == "s3":
    c = boto3.client("s3", config=Config(s3={"addressing_style": "path"}), **kw)
    c.put_object(Bucket="bucket", Key="dir/k ey.txt", Body=b"hello world " * 100)
    print(c.get_object(Bucket="bucket", Key="k.txt")["Body"].read().decode())
else:
    c = boto3.client("sqs", **kw)
    c.list_queues(QueueNamePrefix="agent")
    print("ok")
"""


def test_boto3_s3_and_sqs_with_placeholder_keys_are_resigned(srv: ServerProc, aws: SigV4Upstream) -> None:
    aws.results.clear()
    cp = _run(srv, sys.executable, "-c", BOTO, f"https://localhost:{aws.port}", "s3")
    got = json.loads(cp.stdout)
    assert got["verified"] is True and got["service"] == "s3"
    # The vault's key id and session token, echoed back, are redacted:
    assert got["access_key"] == got["security_token"] == "[REDACTED:s3-api:aws]"
    assert aws.results[-1][1]["access_key"] == KEY_ID
    cp = _run(srv, sys.executable, "-c", BOTO, f"https://127.0.0.1:{aws.port}", "sqs")
    assert cp.stdout.strip() == "ok"
    assert [r for _, r in aws.results if isinstance(r, str)] == []
    facts = [r for _, r in aws.results]
    assert len(facts) == 3 and facts[0]["payload"] == "STREAMING-UNSIGNED-PAYLOAD-TRAILER"
    assert facts[2]["service"] == "sqs" and facts[2]["payload"] is None  # hashed body, no header
    with srv.http(srv.make_agent("sigv4-discover")) as a:
        listed = {x["name"]: x for x in a.get("/v1/discover").json()["services"]}
    assert listed["sqs-api"]["aws"] == {"region": "us-east-1", "service": "sqs"}
    rec = wait_until(lambda: audit_records(srv.home, service="sqs-api"), "sqs audit")
    assert rec[-1]["injected_keys"] == ["AWS_KEY_ID", "AWS_SECRET", "AWS_SESSION"]
    assert SECRET not in json.dumps(audit_records(srv.home))


def test_curl_aws_sigv4_with_query_and_body(srv: ServerProc, aws: SigV4Upstream) -> None:
    aws.results.clear()
    url = f"https://127.0.0.1:{aws.port}/path/x?b=2&a=1&Action=ListQueues"
    cp = _run(
        srv,
        CURL,
        "-sS",
        "--aws-sigv4",
        "aws:amz:us-east-1:sqs",
        "--user",
        "PLACEHOLDER:placeholder",
        "-d",
        "x=1",
        url,
    )
    got = json.loads(cp.stdout)
    assert got["verified"] is True and got["body_length"] == 3
    get = _run(
        srv, CURL, "-sS", "--aws-sigv4", "aws:amz:us-east-1:sqs", "--user", "P:p", url.replace("x=", "")
    )
    assert json.loads(get.stdout)["verified"] is True
    assert aws.results[0][0].startswith("/path/x?b=2&a=1")


def _client(srv: ServerProc, token: str) -> httpx.Client:
    return httpx.Client(proxy=srv.proxy_url(token), verify=str(srv.ca_bundle), trust_env=False, timeout=30)


def test_large_bodies_unsigned_for_s3_refused_elsewhere(srv: ServerProc, aws: SigV4Upstream) -> None:
    token = srv.make_agent("sigv4-big")
    big = b"x" * (2 << 20)
    aws.results.clear()
    with _client(srv, token) as c:
        r = c.put(f"https://localhost:{aws.port}/bucket/big", content=big)
        assert r.status_code == 200
        facts = aws.results[-1][1]
        assert facts["payload"] == "UNSIGNED-PAYLOAD" and facts["body_length"] == len(big)
        r = c.post(f"https://127.0.0.1:{aws.port}/", content=big)
    assert r.status_code == 413 and r.json()["error"] == "body_too_large"
    assert len(aws.results) == 1  # the refused one never reached the upstream


def test_sts_assume_role_keys_are_fetched_cached_and_used(
    srv: ServerProc, role_aws: SigV4Upstream, sts: StsFront
) -> None:
    token = srv.make_agent("sigv4-role")
    with _client(srv, token) as c:
        r1 = c.get(f"https://localhost:{role_aws.port}/bucket/a")
        r2 = c.put(f"https://localhost:{role_aws.port}/bucket/b", content=b"data")
    assert r1.status_code == r2.status_code == 200, (r1.text, r2.text)
    assert [r for _, r in role_aws.results if isinstance(r, str)] == []
    assert sts.calls == 1  # cached
    facts = [r for _, r in role_aws.results]
    assert facts[0]["access_key"] in role_aws.keys and facts[0]["access_key"] != ROLE_KEY_ID
    assert facts[0]["security_token"] is not None
    assert r1.json()["security_token"].startswith("[REDACTED:")


def test_sts_failure_is_credential_unavailable(
    srv: ServerProc, role_aws: SigV4Upstream, upstream_ca: trustme.CA
) -> None:
    with SigV4Upstream(ca=upstream_ca, keys={}) as broken_sts:  # answers 403 JSON: not an STS answer
        srv.add_service(
            _sig(
                "role-bad",
                "localhost",
                role_aws.port,
                service="s3",
                access_key_id="BASE_KEY_ID",
                secret_access_key="BASE_SECRET",
                role_arn="arn:aws:iam::123456789012:role/other",
                sts_endpoint=f"https://localhost:{broken_sts.port}/",
            )
            | {"path": "/bad"}
        )
        token = srv.make_agent("sigv4-bad")
        before = len(role_aws.results)
        with _client(srv, token) as c:
            r = c.get(f"https://localhost:{role_aws.port}/bad/x")
    assert r.status_code == 502 and r.json()["error"] == "credential_unavailable"
    assert "role-bad" in r.json()["hint"] and "http_403" in r.json()["hint"]
    assert len(role_aws.results) == before
