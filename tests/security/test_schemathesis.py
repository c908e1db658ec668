"""Schema-driven fuzzing of the control API (SPEC §6, §8, §9, §14.1-2) with schemathesis.

Every operation of the app's own OpenAPI document is fuzzed in-process (ASGI, no sockets) as the
owner, as an agent (member of `default`), as a session (agent-facing operations only) and with no
token. Cases are schema-valid, schema-violating, and "deep": valid cases whose path names seeded
objects, with the owner's step-up password filled in, so the domain code behind each route runs.
For every response:

* no 5xx, no traceback; a non-2xx body is the SPEC §6 JSON error shape with a known code;
* an agent, session or anonymous caller never gets a 2xx from a human-only operation (§14.2), and
  an anonymous caller never gets one from an operation that needs a token;
* no credential value (the seeded `sk-fuzz-<uuid>` values and any long value stored while fuzzing)
  is in the body or headers -- except `POST .../credentials/{key}/reveal` by the owner, which must
  return exactly the value of the key it names and no other;
* afterwards neither the audit log nor the server log holds a seeded value.

Each test runs on a fresh copy of one seeded home (passwordless key mode: a copy unlocks in
milliseconds), so a fuzzed logout, rename or delete cannot starve later tests. Generation is
derandomized: every run sends the same cases.
"""

from __future__ import annotations

import json
import logging
import shutil
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import hypothesis.strategies as st
import pytest
import schemathesis
from helpers.core import OWNER_EMAIL, OWNER_PASSWORD, make_core, open_core
from hypothesis import HealthCheck, Phase, given, settings
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error
from schemathesis.core.result import Ok
from sqlmodel import select
from starlette.testclient import TestClient

from agent_vault.api.app import create_app
from agent_vault.config import Settings
from agent_vault.core import Core
from agent_vault.errors import AgentVaultError
from agent_vault.models import AuditEvent

APP = create_app()
SCHEMA = schemathesis.openapi.from_asgi("/openapi.json", APP)
Operation = schemathesis.APIOperation[Any, Any, Any, Any]
Case = schemathesis.Case[Operation]


def _operations() -> dict[str, Operation]:
    out = {}
    for result in SCHEMA.get_all_operations():
        assert isinstance(result, Ok), result  # the app's own schema must be valid
        out[result.ok().label] = result.ok()
    return out


OPERATIONS = _operations()

REVEAL = "POST /v1/vaults/{v}/credentials/{key}/reveal"
APPROVE = "POST /v1/vaults/{v}/proposals/{pid}/approve"
#: §3.3 "human" capabilities: an agent or session token never succeeds here, whatever its grant.
HUMAN_ONLY = frozenset(
    {
        REVEAL,
        APPROVE,
        "POST /v1/vaults/{v}/proposals/{pid}/reject",
        "POST /v1/vaults/{v}/services",
        "PUT /v1/vaults/{v}/services",
        "PUT /v1/vaults/{v}/services/{name}",
        "PATCH /v1/vaults/{v}/services/{name}",
        "DELETE /v1/vaults/{v}/services/{name}",
        "PATCH /v1/vaults/{v}",
        "DELETE /v1/vaults/{v}",
        "PUT /v1/vaults/{v}/agents/{name}",
        "DELETE /v1/vaults/{v}/agents/{name}",
        "PUT /v1/vaults/{v}/users/{email}",
        "DELETE /v1/vaults/{v}/users/{email}",
        "POST /v1/agents",
        "POST /v1/agents/{name}/rotate",
        "POST /v1/users/invites",
        "PATCH /v1/users/{email}",
        "DELETE /v1/users/{email}",
        "GET /v1/users/invites",
        "DELETE /v1/users/invites/{iid}",
        "GET /v1/auth/sessions",
        "DELETE /v1/auth/sessions/{sid}",
        "POST /v1/ca/rotate",
    }
)
#: Operations that answer without a token.
PUBLIC_OPS = frozenset(
    {
        "POST /v1/auth/login",
        "POST /v1/invites/{token}/accept",
        "GET /v1/status",
        "GET /health",
        "GET /ready",
        "GET /v1/mitm/ca.pem",
        "GET /v1/catalog",
        "GET /v1/vaults/{v}/proposals/{pid}",  # with a live approval token
    }
)
#: A session token (proxy role, bound to `default`): the agent-facing operations and a sample of
#: admin ones it must be refused.
SESSION_OPS = frozenset(
    {
        "GET /v1/auth/me",
        "GET /v1/discover",
        "GET /v1/proposals",
        "GET /v1/proposals/{pid}",
        "POST /v1/proposals",
        "POST /v1/sessions",
        "GET /v1/sessions",
        "POST /v1/sessions/{sid}/renew",
        "DELETE /v1/sessions/{sid}",
        "GET /v1/vaults",
        "GET /v1/vaults/{v}/credentials",
        "PUT /v1/vaults/{v}/credentials/{key}",
        "GET /v1/vaults/{v}/services",
        "POST /v1/vaults/{v}/services",
        REVEAL,
        APPROVE,
    }
)
#: Examples per operation and caller (about 20 ms each). The owner reaches the most code; without a
#: token everything but the public operations stops at 401, so a few examples say as much.
EXAMPLES = {"owner": 20, "agent": 10, "session": 8, "anon": 3}
PUBLIC_EXAMPLES = 15
CASES = [
    (label, who)
    for label in sorted(OPERATIONS)
    for who in ("owner", "agent", "session", "anon")
    if who != "session" or label in SESSION_OPS
]
#: The owner's deep cases must succeed here at least once, or the fuzzer is not reaching the domain.
OWNER_REACHES = frozenset(
    {REVEAL, APPROVE, "PUT /v1/vaults/{v}/credentials/{key}", "PATCH /v1/vaults/{v}/services/{name}"}
)
#: Values at least this long that the fuzzer itself stores are treated as secrets too.
MIN_FUZZ_SECRET = 16
#: Error codes the app may answer with: the SPEC §6/§9 codes of the exception tree plus the app's own.
APP_CODES = {"invalid_request", "bad_request", "not_found", "method_not_allowed", "misdirected_request"}


