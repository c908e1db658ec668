// /ui/vaults/{v}/services: the vault's services; enable/disable, delete (step-up); add from the catalog
// or by form. A catalog add can also set the suggested key's value through a masked, write-only input.
"use strict";
AV.page("services", async ({main, vault}) => {
  const {el, api, enc, badge, withStepUp, notify, vaultPath} = AV;
  main.append(AV.heading("Services in " + vault,
    "Which hosts get which credential. Changes apply to new requests at once."));
  const listBox = el("div", {id: "services-list"});
  const catalogBox = el("div", {class: "catalog", id: "catalog"});
  main.append(listBox);

  function authSummary(a) {
    if (!a) return "";
    const keys = [a.token, a.key, a.username, a.password].filter(Boolean);
    let where = "";
    if (a.type === "api-key") where = a.query ? " in ?" + a.query : " in " + (a.header || "Authorization");
    return a.type + where + (keys.length ? " <- " + keys.join(", ") : "");
  }
  async function addService(def, note) {
    const r = await withStepUp("Add service " + def.name, note, (pw) =>
      api("POST", vaultPath(vault, "/services"), {password: pw, service: def}));
    if (r && r.ok) { notify("Service " + def.name + " added."); await load(); }
    return r && r.ok;
  }
  async function setValue(key, input) {
    if (!input.value) return true;
    const r = await api("PUT", vaultPath(vault, "/credentials/" + enc(key)), {value: input.value});
    input.value = "";
    if (!r.ok) return AV.fail(r);
    return true;
  }
  async function load() {
    const r = await api("GET", vaultPath(vault, "/services"));
    if (!r.ok) { listBox.replaceChildren(AV.empty("Cannot list services.", AV.why(r))); return; }
    const services = r.data.services;
    if (!services.length) {
      listBox.replaceChildren(AV.empty("No services yet.",
        "Pick one from the catalog below, or describe your own API with the form."));
      return;
    }
    listBox.replaceChildren(AV.table(["Service", "Host and path", "Methods", "Auth", "State", ""],
      services.map((s) => el("tr", {data: {service: s.name}},
        el("td", {}, el("b", {}, s.name), s.description ? el("div", {class: "muted"}, s.description) : null),
        el("td", {class: "mono"}, s.host + (s.port ? ":" + s.port : "") + (s.path || "/")),
        el("td", {}, s.methods ? s.methods.join(", ") : "any",
          s.quota ? el("div", {class: "muted"}, "quota " + s.quota + " per token") : null,
          s.token_budget ? el("div", {class: "muted"}, "token budget " + s.token_budget) : null),
        el("td", {class: "mono"}, authSummary(s.auth)),
        el("td", {}, badge(s.enabled ? "enabled" : "disabled", s.enabled ? "good" : "")),
        el("td", {}, el("div", {class: "actions"},
          el("button", {type: "button", class: "small", data: {action: "toggle"}, on: {click: async () => {
            const r2 = await withStepUp((s.enabled ? "Disable " : "Enable ") + s.name, null, (pw) =>
              api("PATCH", vaultPath(vault, "/services/" + enc(s.name)), {password: pw, enabled: !s.enabled}));
            if (r2 && r2.ok) { notify("Service " + s.name + (s.enabled ? " disabled." : " enabled.")); await load(); }
          }}}, s.enabled ? "Disable" : "Enable"),
          el("button", {type: "button", class: "small danger", data: {action: "delete"}, on: {click: async () => {
            const r2 = await withStepUp("Delete service " + s.name, "Agents lose access to it at once.", (pw) =>
              api("DELETE", vaultPath(vault, "/services/" + enc(s.name)), {password: pw}));
            if (r2 && r2.ok) { notify("Service " + s.name + " deleted."); await load(); }
          }}}, "Delete")))))));
  }

  // ---- the catalog --------------------------------------------------------------------------------
  async function loadCatalog() {
    const r = await api("GET", "/v1/catalog");
    if (!r.ok) { catalogBox.replaceChildren(AV.empty("The catalog is unavailable.", AV.why(r))); return; }
    catalogBox.replaceChildren(...r.data.services.map((t) => {
      const key = (t.suggested_keys || [])[0];
      const name = el("input", {defaultValue: t.id, value: t.id, maxLength: 64, attrs: {"aria-label": "Service name"}});
      const value = key ? el("input", {type: "password", autocomplete: "off", placeholder: "optional",
        attrs: {"aria-label": "Value for " + key}}) : null;
      const form = el("form", {class: "item", data: {template: t.id}},
        el("b", {}, t.name), el("span", {class: "muted"}, t.description),
        el("span", {class: "mono"}, t.host + (t.path && t.path !== "/" ? t.path : "")),
        AV.field("Name", name),
        key ? AV.field("Value for " + key, value, "Write-only: never shown again.") : null,
        el("button", {type: "submit", class: "small primary"}, "Add"));
      form.addEventListener("submit", async (ev) => {
        ev.preventDefault();
        if (value && !(await setValue(key, value))) return;
        const def = {name: name.value, host: t.host, path: t.path || "/", auth: t.auth,
          description: t.description};
        if (await addService(def, "From the catalog: " + t.name + ".")) form.reset();
      });
      return form;
    }));
  }

  // ---- a custom service ---------------------------------------------------------------------------
  const f = {
    name: el("input", {id: "svc-name", required: true, maxLength: 64}),
    host: el("input", {id: "svc-host", required: true, placeholder: "api.example.com"}),
    port: el("input", {id: "svc-port", type: "number", min: 1, max: 65535, placeholder: "443"}),
    path: el("input", {id: "svc-path", value: "/"}),
    methods: el("input", {id: "svc-methods", placeholder: "any (or GET,POST)"}),
    type: AV.select("svc-auth", [["bearer", "Bearer token"], ["api-key", "API key in a header"],
      ["api-key-query", "API key in the query"], ["basic", "Basic (user + password keys)"],
      ["passthrough", "No credential (passthrough)"]], "bearer"),
    key: el("input", {id: "svc-key", placeholder: "API_TOKEN", pattern: "[A-Z][A-Z0-9_]*"}),
    header: el("input", {id: "svc-header", placeholder: "Authorization / x-api-key / ?param"}),
    user: el("input", {id: "svc-user", placeholder: "USER_KEY"}),
  };
  const custom = el("form", {id: "service-form"},
    el("div", {class: "filters"}, AV.field("Name", f.name), AV.field("Host", f.host), AV.field("Port", f.port),
      AV.field("Path prefix", f.path), AV.field("Methods", f.methods)),
    el("div", {class: "filters"}, AV.field("Auth", f.type), AV.field("Credential key", f.key),
      AV.field("Header or query name", f.header), AV.field("Basic: username key", f.user)),
    el("button", {type: "submit", class: "primary"}, "Add service"));
  custom.addEventListener("submit", async (ev) => {
    ev.preventDefault();
    const t = f.type.value;
    const auth = t === "bearer" ? {type: "bearer", token: f.key.value}
      : t === "api-key" ? {type: "api-key", key: f.key.value, header: f.header.value || "Authorization"}
      : t === "api-key-query" ? {type: "api-key", key: f.key.value, query: f.header.value || "api_key"}
      : t === "basic" ? {type: "basic", username: f.user.value, password: f.key.value}
      : {type: "passthrough"};
    const def = {name: f.name.value, host: f.host.value, path: f.path.value || "/", auth: auth};
    if (f.port.value) def.port = Number(f.port.value);
    if (f.methods.value.trim()) def.methods = f.methods.value.split(",").map((m) => m.trim().toUpperCase());
    if (await addService(def, null)) custom.reset();
  });

  main.append(AV.card("Add from the catalog", catalogBox), AV.card("Add your own", custom));
  await Promise.all([load(), loadCatalog()]);
});
