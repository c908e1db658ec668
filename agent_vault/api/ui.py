"""Web UI (SPEC §9.1): the proposal approval page `/ui/approve/{vault}/{id}?token=av_appr_…`.

One self-contained page (inline CSS/JS under a per-response CSP nonce, no external assets) that talks
only to the JSON API: it shows exactly what approving would change, logs the human in (the `av_ui`
cookie from POST /v1/auth/login), asks for the step-up password and for any missing credential
value (masked inputs), then calls approve/reject. Everything from the API is rendered with
`textContent`, never as HTML, and through `inert()` first: agent-written text (message, descriptions,
proposed service definitions) shows its control, bidi and line-separator characters escaped (`\\x1b`,
`\\u202e`), exactly as the CLI's `cli.output.inert` does. The approval token is dropped from the
address bar at once and is never sent as a Referer (`Referrer-Policy: no-referrer`).
"""

from __future__ import annotations

import html
import re
import secrets
from pathlib import Path

from fastapi import APIRouter
from fastapi.responses import HTMLResponse

from agent_vault.errors import NotFound

router = APIRouter()
WEB = Path(__file__).resolve().parent.parent / "web"
_NAME = re.compile(r"^[a-z0-9](?:[a-z0-9]|-(?!-))*[a-z0-9]$")

_CSS = """
body{font:15px/1.45 system-ui,sans-serif;margin:0;background:#f6f7f9;color:#1b1f24}
main{max-width:760px;margin:2rem auto;padding:0 1rem}
section{background:#fff;border:1px solid #d8dde3;border-radius:8px;padding:1rem 1.25rem;margin:1rem 0}
h1{font-size:1.35rem}h2{font-size:1.05rem;margin:.2rem 0 .6rem}
pre{background:#f0f2f5;padding:.6rem;border-radius:6px;overflow:auto;font-size:13px}
label{display:block;margin:.5rem 0}input{font:inherit;padding:.35rem;width:100%;box-sizing:border-box}
button{font:inherit;padding:.45rem 1rem;margin:.6rem .4rem 0 0;border-radius:6px;border:1px solid #888;
cursor:pointer}
.ok{background:#1f7a3a;color:#fff;border-color:#1f7a3a}.no{background:#fff;color:#a11}
.tag{display:inline-block;padding:0 .4rem;border-radius:4px;background:#e8ecf1;font-size:12px;
margin-left:.4rem}
.err{color:#a11}.muted{color:#5b6570}
.warn{background:#fff4d6;border-left:4px solid #b36b00;padding:.35rem .6rem;font-weight:600;color:#6b3f00}
.stale{background:#fbe4e2;border-left:4px solid #a11;padding:.35rem .6rem;font-weight:600;color:#a11}
blockquote{margin:.5rem 0;padding-left:.8rem;border-left:3px solid #c5ccd4}
"""

