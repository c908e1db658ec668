// /ui/: instance facts, the audit chain's state, each vault's activity, and what to do next.
"use strict";
AV.page("dashboard", async ({main, me, vaults}) => {
  const {el, api, card, when, badge, uiPath} = AV;
  const stat = (label, value, cls) => el("div", {class: "stat"}, el("span", {}, label),
    el("b", {class: cls || ""}, value === undefined || value === null ? "-" : String(value)));
  main.append(AV.heading("Dashboard", "Signed in as " + me.name + " (" + me.role + ")"));
  const status = await api("GET", "/v1/status");
  const s = status.ok ? status.data : {};
  const proxyAddr = location.hostname + ":" + (s.proxy_port || "?");
  const top = el("div", {class: "grid"});
  top.append(card("Server",
    stat("Version", s.version), stat("Key mode", s.key_mode), stat("Proxy", proxyAddr),
    stat("API", s.public_url || location.origin)));
  const chain = card("Audit chain", el("p", {class: "muted", id: "chain-state"}, "Checking..."));
  top.append(chain);
  main.append(top);
  if (me.role === "owner") {
    api("POST", "/v1/audit/verify").then((r) => {
      const box = chain.querySelector("#chain-state");
      if (!r.ok) { box.replaceChildren(AV.text(AV.why(r))); return; }
      const d = r.data;
      box.className = d.ok ? "good" : "bad";
      box.replaceChildren(AV.text(d.ok ? "Intact: " + d.checked + " records verified"
        : "Broken at record " + d.first_bad_seq + ": " + (d.reason || "mismatch")));
      if (d.head) chain.append(el("p", {class: "muted mono"}, "head " + String(d.head.hash || d.head)
        .slice(0, 16) + "..."));
    });
  } else {
    chain.querySelector("#chain-state").replaceChildren(AV.text("Only the owner can verify the chain."));
  }
  const list = el("div", {class: "grid", id: "vault-cards"});
  main.append(el("h2", {}, "Vaults"), list);
  let services = 0, agentsSeen = 0, credentials = 0;
  for (const v of vaults) {
    const r = await api("GET", AV.vaultPath(v.name));
    const c = r.ok ? r.data.counts || {} : {};
    services += c.services || 0; credentials += c.credentials || 0;
    const pending = v.pending_proposals || 0, holds = v.pending_holds || 0;
    list.append(el("section", {class: "card vault-card", data: {vault: v.name}},
      el("h2", {}, el("a", {href: uiPath(v.name, "services")}, v.name), badge(v.role)),
      stat("Services", c.services), stat("Credentials", c.credentials),
      el("div", {class: "stat"}, el("a", {href: uiPath(v.name, "proposals")}, "Pending proposals"),
        el("b", {class: pending ? "warn" : ""}, String(pending))),
      "pending_holds" in v ? stat("Pending holds", holds, holds ? "warn" : "") : null,
      stat("Requests, last hour", c.requests_last_hour),
      stat("Denied, last hour", c.denied_last_hour, c.denied_last_hour ? "warn" : ""),
      stat("Errors, last hour", c.errors_last_hour, c.errors_last_hour ? "bad" : ""),
      stat("Unmatched hosts", v.unmatched_policy),
      el("p", {}, el("a", {href: uiPath(v.name, "logs")}, "Open the live log"))));
  }
  if (!vaults.length) list.append(AV.empty("No vault you can see.", "Ask an owner for a grant."));
  const agents = await api("GET", "/v1/agents");
  agentsSeen = agents.ok ? agents.data.agents.length : 0;
  const first = vaults.length ? vaults[0].name : "default";
  const steps = [
    [credentials > 0, "Store a credential", uiPath(first, "credentials")],
    [services > 0, "Add a service (the catalog has GitHub, OpenAI, Anthropic...)", uiPath(first, "services")],
    [agentsSeen > 0, "Create an agent and copy its token", "/ui/agents"],
  ];
  if (steps.some((x) => !x[0])) {
    main.append(card("Getting started",
      el("ol", {class: "checklist", id: "checklist"}, steps.map(([done, label, href]) =>
        el("li", {class: done ? "done" : ""}, el("a", {href: href}, label)))),
      el("p", {class: "muted"}, "Then run your agent through the proxy: ",
        el("code", {}, "agent-vault vault run -- claude"), " (or set AGENT_VAULT_TOKEN on a remote worker).")));
  }
  main.append(el("p", {class: "muted"}, "Loaded " + when(new Date().toISOString()) + "."));
});
