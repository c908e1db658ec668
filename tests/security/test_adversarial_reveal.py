"""Humans without the right to see a value try to reveal it (SPEC §3.3, §3.4, §9, §14.1).

Reveal (`POST /v1/vaults/{v}/credentials/{KEY}/reveal`) is the one way a value leaves the server, and
only for a human `admin` of the vault who types their own login password in the same request. Two
people join through the real invite flow (invite, accept, log in): a vault `member` and a vault
`admin`. The member is refused even with their correct password; the admin is refused with no body,
an empty, null or wrong password, the owner's password (step-up is about *this* user), their own
session token, and on a vault they hold no grant on. No refused answer carries the value, and none of
them is audited as a reveal. Then the admin, with their own password, gets the value - and exactly one
`credential.reveal` record names them.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any
from urllib.parse import parse_qs, urlsplit

import httpx
import pytest
import trustme
from helpers.server import OWNER_PASSWORD
from helpers.wait import wait_until
from security.conftest import Sweep, SweptServer, audit_rows, new_secret, start_server, value_forms

MEMBER, ADMIN = "reveal-member@example.com", "reveal-admin@example.com"
PASSWORDS = {MEMBER: "member-password-7731", ADMIN: "admin-password-4410"}
V: dict[str, str] = {}


def _join(srv: SweptServer, email: str, role: str) -> str:
    """Invite `email` as an instance member with `role` on `default`, accept as them; their login token."""
    with srv.http() as c:
        r = c.post(
            "/v1/users/invites",
            json={
                "password": OWNER_PASSWORD,
                "email": email,
                "role": "member",
                "vaults": [{"vault": "default", "role": role}],
            },
        )
        assert r.status_code == 201, r.text
        (invite,) = parse_qs(urlsplit(r.json()["invite_url"]).query)["token"]
    srv.sweep.secret_token(f"invite of {email}", invite)
    srv.sweep.secret_token(f"password of {email}", PASSWORDS[email])
    accepted = httpx.post(
        srv.api + f"/v1/invites/{invite}/accept", json={"password": PASSWORDS[email]}, trust_env=False
    )
    assert accepted.status_code == 201, accepted.text
    srv.sweep.secret_token(f"accept token of {email}", accepted.json()["token"])
    return srv.login(email, PASSWORDS[email])


@pytest.fixture(scope="module")
def world(
    tmp_path_factory: pytest.TempPathFactory, upstream_ca: trustme.CA, sweep: Sweep
) -> Iterator[dict[str, Any]]:
    for srv in start_server(tmp_path_factory, upstream_ca, sweep, "reveal"):
        with srv.http() as c:
            c.post("/v1/vaults", json={"name": "elsewhere"}).raise_for_status()
        V["REVEAL_KEY"], V["FAR_KEY"] = new_secret("/+=&r"), new_secret()
        srv.set_credential("REVEAL_KEY", V["REVEAL_KEY"])
        srv.set_credential("FAR_KEY", V["FAR_KEY"], vault="elsewhere")
        tokens = {"member": _join(srv, MEMBER, "member"), "admin": _join(srv, ADMIN, "admin")}
        with srv.http(tokens["admin"]) as c:  # the admin really is what the test says
            me = c.get("/v1/auth/me").json()
        assert me["kind"] == "user" and {"name": "default", "role": "admin"} in me["vaults"], me
        assert all(v["name"] != "elsewhere" for v in me["vaults"]), me
        yield {"srv": srv, **tokens}


def _reveals(srv: SweptServer) -> list[dict[str, Any]]:
    return [r for r in audit_rows(srv.home) if r.get("kind") == "credential.reveal"]


def _refused(r: httpx.Response, status: int, code: str) -> None:
    assert (r.status_code, r.json().get("error")) == (status, code), r.text
    for value in V.values():
        assert not any(f in r.text for f in value_forms(value)), r.text
        assert not any(f in str(r.headers) for f in value_forms(value)), r.headers


def test_only_a_vault_admin_with_their_own_password_reveals(world: dict[str, Any]) -> None:
    srv: SweptServer = world["srv"]
    url = "/v1/vaults/default/credentials/REVEAL_KEY/reveal"
    before = len(_reveals(srv))
    # a human member of the vault, with their correct password: the role decides, before step-up
    with srv.http(world["member"]) as c:
        _refused(c.post(url, json={"password": PASSWORDS[MEMBER]}), 403, "forbidden")
        _refused(c.post(url, json={"password": OWNER_PASSWORD}), 403, "forbidden")
    # the vault admin, without their password
    with srv.http(world["admin"]) as c:
        _refused(c.post(url), 401, "step_up_failed")  # no body at all
        for body in ({}, {"password": None}, {"password": ""}, {"password": PASSWORDS[ADMIN] + "x"}):
            _refused(c.post(url, json=body), 401, "step_up_failed")
        # not *their* password: step-up proves who is at the keyboard, not that someone knows a password
        _refused(c.post(url, json={"password": OWNER_PASSWORD}), 401, "step_up_failed")
        far = c.post("/v1/vaults/elsewhere/credentials/FAR_KEY/reveal", json={"password": PASSWORDS[ADMIN]})
        assert far.status_code in (403, 404), far.text  # no grant on that vault
        _refused(far, far.status_code, far.json()["error"])
        sess = c.post("/v1/sessions", json={"vault": "default"})
        assert sess.status_code == 201, sess.text
    session_token = srv.sweep.secret_token("session of the admin", sess.json()["token"])
    with srv.http(session_token) as c:  # the admin's own session token is not the admin (§14.2)
        r = c.post(url, json={"password": PASSWORDS[ADMIN]})
        assert r.status_code in (401, 403), r.text
        _refused(r, r.status_code, r.json()["error"])
    # the admin, with their own password: the value, audited once (the audit queue is FIFO: once this
    # call's record is in, a reveal record of any refused call above would be in too)
    with srv.http(world["admin"], record=False) as c:  # the one answer that may carry the value
        r = c.post(url, json={"password": PASSWORDS[ADMIN]})
    assert r.status_code == 200, r.status_code
    assert r.json() == {"key": "REVEAL_KEY", "value": V["REVEAL_KEY"]}
    new = wait_until(lambda: _reveals(srv)[before:], "the credential.reveal audit record")
    assert len(new) == 1, new
    assert (new[0]["actor"], new[0]["vault"], new[0]["target"]) == (f"user:{ADMIN}", "default", "REVEAL_KEY")
    assert V["REVEAL_KEY"] not in str(new[0])