_JS = r"""
"use strict";
__INERT__
const V = document.body.dataset.vault, ID = document.body.dataset.id;
const token = new URLSearchParams(location.search).get("token") || "";
if (location.search) history.replaceState(null, "", location.pathname);
const $ = (i) => document.getElementById(i);
const BASE = "/v1/vaults/" + encodeURIComponent(V) + "/proposals/" + encodeURIComponent(ID);
function setText(node, text, keepLines) { node.textContent = inert(text, keepLines); }
function el(tag, text, cls, keepLines) {
  const e = document.createElement(tag);
  if (text !== undefined && text !== null) setText(e, text, keepLines);
  if (cls) e.className = cls;
  return e;
}
async function api(method, path, body) {
  const opt = {method: method, credentials: "same-origin", headers: {}};
  if (body !== undefined) {
    opt.headers["Content-Type"] = "application/json";
    opt.body = JSON.stringify(body);
  }
  const r = await fetch(path, opt);
  let data = {};
  try { data = await r.json(); } catch (e) { data = {}; }
  return {ok: r.ok, status: r.status, data: data};
}
function say(text, bad) { const r = $("result"); setText(r, text); r.className = bad ? "err" : ""; }
function why(r) {
  return (r.data.message || ("HTTP " + r.status)) + (r.data.hint ? " (" + r.data.hint + ")" : "");
}
function render(d) {
  $("proposal").hidden = false;
  setText($("actor"), d.actor); setText($("pstatus"), d.status);
  setText($("expires"), d.expires_at); setText($("message"), d.message || "(no message)");
  setText($("role"), d.required_role);
  const byName = {};
  for (const s of d.services) byName[s.name] = s;
  const stale = $("stale"); stale.replaceChildren();
  for (const r of d.out_of_date || []) {
    stale.append(el("p", "Out of date: " + r + ". Approving would fail: reject this proposal.", "stale"));
  }
  const svc = $("services"); svc.replaceChildren();
  for (const c of d.changes.services) {
    const h = el("h3", c.name); h.append(el("span", c.effect, "tag")); svc.append(h);
    if (c.out_of_date) svc.append(el("p", "Out of date: " + c.out_of_date, "stale"));
    for (const w of c.warnings || []) svc.append(el("p", "Warning: " + w, "warn"));
    if (c.effect !== "delete") {
      const after = Object.assign({}, byName[c.name]); delete after.action;
      svc.append(el("p", c.effect === "add" ? "New service:" : "New definition:", "muted"));
      svc.append(el("pre", JSON.stringify(after, null, 2), "", true));
    }
    if (c.before) {
      svc.append(el("p", "Current definition:", "muted"));
      svc.append(el("pre", JSON.stringify(c.before, null, 2), "", true));
    }
  }
  if (!d.changes.services.length) svc.append(el("p", "No service changes.", "muted"));
  const cred = $("credentials"); cred.replaceChildren();
  const meta = {};
  for (const c of d.credentials) meta[c.key] = c;
  for (const c of d.changes.credentials) {
    const p = el("p"); p.append(el("b", c.key), el("span", c.effect, "tag"));
    if (d.missing_values.includes(c.key)) p.append(el("span", "value needed", "tag"));
    if (c.out_of_date) p.append(el("div", "Out of date: " + c.out_of_date, "stale"));
    const m = meta[c.key] || {};
    if (m.description) p.append(el("div", "Description: " + m.description, "muted"));
    if (m.obtain) p.append(el("div", "How to obtain: " + m.obtain, "muted"));
    cred.append(p);
  }
  for (const k of d.missing_values) {
    if (!meta[k]) cred.append(el("p", k + ": value needed (used by a proposed service)"));
  }
  if (!cred.children.length) cred.append(el("p", "No credential changes.", "muted"));
  const vals = $("values"); vals.replaceChildren();
  for (const k of d.missing_values) {
    const l = el("label", "Value for " + k);
    const i = el("input"); i.type = "password"; i.autocomplete = "off"; i.required = true; i.dataset.key = k;
    l.append(i); vals.append(l);
  }
}
async function load() {
  const me = await api("GET", "/v1/auth/me");
  const loggedIn = me.ok && me.data.kind === "user";
  let r = await api("GET", BASE);
  if (!r.ok && token) r = await api("GET", BASE + "?token=" + encodeURIComponent(token));
  if (r.ok) { render(r.data); say(""); } else { say(why(r), true); }
  $("login").hidden = loggedIn;
  $("review").hidden = !(loggedIn && r.ok && r.data.status === "pending");
  if (loggedIn) setText($("who"), "Logged in as " + me.data.name + ".");
  if (r.ok && r.data.status !== "pending") say("This proposal is " + r.data.status + ".");
}
$("login-form").addEventListener("submit", async (ev) => {
  ev.preventDefault();
  const body = {email: $("email").value, password: $("login-pw").value, label: "web ui"};
  const r = await api("POST", "/v1/auth/login", body);
  $("login-pw").value = "";
  if (!r.ok) { say(why(r), true); return; }
  await load();
});
$("approve-form").addEventListener("submit", async (ev) => {
  ev.preventDefault();
  const creds = {};
  for (const i of document.querySelectorAll("#values input")) creds[i.dataset.key] = i.value;
  const body = {password: $("stepup").value, credentials: creds};
  if ($("note").value) body.note = $("note").value;
  const r = await api("POST", BASE + "/approve", body);
  $("stepup").value = "";
  if (!r.ok) { say(why(r), true); return; }
  for (const i of document.querySelectorAll("#values input")) i.value = "";
  await load(); say("Approved and applied.");
});
$("reject-btn").addEventListener("click", async () => {
  const body = $("reason").value ? {reason: $("reason").value} : {};
  const r = await api("POST", BASE + "/reject", body);
  if (!r.ok) { say(why(r), true); return; }
  await load(); say("Rejected.");
});
load();
""".replace("__INERT__", (WEB / "inert.js").read_text().strip())

_PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width,initial-scale=1">
<title>agent-vault: review proposal {pid}</title><style nonce="{nonce}">{css}</style></head>
<body data-vault="{vault}" data-id="{pid}"><main>
<h1>Proposal {pid} in vault {vault}</h1>
<p id="result" role="status"></p>
<section id="proposal" hidden>
<p>From <b id="actor"></b> &middot; status <b id="pstatus"></b> &middot;
expires <span id="expires"></span></p>
<blockquote id="message"></blockquote>
<div id="stale"></div>
<h2>Services</h2><div id="services"></div>
<h2>Credentials</h2><div id="credentials"></div>
<p class="muted">Approving needs the <b id="role"></b> role on this vault and your password.</p>
</section>
<section id="login" hidden><h2>Log in to review</h2>
<form id="login-form"><label>Email <input id="email" type="email" autocomplete="username" required></label>
<label>Password <input id="login-pw" type="password" autocomplete="current-password" required></label>
<button class="ok" type="submit">Log in</button></form></section>
<section id="review" hidden><h2>Decide</h2><p id="who" class="muted"></p>
<form id="approve-form"><div id="values"></div>
<label>Note (optional) <input id="note" maxlength="2000"></label>
<label>Your password (confirms the approval)
<input id="stepup" type="password" autocomplete="current-password" required></label>
<button class="ok" type="submit">Approve</button></form>
<label>Reason for rejecting (optional; the agent sees it) <input id="reason" maxlength="2000"></label>
<button class="no" id="reject-btn" type="button">Reject</button></section>
</main><script nonce="{nonce}">{js}</script></body></html>
"""


def security_headers(nonce: str) -> dict[str, str]:
    csp = (
        f"default-src 'none'; script-src 'nonce-{nonce}'; style-src 'nonce-{nonce}'; connect-src 'self'; "
        "img-src 'self'; form-action 'none'; frame-ancestors 'none'; base-uri 'none'"
    )
    return {
        "Content-Security-Policy": csp,
        "X-Frame-Options": "DENY",
        "Referrer-Policy": "no-referrer",
        "X-Content-Type-Options": "nosniff",
        "Cache-Control": "no-store",
    }


@router.get("/ui/approve/{vault}/{pid}", response_class=HTMLResponse, include_in_schema=False)
def approve_page(vault: str, pid: int) -> HTMLResponse:
    """The page holds no proposal data and grants nothing: it fetches what the caller may see."""
    if not (3 <= len(vault) <= 64 and _NAME.fullmatch(vault)) or pid < 1:
        raise NotFound("no such proposal page")
    nonce = secrets.token_urlsafe(18)
    page = _PAGE.format(nonce=nonce, css=_CSS, js=_JS, vault=html.escape(vault), pid=pid)
    return HTMLResponse(page, headers=security_headers(nonce))