def _known_codes() -> frozenset[str]:
    out, todo = set(APP_CODES), [AgentVaultError]
    while todo:
        cls = todo.pop()
        out.add(cls.code)
        todo.extend(cls.__subclasses__())
    return frozenset(out - {"internal"})


KNOWN_CODES = _known_codes()
#: The value the owner's deep approvals enter for the seeded proposal's credential.
APPROVED_VALUE = f"sk-fuzz-approved-{uuid.uuid4()}"


@dataclass(frozen=True)
class Seed:
    """The seeded template home: tokens by caller, credential values by key, the session's id."""

    home: Path
    tokens: dict[str, str]
    secrets: dict[str, str]
    session_id: int


def _ok(r: Any, status: int = 200) -> dict[str, Any]:
    assert r.status_code == status, r.text
    return dict(r.json()) if r.content else {}


def _populate(c: TestClient, secrets: dict[str, str]) -> Seed:
    """Two vaults, three credentials (two referenced by services), an agent, its session and a
    pending proposal, all through the API as the owner."""
    owner = _ok(c.post("/v1/auth/login", json={"email": OWNER_EMAIL, "password": OWNER_PASSWORD}))["token"]
    c.headers["Authorization"] = f"Bearer {owner}"
    _ok(c.post("/v1/vaults", json={"name": "team-b"}), 201)
    for key, value in secrets.items():
        _ok(c.put(f"/v1/vaults/default/credentials/{key}", json={"value": value}))
    _ok(c.put("/v1/vaults/team-b/credentials/GITHUB_TOKEN", json={"value": secrets["SPARE_KEY"]}))
    services = [
        {"name": "github", "host": "api.github.com", "auth": {"type": "bearer", "token": "GITHUB_TOKEN"}},
        {
            "name": "stripe",
            "host": "api.stripe.com",
            "path": "/v1",
            "auth": {"type": "api-key", "key": "STRIPE_KEY", "query": "key"},
        },
    ]
    for svc in services:
        r = c.post("/v1/vaults/default/services", json={"password": OWNER_PASSWORD, "service": svc})
        _ok(r, 201)
    grant = [{"vault": "default", "role": "member"}]
    r = c.post("/v1/agents", json={"password": OWNER_PASSWORD, "name": "fuzz-agent", "vaults": grant})
    agent = _ok(r, 201)["token"]
    as_agent = {"Authorization": f"Bearer {agent}"}
    session = _ok(c.post("/v1/sessions", json={"ttl_seconds": 3600}, headers=as_agent), 201)
    proposal = {
        "services": [
            {
                "action": "set",
                "name": "openai",
                "host": "api.openai.com",
                "auth": {"type": "bearer", "token": "OPENAI_API_KEY"},
            }
        ],
        "credentials": [{"action": "set", "key": "OPENAI_API_KEY"}],
        "message": "fuzz",
    }
    _ok(c.post("/v1/proposals", json=proposal, headers=as_agent), 201)
    tokens = {"owner": owner, "agent": agent, "session": session["token"]}
    return Seed(Path(), tokens, secrets, int(session["id"]))


