"""An agent writes text a human will read: it must stay text (issue #22).

A hostile agent fills a proposal's message, credential descriptions and "how to obtain" notes and a
service description with terminal escapes (OSC title set `ESC ] 0 ; … BEL`, clear screen `ESC [ 2 J`),
carriage returns and backspaces that overwrite what the human reads, DEL, C1 CSI, a Unicode
right-to-left override, a newline that fakes a "services:" line, rich markup (`[bold red]`,
`[link=…]`) and an emoji code; then it sends proxy requests whose path carries raw escape bytes. The
real CLI (`vault proposal list/show/approve`, `logs`, `logs follow`, `logs export`, with and without
`--json`) must print all of it visibly escaped (`\\x1b`, `\\u202e`), never a raw control byte, never
interpreted markup, and `--json` must stay valid JSON that decodes to exactly what the agent sent.
The approval web page renders the same proposal (its own script, run under node against a fake DOM
that refuses `innerHTML`) with `textContent` only and the same escapes.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import httpx
import pytest
import trustme
from helpers.proxy import basic
from helpers.server import OWNER_PASSWORD
from helpers.wait import wait_until
from security.conftest import Forger, Sweep, SweptServer, new_secret, start_server

from agent_vault.cli.output import inert

OSC = "\x1b]0;pwned\x07"
CLEAR = "\x1b[2J"
RLO = "\u202e"
MARKUP = "[bold red]ALERT[/bold red] [link=https://evil.example]click[/link] :warning:"
MESSAGE = f"please approve{OSC}{CLEAR}\rall good\x08\x08{RLO}gnp.exe\x7f\x9b31m\nservices:\n  + fake {MARKUP}"
DESCRIPTION = f"the key{CLEAR}\u2066isolated\u2069\r\x1b[1Ahidden"
OBTAIN = f"dashboard{OSC}\x1b]8;;https://evil.example\x07link\x1b]8;;\x07"
SERVICE_DESCRIPTION = f"desc{RLO}{OSC}"
# Everything a terminal could act on (the same class `cli.output.inert` escapes), newline excluded:
# callers check line structure themselves.
RAW = re.compile("[\x00-\x09\x0b-\x1f\x7f-\x9f\u061c\u200e\u200f\u2028\u2029\u202a-\u202e\u2066-\u2069]")
ESCAPED = ("\\x1b]0;pwned\\x07", "\\x1b[2J", "\\r", "\\x08", "\\u202e", "\\x7f", "\\x9b")
PATH_PROBE = "/echo/inert\x1b]0;pwned\x07\x1b[2J\u202e"
SPOOFED_LINE = "\n  + fake"  # the message's newline must not start a line of the summary


def raw_controls(text: str) -> list[str]:
    return sorted({repr(c) for c in RAW.findall(text)})


@pytest.fixture(scope="module")
def world(
    tmp_path_factory: pytest.TempPathFactory, upstream_ca: trustme.CA, sweep: Sweep, up: Forger
) -> Iterator[dict[str, Any]]:
    for srv in start_server(tmp_path_factory, upstream_ca, sweep, "inert"):
        srv.cli_login()
        srv.cli("vault", "use", "default")
        srv.env["COLUMNS"] = "2000"  # rich tables: no wrapping inside an escape sequence
        value = new_secret()
        srv.set_credential("INERT_KEY", value)
        srv.add_service(
            {
                "name": "inert-api",
                "host": "api.upstream.test",
                "port": up.port,
                "auth": {"type": "bearer", "token": "INERT_KEY"},
            }
        )
        bot = srv.make_agent("hostile-bot")
        proposal = {
            "message": MESSAGE,
            "services": [
                {
                    "action": "set",
                    "name": "hostile-api",
                    "host": "api.upstream.test",
                    "port": up.port,
                    "path": "/hostile",
                    "description": SERVICE_DESCRIPTION,
                    "auth": {"type": "bearer", "token": "HOSTILE_KEY"},
                }
            ],
            "credentials": [
                {"action": "set", "key": "HOSTILE_KEY", "description": DESCRIPTION, "obtain": OBTAIN}
            ],
        }
        with srv.http(bot) as c:
            r = c.post("/v1/proposals", json=proposal, headers={"X-Vault": "default"})
            assert r.status_code == 201, r.text
        yield {"srv": srv, "bot": bot, "pid": str(r.json()["id"]), "up": up}


def _check_human(text: str, *, must: tuple[str, ...] = ESCAPED) -> None:
    assert not raw_controls(text), raw_controls(text)
    for form in must:
        assert form in text, (form, text)


def test_proposal_show_escapes_everything_the_agent_wrote(world: dict[str, Any]) -> None:
    srv: SweptServer = world["srv"]
    cp = srv.cli("vault", "proposal", "show", world["pid"])
    _check_human(cp.stdout + cp.stderr)
    out = cp.stdout
    assert inert(MESSAGE) in out  # the whole message, on its own line, escaped
    assert SPOOFED_LINE not in out and "\\nservices:\\n  + fake" in out
    assert out.count("\nservices:\n") == 1  # only the real section header
    assert MARKUP in out  # markup and emoji codes printed literally, not interpreted
    assert inert(DESCRIPTION) in out and inert(OBTAIN) in out


def test_proposal_list_and_json_output(world: dict[str, Any]) -> None:
    srv: SweptServer = world["srv"]
    cp = srv.cli("vault", "proposal", "list")
    assert not raw_controls(cp.stdout + cp.stderr)
    assert "hostile-api" in cp.stdout
    for args in (("vault", "proposal", "show", world["pid"]), ("vault", "proposal", "list")):
        cp = srv.cli("--json", *args)
        assert not raw_controls(cp.stdout.replace("\n", "")), raw_controls(cp.stdout)
        data = json.loads(cp.stdout)  # still valid JSON ...
        if "proposals" not in data:  # ... that decodes to exactly what the agent sent
            assert data["message"] == MESSAGE
            assert {c["key"]: c["description"] for c in data["credentials"]} == {"HOSTILE_KEY": DESCRIPTION}
            assert data["services"][0]["description"] == SERVICE_DESCRIPTION


def test_approve_shows_the_summary_inert(world: dict[str, Any], sweep: Sweep) -> None:
    srv: SweptServer = world["srv"]
    value = sweep.value("default/HOSTILE_KEY")
    env = {**srv.env, "HOSTILE_VALUE": value}
    cp = srv.cli(
        "vault",
        "proposal",
        "approve",
        world["pid"],
        "--yes",
        "--password-stdin",
        "--value-from-env",
        "HOSTILE_KEY=HOSTILE_VALUE",
        input=OWNER_PASSWORD + "\n",
        env=env,
    )
    _check_human(cp.stdout + cp.stderr)
    assert inert(MESSAGE) in cp.stderr and SPOOFED_LINE not in cp.stderr
    assert "applied" in cp.stdout


def _hostile_requests(world: dict[str, Any]) -> None:
    """Requests whose path carries raw escape bytes, through the proxy: absolute form and inside a
    CONNECT tunnel (TLS intercepted), as an agent would send them."""
    srv: SweptServer = world["srv"]
    up: Forger = world["up"]
    auth = {"Proxy-Authorization": basic(world["bot"])}
    target = f"api.upstream.test:{up.port}"
    for path in (PATH_PROBE, "/echo/inert\x1b[2J\x1b]0;pwned"):
        with srv.raw() as conn:
            conn.request("GET", f"http://{target}{path}", {**auth, "Host": target})
        with srv.raw() as conn:
            if conn.connect(target, auth).status == 200:
                conn.start_tls("api.upstream.test", srv.ca_bundle)
                conn.request("GET", path, {"Host": target})


def _probe_records(srv: SweptServer) -> list[dict[str, Any]]:
    def seen() -> list[dict[str, Any]]:
        with srv.http() as c:
            logs = c.get("/v1/vaults/default/logs", params={"limit": 100}).json()["logs"]
        return [r for r in logs if "inert" in str(r.get("path") or "")]

    return wait_until(seen, "an audit record of the hostile requests", timeout=10)


def test_logs_of_hostile_requests_are_inert(world: dict[str, Any]) -> None:
    """Whatever the audit keeps of the agent's path, `logs`, `logs follow` and `logs export` show it
    without a raw control byte (escaped if the record holds one), and the JSON forms decode to it."""
    srv: SweptServer = world["srv"]
    _hostile_requests(world)
    stored = [str(r["path"]) for r in _probe_records(srv)]
    for args in (("logs", "--limit", "50"), ("logs", "follow", "--backlog", "50", "--max-seconds", "0.2")):
        cp = srv.cli(*args)
        assert not raw_controls(cp.stdout + cp.stderr), raw_controls(cp.stdout + cp.stderr)
        for path in stored:
            assert inert(path) in cp.stdout, (path, cp.stdout)
    for args in (
        ("--json", "logs", "--limit", "50"),
        ("--json", "logs", "follow", "--backlog", "50", "--max-seconds", "0.2"),
        ("logs", "export"),
    ):
        cp = srv.cli(*args)
        assert not raw_controls(cp.stdout.replace("\n", "")), raw_controls(cp.stdout)
        paths = {json.loads(line).get("path") for line in cp.stdout.splitlines() if line.strip()}
        assert set(stored) <= paths


# ---- records the CLI cannot vouch for ----------------------------------------------------------------

LABEL = f"label{OSC}{CLEAR}\r\u202e{MARKUP}\n12  owner  credential.delete  ALL_KEYS"


def _fake_records() -> list[dict[str, Any]]:
    """Records as an older audit (before wire strings were escaped on write) or a newer field could
    hold them: raw control bytes in a path, a method and an admin record's target."""
    base = {"ts": "2026-01-01T00:00:00.000000Z", "vault": "default", "actor": "hostile-bot"}
    return [
        {
            **base,
            "seq": 1,
            "kind": "proxy.request",
            "decision": "injected",
            "scheme": "https",
            "method": "GET\x1b[2J",
            "host": "api.upstream.test",
            "port": 443,
            "path": PATH_PROBE + "\r\x08\x7f\x9b",
            "service": "inert-api",
            "status": 200,
            "injected_keys": ["INERT_KEY"],
        },
        {**base, "seq": 2, "kind": "session.create", "target": LABEL},
    ]


