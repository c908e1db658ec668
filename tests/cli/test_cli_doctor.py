from __future__ import annotations

from pathlib import Path

from agent_vault.cli.doctor import check_env_proxies, check_home, node_version_ok


def test_node_versions() -> None:
    assert node_version_ok("v22.21.0") and node_version_ok("v24.1.0") and node_version_ok("v25.0.0")
    assert (
        not node_version_ok("v22.20.1") and not node_version_ok("v20.20.2") and not node_version_ok("v23.5.0")
    )
    assert node_version_ok("garbage") is None


def test_env_proxies() -> None:
    ours = "127.0.0.1:14322"
    assert check_env_proxies({}, ours)["status"] == "ok"
    same = "http://t:v@127.0.0.1:14322"
    assert check_env_proxies({"HTTPS_PROXY": same, "https_proxy": same}, ours)["status"] == "ok"
    assert check_env_proxies({"HTTPS_PROXY": "http://corp:3128"}, ours)["status"] == "warn"
    bad = check_env_proxies({"HTTPS_PROXY": same, "https_proxy": "http://corp:3128"}, ours)
    assert bad["status"] == "fail" and "HTTPS_PROXY and https_proxy differ" in bad["detail"]


def test_home_permissions(tmp_path: Path) -> None:
    home = tmp_path / "h"
    assert check_home(home)["status"] == "warn"
    (home / "cli").mkdir(parents=True, mode=0o700)
    home.chmod(0o700)
    (home / "cli" / "session.json").write_text("{}")
    (home / "cli" / "session.json").chmod(0o600)
    assert check_home(home)["status"] == "ok"
    (home / "cli" / "session.json").chmod(0o644)
    res = check_home(home)
    assert res["status"] == "fail" and "session.json is 0o644" in res["detail"]
    (home / "cli" / "session.json").chmod(0o600)
    (home / "certs").mkdir(mode=0o755)
    bundle = home / "certs" / "ca-bundle.pem"
    bundle.write_text("-----BEGIN CERTIFICATE-----\n")
    bundle.chmod(0o644)  # public by design (SPEC §2.2)
    assert check_home(home)["status"] == "ok"
    bundle.chmod(0o666)  # but anyone could add a CA for every agent to trust
    res = check_home(home)
    assert res["status"] == "fail" and "ca-bundle.pem is 0o666" in res["detail"]
    bundle.chmod(0o644)
    home.chmod(0o755)
    assert check_home(home)["status"] == "fail"