@pytest.fixture(scope="module")
def seed(tmp_path_factory: pytest.TempPathFactory) -> Seed:
    """The template home, built once per module and copied for every test."""
    home = tmp_path_factory.mktemp("fuzz-template") / "home"
    secrets = {k: f"sk-fuzz-{uuid.uuid4()}" for k in ("GITHUB_TOKEN", "STRIPE_KEY", "SPARE_KEY")}
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("AGENT_VAULT_TEST_KDF", "1")  # module fixtures run before the autouse env fixture
        mp.setenv("AGENT_VAULT_KEYRING", "0")
        with make_core(home, key_mode="passwordless", rate_limits="off") as core:
            app = create_app()
            app.state.core = core
            with TestClient(app, base_url="http://127.0.0.1:14321") as c:
                s = _populate(c, secrets)
    return Seed(home, s.tokens, s.secrets, s.session_id)


@pytest.fixture
def core(seed: Seed, tmp_path: Path) -> Iterator[Core]:
    home = tmp_path / "fuzz-home"
    shutil.copytree(seed.home, home)
    with open_core(Settings(home=home, rate_limits="off")) as c:  # the fuzzer outpaces any API limit
        c.proxy_ready = True  # as in a running server: /ready answers 200
        APP.state.core = c
        try:
            yield c
        finally:
            APP.state.core = None


def _known_path_params(op: Operation, seed: Seed) -> list[dict[str, Any]]:
    """Path parameters naming objects of the seeded home (and a few near misses)."""
    names = {p.name for p in op.path_parameters}
    options: dict[str, list[Any]] = {
        "v": ["default", "team-b"],
        "key": ["GITHUB_TOKEN", "STRIPE_KEY", "SPARE_KEY", "NEW_KEY"],
        "name": ["github", "stripe"] if "/services/" in op.path else ["fuzz-agent"],
        "email": [OWNER_EMAIL],
        "pid": [1],
        "sid": [seed.session_id],
        "iid": [1],
        "hid": ["0badc0de"],
        "token": ["av_inv_" + "A" * 43],
    }
    out: list[dict[str, Any]] = [{}]
    for n in sorted(names):
        out = [{**d, n: value} for d in out for value in options[n]]
    return out


def _steps_up(op: Operation) -> bool:
    """True if the operation's body model has a `password` field (SPEC §3.4 step-up)."""
    text = json.dumps(op.definition.raw.get("requestBody", {}))
    for name, comp in SCHEMA.raw_schema.get("components", {}).get("schemas", {}).items():
        if f'"#/components/schemas/{name}"' in text and "password" in comp.get("properties", {}):
            return True
    return False


Drawn = tuple[Case, bool]


_STRATEGIES: dict[tuple[str, GenerationMode, str], st.SearchStrategy[Case]] = {}


def _cases(op: Operation, mode: GenerationMode, path_parameters: dict[str, Any]) -> st.SearchStrategy[Case]:
    """`op.as_strategy`, memoised: building one costs ~10 ms and every caller reuses it."""
    key = (op.label, mode, json.dumps(path_parameters, sort_keys=True))
    if key not in _STRATEGIES:
        _STRATEGIES[key] = op.as_strategy(mode, path_parameters=path_parameters or None)
    return _STRATEGIES[key]


def _strategy(op: Operation, seed: Seed) -> st.SearchStrategy[Drawn]:
    """Schema-valid and schema-violating cases, and (twice as often) `deep` valid cases on seeded objects."""
    parts: list[st.SearchStrategy[Drawn]] = [
        _cases(op, GenerationMode.POSITIVE, {}).map(lambda c: (c, False))
    ]
    if op.path_parameters or op.query or op.body:
        parts.append(_cases(op, GenerationMode.NEGATIVE, {}).map(lambda c: (c, False)))
    deep = st.one_of([_cases(op, GenerationMode.POSITIVE, pp) for pp in _known_path_params(op, seed)])
    parts += [deep.map(lambda c: (c, True))] * 2
    return st.one_of(parts)


def _deepen(case: Case, label: str) -> None:
    """The owner's deep case: a JSON object body with the right step-up password (and, to approve,
    the one value the seeded proposal needs, so an approval can apply)."""
    body = case.body if isinstance(case.body, dict) else {}
    body["password"] = OWNER_PASSWORD
    if label == APPROVE and not body.get("credentials"):
        body["credentials"] = {"OPENAI_API_KEY": APPROVED_VALUE}
    case.body = body
    case.media_type = "application/json"


