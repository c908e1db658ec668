"""`ownapi.own_api_address`: only agent-vault's own API port, on a loopback name, for a loopback peer."""

from __future__ import annotations

import pytest

from agent_vault.proxy.ownapi import own_api_address

API = "http://127.0.0.1:14321"
LOCAL = ("127.0.0.1", 50000)


@pytest.mark.parametrize("host", ["127.0.0.1", "localhost", "LOCALHOST", "127.0.0.2", "::1", "[::1]"])
def test_the_api_port_on_a_loopback_name_from_this_machine(host: str) -> None:
    assert own_api_address(API, LOCAL, host, 14321) == "127.0.0.1"


@pytest.mark.parametrize(
    ("peer", "host", "port"),
    [
        (
            ("192.0.2.7", 40000),
            "127.0.0.1",
            14321,
        ),  # a remote agent: never (a loopback API opened)
        (("10.0.0.5", 40000), "localhost", 14321),
        (LOCAL, "127.0.0.1", 14322),  # another port (the proxy's own, or any other local service)
        (LOCAL, "api.example.com", 14321),  # not a loopback name
        (LOCAL, "10.0.0.1", 14321),
        (None, "127.0.0.1", 14321),  # peer unknown
    ],
)
def test_anything_else_is_not_the_api(peer: tuple[str, int] | None, host: str, port: int) -> None:
    assert own_api_address(API, peer, host, port) is None


def test_a_dual_stack_peer_and_api_hosts() -> None:
    assert own_api_address(API, ("::ffff:127.0.0.1", 1, 0, 0), "127.0.0.1", 14321) == "127.0.0.1"
    assert own_api_address("http://0.0.0.0:8080", LOCAL, "localhost", 8080) == "127.0.0.1"
    assert own_api_address("http://[::]:8080", ("::1", 1, 0, 0), "::1", 8080) == "::1"
    assert own_api_address("http://[::1]:8080", LOCAL, "localhost", 8080) == "::1"
    # an API that listens on a LAN address only is not reached this way
    assert own_api_address("http://192.0.2.1:8080", LOCAL, "localhost", 8080) is None
    for broken in ("", "not a url", "http://127.0.0.1:notaport", "http://127.0.0.1"):
        assert own_api_address(broken, LOCAL, "127.0.0.1", 14321) is None
