// /ui/agents: list, create (token shown once), rotate (shown once), revoke, delete, vault grants.
"use strict";
AV.page("agents", async ({main, vaults}) => {
  const {el, api, enc, when, badge, withStepUp, notify, showOnce} = AV;
  const ROLES = [["proxy", "proxy (use the proxy)"], ["member", "member (+ propose, manage credentials)"],
    ["admin", "admin"]];
  main.append(AV.heading("Agents", "Non-human identities with long-lived tokens. Tokens are shown once."));
  const onceSlot = el("div", {id: "once-slot"});
  const listBox = el("div", {id: "agents-list"});
  // create form
  const name = el("input", {id: "agent-name", required: true, placeholder: "e.g. claude-laptop",
    pattern: "[a-z0-9][a-z0-9-]*[a-z0-9]", minLength: 3, maxLength: 64});
  const vault = AV.select("agent-vault", vaults.map((v) => [v.name, v.name]), AV.state.vault || "default");
  const role = AV.select("agent-role", ROLES, "proxy");
  const desc = el("input", {id: "agent-description", maxLength: 500, placeholder: "optional"});
  const form = el("form", {class: "inline", id: "agent-create"},
    AV.field("Name", name), AV.field("Vault", vault), AV.field("Role", role), AV.field("Description", desc),
    el("button", {type: "submit", class: "primary", id: "agent-create-submit"}, "Create agent"));
  form.addEventListener("submit", async (ev) => {
    ev.preventDefault();
    const r = await withStepUp("Create agent " + name.value, "Its token is shown once.", (pw) =>
      api("POST", "/v1/agents", {name: name.value, password: pw, description: desc.value,
        vaults: [{vault: vault.value, role: role.value}]}));
    if (!r || !r.ok) return;
    showOnce(onceSlot, "Token for agent " + r.data.name + ":", r.data.token);
    form.reset();
    await load();
  });
  main.append(onceSlot, AV.card("New agent", form), listBox);

  function grants(a) {
    return el("div", {}, a.vaults.map((g) => el("div", {},
      el("a", {href: AV.uiPath(g.name, "services")}, g.name), badge(g.role),
      el("button", {type: "button", class: "small ghost", title: "Remove this grant", on: {click: async () => {
        const r = await withStepUp("Remove " + a.name + " from " + g.name, null, (pw) =>
          api("DELETE", AV.vaultPath(g.name, "/agents/" + enc(a.name)), {password: pw}));
        if (r && r.ok) { notify("Grant removed."); await load(); }
      }}}, "x"))));
  }
  function grantForm(a) {
    const v = AV.select("", vaults.map((x) => [x.name, x.name]), "");
    const rl = AV.select("", ROLES, "proxy");
    const f = el("form", {class: "inline"}, v, rl, el("button", {type: "submit", class: "small"}, "Grant"));
    f.addEventListener("submit", async (ev) => {
      ev.preventDefault();
      const r = await withStepUp("Grant " + a.name + " " + rl.value + " on " + v.value, null, (pw) =>
        api("PUT", AV.vaultPath(v.value, "/agents/" + enc(a.name)), {password: pw, role: rl.value}));
      if (r && r.ok) { notify("Grant saved."); await load(); }
    });
    return f;
  }
  function actions(a) {
    const path = "/v1/agents/" + enc(a.name);
    return el("div", {class: "actions"},
      el("button", {type: "button", class: "small", data: {action: "rotate", agent: a.name},
        on: {click: async () => {
          const r = await withStepUp("Rotate the token of " + a.name,
            "The old token stops working now; the new one is shown once.",
            (pw) => api("POST", path + "/rotate", {password: pw, grace_seconds: 0}));
          if (r && r.ok) { showOnce(onceSlot, "New token for agent " + a.name + ":", r.data.token); await load(); }
        }}}, a.status === "revoked" ? "Re-enable (new token)" : "Rotate"),
      a.status !== "revoked" ? el("button", {type: "button", class: "small danger",
        data: {action: "revoke", agent: a.name}, on: {click: async () => {
          if (!AV.confirmAction("Revoke " + a.name + "? Its tokens stop working at once.")) return;
          const r = await api("POST", path + "/revoke");
          if (!r.ok) { AV.fail(r); return; }
          notify("Agent " + a.name + " revoked."); await load();
        }}}, "Revoke") : null,
      el("button", {type: "button", class: "small danger", on: {click: async () => {
        if (!AV.confirmAction("Delete " + a.name + " with its grants and tokens?")) return;
        const r = await api("DELETE", path);
        if (!r.ok) { AV.fail(r); return; }
        notify("Agent " + a.name + " deleted."); await load();
      }}}, "Delete"));
  }
  async function load() {
    const r = await api("GET", "/v1/agents");
    if (!r.ok) { listBox.replaceChildren(AV.empty("Cannot list agents.", AV.why(r))); return; }
    const agents = r.data.agents;
    if (!agents.length) {
      listBox.replaceChildren(AV.empty("No agents yet.",
        "Create one above, then give its token to the agent (AGENT_VAULT_TOKEN) or use `agent-vault vault run`."));
      return;
    }
    listBox.replaceChildren(AV.table(["Agent", "Status", "Vaults", "Created", "Last used", ""],
      agents.map((a) => el("tr", {data: {agent: a.name}},
        el("td", {}, el("b", {}, a.name), a.description ? el("div", {class: "muted"}, a.description) : null),
        el("td", {}, badge(a.status, a.status === "active" ? "good" : "bad")),
        el("td", {}, grants(a), grantForm(a)),
        el("td", {class: "hide-narrow"}, when(a.created_at)),
        el("td", {class: "hide-narrow"}, when(a.last_used_at)),
        el("td", {}, actions(a))))));
  }
  await load();
});