def _secrets(core: Core, seed: Seed) -> dict[str, str]:
    """name -> value for every value to keep out of responses: the seeded ones and long stored ones."""
    out = {f"seed:{k}": v for k, v in seed.secrets.items()}
    for vname, view in core.runtime.snapshot.vaults.items():
        for key, value in view.values.items():
            if len(value) >= MIN_FUZZ_SECRET:
                out[f"{vname}:{key}"] = value
    return out


def _check(label: str, who: str, case: Case, resp: schemathesis.Response, core: Core, seed: Seed) -> None:
    where = f"{label} as {who}: {resp.status_code}"
    case.validate_response(resp, checks=[not_a_server_error])
    status = resp.status_code
    text = resp.content.decode("utf-8", "replace")
    assert status < 500, f"{where} {text[:300]}"
    assert "Traceback" not in text and 'File "' not in text, f"{where}: traceback in the body"
    if status >= 300:
        ctype = ";".join(resp.headers.get("content-type", []))
        assert ctype.startswith("application/json"), f"{where}: content-type {ctype}"
        body = json.loads(text)
        assert isinstance(body, dict), f"{where} {text[:200]}"
        assert body.get("error") in KNOWN_CODES, f"{where}: unknown error code in {text[:200]}"
        assert isinstance(body.get("message"), str) and body["message"], f"{where} {text[:200]}"
        assert isinstance(body.get("hint"), str), f"{where} {text[:200]}"
    if who in ("agent", "session") and label in HUMAN_ONLY:
        assert status >= 400, f"{where}: a non-human token succeeded at a human-only operation"
    if who == "anon" and label not in PUBLIC_OPS:
        assert status >= 400, f"{where}: succeeded without a token"
    allowed: set[str] = set()
    if label == REVEAL and status == 200:
        assert who == "owner", f"{where}: revealed a value"
        # step-up is on here: only the deep cases, which carry the owner's password, may get this far
        sent = case.body if isinstance(case.body, dict) else {}
        assert sent.get("password") == OWNER_PASSWORD, f"{where}: revealed without the step-up password"
        body = json.loads(text)
        v, key = case.path_parameters["v"], case.path_parameters["key"]
        assert body["key"] == key
        assert body["value"] == core.runtime.snapshot.vaults[v].values[key]
        allowed = {body["value"]}
    headers = json.dumps(resp.headers)
    for name, value in _secrets(core, seed).items():
        if value not in allowed:
            assert value not in text, f"{where}: credential {name} in the body"
            assert value not in headers, f"{where}: credential {name} in a header"


def _audit_text(core: Core) -> str:
    core.audit.flush()
    with core.store.read() as s:
        return "\n".join(r.model_dump_json() for r in s.exec(select(AuditEvent)))


@pytest.mark.parametrize(("label", "who"), CASES)
def test_fuzz_operation(
    label: str, who: str, core: Core, seed: Seed, caplog: pytest.LogCaptureFixture
) -> None:
    op = OPERATIONS[label]
    token = seed.tokens.get(who)
    auth = {"Authorization": f"Bearer {token}"} if token else {}
    steps_up = who == "owner" and _steps_up(op)
    examples = PUBLIC_EXAMPLES if who == "anon" and label in PUBLIC_OPS else EXAMPLES[who]
    statuses: list[int] = []

    @settings(
        max_examples=examples,
        deadline=None,
        derandomize=True,
        database=None,
        phases=[Phase.explicit, Phase.generate],
        suppress_health_check=list(HealthCheck),
    )
    @given(drawn=_strategy(op, seed))
    def run(drawn: Drawn) -> None:
        case, deep = drawn
        if deep and steps_up:
            _deepen(case, label)
        core.services.login_limiter = None  # wrong fuzzed passwords must not lock the owner out
        resp = case.call(headers=auth)
        statuses.append(resp.status_code)
        _check(label, who, case, resp, core, seed)

    with caplog.at_level(logging.DEBUG):
        run()
    if who == "owner" and label in OWNER_REACHES:
        assert any(200 <= c < 300 for c in statuses), f"{label}: no deep case succeeded: {sorted(statuses)}"
    logged = "\n".join(r.getMessage() for r in caplog.records)
    audit = _audit_text(core)
    for name, value in seed.secrets.items():
        assert value not in logged, f"{label} as {who}: credential {name} in the server log"
        assert value not in audit, f"{label} as {who}: credential {name} in the audit log"


def test_schema_covers_the_api() -> None:
    """The fuzzed schema lists the SPEC §8/§9 surface; a route dropped from it would go unfuzzed."""
    for label in (*HUMAN_ONLY, *PUBLIC_OPS, *SESSION_OPS):
        assert label in OPERATIONS, label
    assert len(OPERATIONS) >= 50