class _FakeApi(BaseHTTPRequestHandler):
    """Answers the CLI's audit reads with `_fake_records()` (and nothing new when polled)."""

    def do_GET(self) -> None:  # noqa: N802 (http.server's name)
        url = urlsplit(self.path)
        query = parse_qs(url.query)
        records = _fake_records()
        if url.path == "/v1/audit":
            body: dict[str, Any] = {"records": records if query.get("after_seq") == ["0"] else []}
        elif "after" in query:
            body = {"logs": [], "next_cursor": int(query["after"][0]), "latest_seq": 2}
        else:
            body = {"logs": records, "next_cursor": None, "latest_seq": 2}
        data = json.dumps(body, ensure_ascii=False).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args: Any) -> None:
        pass


@pytest.fixture
def fake_api() -> Iterator[str]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _FakeApi)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


def test_logs_never_pass_raw_record_text_to_the_terminal(world: dict[str, Any], fake_api: str) -> None:
    """The CLI does not trust the API's strings: records holding raw escapes (an older database, a
    field the audit does not clean) are printed escaped, one record per line, markup not interpreted."""
    srv: SweptServer = world["srv"]
    env = {**srv.env, "AGENT_VAULT_ADDR": fake_api, "AGENT_VAULT_TOKEN": "av_usr_not-a-real-token"}
    records = _fake_records()
    for args in (("logs", "--all"), ("logs", "follow", "--all", "--backlog", "5", "--max-seconds", "0.2")):
        cp = srv.cli(*args, env=env)
        text = cp.stdout + cp.stderr
        _check_human(text, must=("\\x1b]0;pwned\\x07", "\\x1b[2J", "\\u202e", "\\r", "\\x08", "\\x9b"))
        assert MARKUP in cp.stdout  # printed as text
        assert "\n12  owner" not in cp.stdout  # the label's newline did not forge a record line
        assert inert(records[0]["path"]) in cp.stdout and inert(LABEL) in cp.stdout
    for json_args in (
        ("--json", "logs", "--all"),
        ("--json", "logs", "follow", "--all", "--backlog", "5", "--max-seconds", "0.2"),
    ):
        cp = srv.cli(*json_args, env=env)
        assert not raw_controls(cp.stdout.replace("\n", "")), raw_controls(cp.stdout)
        assert [json.loads(line) for line in cp.stdout.splitlines() if line.strip()] == records
    cp = srv.cli("logs", "export", env=env)
    assert not raw_controls(cp.stdout.replace("\n", "")), raw_controls(cp.stdout)
    assert [json.loads(line) for line in cp.stdout.splitlines()] == records


