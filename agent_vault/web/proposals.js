// /ui/vaults/{v}/proposals: pending and past proposals with their change sets; deciding opens the
// review page (/ui/approve/...), which shows the exact definitions and asks for step-up and values.
"use strict";
AV.page("proposals", async ({main, vault}) => {
  const {el, api, enc, when, badge, notify, vaultPath} = AV;
  main.append(AV.heading("Proposals in " + vault,
    "Agents ask for services and credentials here; nothing changes until a human approves."));
  const pendingBox = el("div", {id: "pending"}), pastBox = el("div", {id: "past"});
  const holdsBox = el("div", {id: "holds"});
  const holdsCard = AV.card("Requests held for approval", el("p", {class: "muted"},
    "An agent's request to a service that requires approval waits here until you decide or it times out."),
    holdsBox);
  holdsCard.hidden = true;
  main.append(holdsCard, AV.card("Waiting for a decision", pendingBox), AV.card("History", pastBox));
  const effectKind = {add: "good", create: "good", update: "warn", replace: "warn", delete: "bad"};

  /** The exact change set of a pending proposal (its detail), or the names a decided one touched. */
  function changes(p, detail) {
    if (!detail) {
      return el("p", {class: "muted"}, "Services: " + ((p.services || []).join(", ") || "none") +
        "; credentials: " + ((p.credentials || []).join(", ") || "none") + ".");
    }
    const hostOf = {};
    for (const s of detail.services || []) hostOf[s.name] = s.host + (s.path && s.path !== "/" ? s.path : "");
    const missing = new Set(detail.missing_values || []);
    return el("ul", {class: "changes"},
      detail.changes.services.map((c) => el("li", {}, badge(c.effect, effectKind[c.effect]), " service ",
        el("b", {}, c.name), hostOf[c.name] ? el("span", {class: "mono"}, " " + hostOf[c.name]) : null,
        c.out_of_date ? el("div", {class: "bad"}, "Out of date: " + c.out_of_date) : null,
        ...(c.warnings || []).map((w) => el("div", {class: "warn"}, "Warning: " + w)))),
      detail.changes.credentials.map((c) => el("li", {}, badge(c.effect, effectKind[c.effect]), " credential ",
        el("b", {class: "mono"}, c.key), missing.has(c.key) ? badge("value needed", "warn") : null)));
  }
  function row(p, pending, detail) {
    const review = "/ui/approve/" + enc(vault) + "/" + enc(String(p.id));
    return el("div", {class: "card", data: {proposal: String(p.id)}},
      el("h3", {}, "#" + p.id + " from " + p.actor, badge(p.status, pending ? "warn" : "")),
      p.message ? el("blockquote", {}, AV.text(p.message, true)) : null,
      changes(p, detail),
      el("p", {class: "muted"}, "Created " + when(p.created_at) + (pending ? ", expires " + when(p.expires_at) : "")),
      pending ? el("div", {class: "actions"},
        el("a", {href: review}, el("button", {type: "button", class: "primary"}, "Review and decide")),
        el("button", {type: "button", class: "danger", on: {click: async () => {
          const reason = window.prompt("Reason for rejecting (the agent sees it; optional):", "");
          if (reason === null) return;
          const r = await api("POST", vaultPath(vault, "/proposals/" + enc(String(p.id)) + "/reject"),
            reason ? {reason: reason} : {});
          if (!r.ok) { AV.fail(r); return; }
          notify("Proposal #" + p.id + " rejected."); await load();
        }}}, "Reject")) : null);
  }
  async function load() {
    const r = await api("GET", vaultPath(vault, "/proposals"));
    if (!r.ok) { pendingBox.replaceChildren(AV.empty("Cannot list proposals.", AV.why(r))); return; }
    const all = r.data.proposals.slice().sort((a, b) => b.id - a.id);
    const open = (p) => p.status === "pending" || p.status === "draft";  // draft: drafted in learn mode
    const pending = all.filter(open);
    const details = await Promise.all(pending.map((p) =>
      api("GET", vaultPath(vault, "/proposals/" + enc(String(p.id)))).then((d) => (d.ok ? d.data : null))));
    pendingBox.replaceChildren(...(pending.length ? pending.map((p, i) => row(p, true, details[i]))
      : [AV.empty("Nothing to decide.", "Agents propose with POST /v1/proposals or the MCP tool `propose` (agent-vault mcp).")]));
    const past = all.filter((p) => !open(p));
    pastBox.replaceChildren(...(past.length ? past.map((p) => row(p, false))
      : [el("p", {class: "muted"}, "No decided proposals yet.")]));
  }
  async function loadHolds() {
    const r = await api("GET", vaultPath(vault, "/holds"));
    if (!r.ok) return;  // a member's view; proxy-role callers cannot list holds
    holdsCard.hidden = false;
    const decide = (h, action, scope) => async () => {
      const path = vaultPath(vault, "/holds/" + enc(h.id) + "/" + action);
      const res = action === "deny" ? await api("POST", path, {})
        : await AV.withStepUp("Let " + h.method + " " + h.host + h.path + " through",
          scope === "always" ? "Always: " + h.agent + " no longer needs approval for " + h.service + "."
            : scope === "1h" ? "For one hour, " + h.agent + "'s requests to " + h.service + " pass." : "This request only.",
          (pw) => api("POST", path, {password: pw, scope: scope}));
      if (res && !res.ok && action === "deny") AV.fail(res);
      if (res && res.ok) notify(action === "deny" ? "Denied." : "Approved (" + scope + ").");
      await loadHolds();
    };
    holdsBox.replaceChildren(...(r.data.holds.length ? [AV.table(["Agent", "Request", "Service", "Expires", ""],
      r.data.holds.map((h) => el("tr", {data: {hold: h.id}}, el("td", {}, h.agent),
        el("td", {class: "mono"}, h.method + " " + h.host + (h.port && h.port !== 443 ? ":" + h.port : "") + h.path),
        el("td", {}, h.service), el("td", {}, when(h.expires_at)),
        el("td", {}, el("div", {class: "actions"},
          el("button", {type: "button", class: "small primary", data: {action: "approve-once"},
            on: {click: decide(h, "approve", "once")}}, "Approve once"),
          el("button", {type: "button", class: "small", on: {click: decide(h, "approve", "1h")}}, "1 hour"),
          el("button", {type: "button", class: "small", on: {click: decide(h, "approve", "always")}}, "Always"),
          el("button", {type: "button", class: "small danger", data: {action: "deny"},
            on: {click: decide(h, "deny")}}, "Deny"))))))]
      : [el("p", {class: "muted"}, "No request is waiting.")]));
  }
  await Promise.all([load(), loadHolds()]);
  const timer = setInterval(() => { if (!document.hidden) loadHolds(); }, 2000);
  window.addEventListener("pagehide", () => clearInterval(timer));
});
