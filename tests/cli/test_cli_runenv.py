"""The child environment of `vault run` (SPEC §7.2) as a pure function."""

from __future__ import annotations

from urllib.parse import unquote, urlsplit

from agent_vault.cli.runenv import build_child_env, merge_no_proxy, proxy_url

TOKEN = "av_sess_abc-DEF_123"
BUNDLE = "/home/u/.agent-vault/certs/ca-bundle.pem"
CA_VARS = [
    "SSL_CERT_FILE",
    "NODE_EXTRA_CA_CERTS",
    "REQUESTS_CA_BUNDLE",
    "CURL_CA_BUNDLE",
    "GIT_SSL_CAINFO",
    "DENO_CERT",
]


def env_for(inherited: dict[str, str], **kw: object) -> dict[str, str]:
    args: dict[str, object] = {
        "token": TOKEN,
        "vault": "default",
        "addr": "http://127.0.0.1:14321",
        "proxy_host": "127.0.0.1",
        "proxy_port": 14322,
        "ca_bundle": BUNDLE,
    }
    args.update(kw)
    return build_child_env(inherited, **args)  # type: ignore[arg-type]


def test_sets_every_variable_of_the_spec() -> None:
    env = env_for({"PATH": "/usr/bin", "HOME": "/home/u"})
    url = f"http://{TOKEN}:default@127.0.0.1:14322"
    assert env["AGENT_VAULT_TOKEN"] == TOKEN
    assert env["AGENT_VAULT_ADDR"] == "http://127.0.0.1:14321"
    assert env["AGENT_VAULT_VAULT"] == "default"
    for name in ("HTTPS_PROXY", "HTTP_PROXY", "https_proxy", "http_proxy"):
        assert env[name] == url
    assert env["NO_PROXY"] == env["no_proxy"] == "localhost,127.0.0.1,::1"
    assert env["NODE_USE_ENV_PROXY"] == "1"
    for name in CA_VARS:
        assert env[name] == BUNDLE
    assert env["PATH"] == "/usr/bin" and env["HOME"] == "/home/u"  # no other variable is changed


def test_inherited_proxy_ca_and_token_variables_removed_in_any_case() -> None:
    inherited = {
        "Https_Proxy": "http://corp:3128",
        "HTTP_PROXY": "http://corp:3128",
        "http_proxy": "x",
        "ssl_cert_file": "/etc/x.pem",
        "Node_Extra_CA_Certs": "/y",
        "Agent_Vault_Token": "av_agt_secret",
        "AGENT_VAULT_TOKEN": "av_agt_secret2",
        "node_use_env_proxy": "0",
        "KEEP": "me",
    }
    env = env_for(inherited)
    assert "Https_Proxy" not in env and "ssl_cert_file" not in env and "Node_Extra_CA_Certs" not in env
    assert "Agent_Vault_Token" not in env and "node_use_env_proxy" not in env
    assert not any("av_agt_" in v for v in env.values())
    assert env["KEEP"] == "me"
    assert env["http_proxy"].endswith("@127.0.0.1:14322")


def test_no_proxy_merged_deduplicated_order_kept() -> None:
    inherited = {"NO_PROXY": "internal.corp, localhost", "no_proxy": "internal.corp,.local", "No_Proxy": "db"}
    env = env_for(inherited, no_proxy=["build.lan,127.0.0.1", "Internal.Corp"])
    assert env["NO_PROXY"] == "internal.corp,localhost,.local,db,build.lan,127.0.0.1,::1"
    assert env["no_proxy"] == env["NO_PROXY"]


def test_default_no_proxy_entry_equal_to_a_service_host_is_left_out() -> None:
    assert merge_no_proxy({}, [], ["api.github.com", "build.lan"]) == ["localhost", "127.0.0.1", "::1"]
    assert merge_no_proxy({}, [], ["build.lan", "db.internal"]) == ["localhost", "127.0.0.1", "::1"]
    # a loopback service drops every loopback default (axios reads 127.0.0.1 as covering localhost)
    assert merge_no_proxy({}, [], ["localhost", "api.github.com"]) == []
    assert merge_no_proxy({}, [], ["[::1]"]) == []
    # an entry the user asked for explicitly is kept
    assert merge_no_proxy({"NO_PROXY": "localhost"}, [], ["localhost"]) == ["localhost"]


def test_userinfo_percent_encoded_and_ipv6_bracketed() -> None:
    url = proxy_url("av_sess_a/b:c@d%", "my-vault", "::1", 9)
    parts = urlsplit(url)
    assert parts.hostname == "::1" and parts.port == 9
    assert unquote(parts.username or "") == "av_sess_a/b:c@d%"
    assert unquote(parts.password or "") == "my-vault"
    assert "@" not in url.split("@", 1)[0].removeprefix("http://")


def test_placeholders() -> None:
    env = env_for({"OPENAI_API_KEY": "sk-real-should-not-leak"}, placeholders=["OPENAI_API_KEY", "GH_TOKEN"])
    assert env["OPENAI_API_KEY"] == "{{OPENAI_API_KEY}}"
    assert env["GH_TOKEN"] == "{{GH_TOKEN}}"
    assert "sk-real-should-not-leak" not in env.values()


def test_inherited_mapping_not_mutated() -> None:
    inherited = {"HTTPS_PROXY": "http://corp:3128"}
    env_for(inherited)
    assert inherited == {"HTTPS_PROXY": "http://corp:3128"}