# ---- the approval web page ----------------------------------------------------------------------------

FAKE_DOM = r"""
"use strict";
const texts = [];
const record = (v, where) => {
  if (typeof v !== "string") throw new Error("non-string " + where);
  texts.push(v);
};
class FakeNode {
  constructor(tag) { this.tag = tag; this.children = []; this._t = ""; this.dataset = {}; this.className = "";
    this.hidden = false; }
  set textContent(v) { record(v, "textContent"); this._t = v; }
  get textContent() { return this._t; }
  set innerHTML(v) { throw new Error("innerHTML used"); }
  set outerHTML(v) { throw new Error("outerHTML used"); }
  insertAdjacentHTML() { throw new Error("insertAdjacentHTML used"); }
  append(...xs) {
    for (const x of xs) { if (typeof x === "string") record(x, "append"); this.children.push(x); }
  }
  replaceChildren(...xs) { this.children = []; this.append(...xs); }
  addEventListener() {}
}
const nodes = {};
const DATA = JSON.parse(process.argv[2]);
globalThis.document = {
  body: {dataset: {vault: "default", id: String(DATA.id)}},
  getElementById: (i) => (nodes[i] = nodes[i] || new FakeNode("#" + i)),
  createElement: (t) => new FakeNode(t),
  querySelectorAll: () => [],
  write: () => { throw new Error("document.write used"); },
};
globalThis.location = {search: "", pathname: "/ui/approve/default/" + DATA.id};
globalThis.history = {replaceState() {}};
globalThis.fetch = async (path) => ({
  ok: true, status: 200,
  json: async () => (path.startsWith("/v1/auth/me") ? {kind: "user", name: "owner"} : DATA),
});
process.on("exit", () => process.stdout.write(JSON.stringify(texts)));
"""


