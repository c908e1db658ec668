// /ui/vaults/{v}/credentials: key names only. Values go in through masked, write-only inputs that are
// cleared as soon as the request is sent; nothing here ever reads a value back (reveal stays a CLI
// step-up flow).
"use strict";
AV.page("credentials", async ({main, vault}) => {
  const {el, api, enc, when, badge, notify, vaultPath} = AV;
  main.append(AV.heading("Credentials in " + vault,
    "Names only. A value is write-only here: set or rotate it, never read it."));
  const listBox = el("div", {id: "credentials-list"});
  const masked = (id, label) => el("input", {type: "password", autocomplete: "off", id: id || undefined,
    attrs: {"aria-label": label}});

  function valueForm(c) {
    const input = masked("", "New value for " + c.key);
    const form = el("form", {class: "inline", data: {key: c.key}}, input,
      el("button", {type: "submit", class: "small"}, c.has_value ? "Rotate" : "Set value"));
    form.addEventListener("submit", async (ev) => {
      ev.preventDefault();
      if (!input.value) return;
      const body = {value: input.value};
      input.value = "";
      const r = c.has_value
        ? await api("POST", vaultPath(vault, "/credentials/" + enc(c.key) + "/rotate"), body)
        : await api("PUT", vaultPath(vault, "/credentials/" + enc(c.key)), body);
      if (!r.ok) { AV.fail(r); return; }
      notify(c.key + " is now at version " + r.data.version + "."); await load();
    });
    return form;
  }
  async function remove(c) {
    if (!AV.confirmAction("Delete " + c.key + "?")) return;
    let r = await api("DELETE", vaultPath(vault, "/credentials/" + enc(c.key)));
    if (r.status === 409 && AV.confirmAction(c.key + " is used by " + (c.used_by || []).join(", ") +
      ". Delete it anyway? Those services stop working.")) {
      r = await api("DELETE", vaultPath(vault, "/credentials/" + enc(c.key) + "?force=true"));
    }
    if (!r.ok) { AV.fail(r); return; }
    notify(c.key + " deleted."); await load();
  }
  async function load() {
    const r = await api("GET", vaultPath(vault, "/credentials"));
    if (!r.ok) { listBox.replaceChildren(AV.empty("Cannot list credentials.", AV.why(r))); return; }
    const creds = r.data.credentials;
    if (!creds.length) {
      listBox.replaceChildren(AV.empty("No credentials yet.",
        "Add one below, then point a service at its key name."));
      return;
    }
    listBox.replaceChildren(AV.table(["Key", "Value", "Used by", "Updated", "Set or rotate", ""],
      creds.map((c) => el("tr", {data: {key: c.key}},
        el("td", {}, el("b", {class: "mono"}, c.key), c.description ? el("div", {class: "muted"}, c.description)
          : null),
        el("td", {}, c.has_value ? badge("v" + c.version, "good") : badge("no value", "warn")),
        el("td", {}, (c.used_by || []).length ? c.used_by.join(", ") : el("span", {class: "muted"}, "unused")),
        el("td", {class: "hide-narrow"}, when(c.updated_at), el("div", {class: "muted"}, c.updated_by || "")),
        el("td", {}, valueForm(c)),
        el("td", {}, el("button", {type: "button", class: "small danger", on: {click: () => remove(c)}},
          "Delete"))))));
  }
  const key = el("input", {id: "cred-key", required: true, placeholder: "OPENAI_API_KEY",
    pattern: "[A-Z][A-Z0-9_]*", maxLength: 128});
  const desc = el("input", {id: "cred-description", maxLength: 500, placeholder: "optional"});
  const value = masked("cred-value", "Value");
  value.required = true;
  const form = el("form", {class: "inline", id: "credential-form"},
    AV.field("Key", key), AV.field("Value", value, "Write-only."), AV.field("Description", desc),
    el("button", {type: "submit", class: "primary"}, "Save"));
  form.addEventListener("submit", async (ev) => {
    ev.preventDefault();
    const body = {value: value.value};
    if (desc.value) body.description = desc.value;
    value.value = "";
    const r = await api("PUT", vaultPath(vault, "/credentials/" + enc(key.value)), body);
    if (!r.ok) { AV.fail(r); return; }
    notify(r.data.key + " saved (version " + r.data.version + ")."); form.reset(); await load();
  });
  main.append(listBox, AV.card("Add a credential", form));
  await load();
});
