"""`agent rotate --grace`: the newest rotation says which tokens are valid, and `agent info` shows a
token still in its grace period (QA question: a second rotation without grace ends a graced token)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import httpx
from helpers.core import OWNER_PASSWORD


def _when(value: object) -> datetime:
    return datetime.fromisoformat(str(value).replace("Z", "+00:00"))


def test_info_shows_a_graced_token_until_a_rotation_without_grace_ends_it(api: httpx.Client) -> None:
    r = api.post(
        "/v1/agents",
        json={"password": OWNER_PASSWORD, "name": "grace-bot", "vaults": [{"vault": "default"}]},
    )
    first = r.json()["token"]
    assert api.get("/v1/agents/grace-bot").json()["previous_token_expires_at"] is None
    r = api.post("/v1/agents/grace-bot/rotate", json={"password": OWNER_PASSWORD, "grace_seconds": 3600})
    second = r.json()["token"]
    info = api.get("/v1/agents/grace-bot").json()
    assert info["previous_token_expires_at"] == r.json()["old_token_expires_at"]
    left = _when(info["previous_token_expires_at"]) - datetime.now(UTC)
    assert timedelta(minutes=59) < left <= timedelta(hours=1)
    assert api.get("/v1/discover", headers={"Authorization": f"Bearer {first}"}).status_code == 200
    r = api.post("/v1/agents/grace-bot/rotate", json={"password": OWNER_PASSWORD, "grace_seconds": 0})
    third = r.json()["token"]
    for gone in (first, second):  # the graced token ends too: the newest rotation is what holds
        assert api.get("/v1/discover", headers={"Authorization": f"Bearer {gone}"}).status_code == 401
    assert api.get("/v1/discover", headers={"Authorization": f"Bearer {third}"}).status_code == 200
    assert api.get("/v1/agents/grace-bot").json()["previous_token_expires_at"] is None
    api.post("/v1/agents/grace-bot/rotate", json={"password": OWNER_PASSWORD, "grace_seconds": 600})
    assert api.get("/v1/agents/grace-bot").json()["previous_token_expires_at"] is not None
    api.post("/v1/agents/grace-bot/revoke")
    assert api.get("/v1/agents/grace-bot").json()["previous_token_expires_at"] is None