def _page_script(srv: SweptServer, pid: str) -> str:
    r = httpx.get(f"{srv.api}/ui/approve/default/{pid}", timeout=10)
    assert r.status_code == 200
    m = re.search(r"<script nonce=\"[^\"]+\">(.*)</script>", r.text, re.S)
    assert m is not None
    return m.group(1)


def test_approval_page_renders_agent_text_inert(world: dict[str, Any], tmp_path: Path) -> None:
    srv: SweptServer = world["srv"]
    script = _page_script(srv, world["pid"])
    for sink in ("innerHTML", "outerHTML", "insertAdjacentHTML", "document.write", "DOMParser", "srcdoc"):
        assert sink not in script, sink
    # every direct textContent assignment goes through inert()
    assert not re.findall(r"textContent\s*=(?!\s*inert\()", script), "raw textContent assignment"
    node = shutil.which("node")
    if node is None:
        pytest.skip("node is not installed: the page's script cannot be run")
    with srv.http() as c:
        data = c.get(f"/v1/vaults/default/proposals/{world['pid']}").json()
    assert data["message"] == MESSAGE
    js = tmp_path / "page.js"
    js.write_text(FAKE_DOM + script)
    cp = subprocess.run(
        [node, str(js), json.dumps(data)], capture_output=True, text=True, timeout=30, check=False
    )
    assert cp.returncode == 0, cp.stderr
    texts: list[str] = json.loads(cp.stdout)
    shown = "\n".join(texts)
    for t in texts:
        assert not raw_controls(t), (raw_controls(t), t)
    assert inert(MESSAGE) in texts  # the page escapes exactly as the CLI does
    assert any(inert(DESCRIPTION) in t for t in texts)
    assert any(inert(OBTAIN) in t for t in texts)
    assert "\\u202e" in shown and "\\x1b]0;pwned\\x07" in shown  # incl. in the service JSON


def test_the_page_and_the_cli_escape_alike(world: dict[str, Any], tmp_path: Path) -> None:
    """The page's inert() and cli.output.inert() give the same text for every dangerous character."""
    node = shutil.which("node")
    if node is None:
        pytest.skip("node is not installed")
    script = _page_script(world["srv"], world["pid"])
    m = re.search(r"(const INERT_[\s\S]*?\nfunction inert\([\s\S]*?\n}\n)", script)
    assert m is not None, "the page has no inert() function"
    sample = "".join(chr(c) for c in [*range(0, 0x20), 0x7F, *range(0x80, 0xA0)])
    sample += (
        "ok \u061c\u200e\u200f\u2028\u2029\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069 é 🙂 [b]"
    )
    js = tmp_path / "inert.js"
    js.write_text(
        m.group(1) + "process.stdout.write(JSON.stringify([inert(process.argv[2]), "
        "inert(process.argv[2], true)]));\n"
    )
    cp = subprocess.run(
        [node, str(js), sample.replace("\x00", "")], capture_output=True, text=True, timeout=30, check=False
    )
    assert cp.returncode == 0, cp.stderr
    strict, lines = json.loads(cp.stdout)
    assert strict == inert(sample.replace("\x00", ""))
    assert lines == inert(sample.replace("\x00", ""), keep_lines=True)
