// /ui/vaults/{v}/settings: unmatched-host policy, enforcement and rate-limit profile (step-up); the CA
// certificate with per-OS trust instructions; the owner's CA rotation; your login sessions.
"use strict";
AV.page("settings", async ({main, vault, me}) => {
  const {el, api, enc, when, withStepUp, notify, vaultPath} = AV;
  main.append(AV.heading("Settings: " + vault));
  const r = await api("GET", vaultPath(vault));
  const s = r.ok ? r.data.settings : {};
  const policy = AV.select("set-unmatched", [["tunnel", "tunnel: relay unmatched hosts untouched"],
    ["passthrough", "passthrough: intercept, forward without credentials"],
    ["deny", "deny: refuse every unmatched host"]], s.unmatched_policy);
  const enforcement = AV.select("set-enforcement", [["enforce", "enforce"],
    ["dry-run", "dry-run: log what would be denied, let it through"],
    ["learn", "learn: like dry-run, and draft a proposal per unknown host"]], s.enforcement);
  const limits = AV.select("set-rate-limits", [["server", "server: follow the server's --rate-limits"],
    ["default", "default"], ["strict", "strict"], ["off", "off"]], s.rate_limits || "server");
  const form = el("form", {id: "vault-settings"}, AV.field("Unmatched hosts", policy),
    AV.field("Enforcement", enforcement), AV.field("Rate limits", limits),
    el("button", {type: "submit", class: "primary"}, "Save settings"));
  form.addEventListener("submit", async (ev) => {
    ev.preventDefault();
    const res = await withStepUp("Change the settings of " + vault, null, (pw) => api("PATCH", vaultPath(vault),
      {password: pw, unmatched_policy: policy.value, enforcement: enforcement.value, rate_limits: limits.value}));
    if (res && res.ok) notify("Settings saved.");
  });
  main.append(AV.card("Vault", form));

  const pem = "agent-vault-ca.pem";
  const ca = AV.card("The proxy's CA certificate",
    el("p", {}, "Clients must trust this certificate to talk through the proxy. ",
      el("code", {}, "agent-vault vault run"), " does it for the child process by itself; trust it system-wide",
      " only for tools started another way."),
    el("p", {}, el("a", {href: "/v1/mitm/ca.pem", download: pem, id: "ca-download"}, "Download " + pem)),
    el("h3", {}, "macOS"), el("pre", {class: "block"},
      "sudo security add-trusted-cert -d -r trustRoot -k /Library/Keychains/System.keychain " + pem),
    el("h3", {}, "Debian / Ubuntu"), el("pre", {class: "block"},
      "sudo cp " + pem + " /usr/local/share/ca-certificates/agent-vault.crt && sudo update-ca-certificates"),
    el("h3", {}, "Fedora / RHEL"), el("pre", {class: "block"},
      "sudo cp " + pem + " /etc/pki/ca-trust/source/anchors/ && sudo update-ca-trust"),
    el("h3", {}, "Windows (administrator PowerShell)"), el("pre", {class: "block"},
      "certutil -addstore -f Root " + pem),
    el("h3", {}, "One program only"), el("pre", {class: "block"},
      "SSL_CERT_FILE=" + pem + " REQUESTS_CA_BUNDLE=" + pem + " NODE_EXTRA_CA_CERTS=" + pem + " your-tool"));
  if (me.role === "owner") {
    ca.append(el("div", {class: "actions"}, el("button", {type: "button", class: "danger", id: "ca-rotate",
      on: {click: async () => {
        const res = await withStepUp("Rotate the proxy CA",
          "New connections get certificates from a new CA; clients that trust only the old one fail until updated.",
          (pw) => api("POST", "/v1/ca/rotate", {password: pw}));
        if (res && res.ok) notify("New CA: SHA-256 " + res.data.fingerprint_sha256 + ", valid until " +
          when(res.data.not_after) + ".");
      }}}, "Rotate CA")));
  }
  main.append(ca);

  const sessions = el("div", {id: "sessions"});
  async function loadSessions() {
    const res = await api("GET", "/v1/auth/sessions");
    if (!res.ok) { sessions.replaceChildren(el("p", {class: "muted"}, AV.why(res))); return; }
    sessions.replaceChildren(AV.table(["Session", "Created", "Expires", ""], res.data.sessions.map((x) =>
      el("tr", {}, el("td", {}, x.label || "(no label)", x.current ? AV.badge("this browser", "good") : null),
        el("td", {}, when(x.created_at)), el("td", {}, when(x.expires_at)),
        el("td", {}, x.current ? null : el("button", {type: "button", class: "small danger", on: {click: async () => {
          const d = await api("DELETE", "/v1/auth/sessions/" + enc(String(x.id)));
          if (!d.ok) { AV.fail(d); return; }
          notify("Session ended."); await loadSessions();
        }}}, "End"))))));
  }
  main.append(AV.card("Your login sessions", sessions));
  await loadSessions();
  if (me.role === "owner") await people(main, vault);
});

/** The owner's people: users, pending invites (revocable) and new invites (the link is shown once). */
async function people(main, vault) {
  const {el, api, enc, when, withStepUp, notify, showOnce} = AV;
  const box = el("div", {id: "people"});
  const email = el("input", {type: "email", id: "invite-email", required: true});
  const role = AV.select("invite-role", [["member", "member"], ["owner", "owner"]], "member");
  const vrole = AV.select("invite-vault-role", [["member", "member of " + vault], ["admin", "admin of " + vault],
    ["", "no vault grant"]], "member");
  const form = el("form", {class: "inline", id: "invite-form"}, AV.field("Email", email), AV.field("Role", role),
    AV.field("Vault access", vrole), el("button", {type: "submit", class: "primary"}, "Invite"));
  form.addEventListener("submit", async (ev) => {
    ev.preventDefault();
    const vaults = vrole.value ? [{vault: vault, role: vrole.value}] : [];
    const r = await withStepUp("Invite " + email.value, "The invite link is shown once.", (pw) =>
      api("POST", "/v1/users/invites", {password: pw, email: email.value, role: role.value, vaults: vaults}));
    if (!r || !r.ok) return;
    showOnce(box, "Invite link for " + email.value + ":", r.data.invite_url);
    form.reset(); await load();
  });
  async function load() {
    const [users, invites] = await Promise.all([api("GET", "/v1/users"), api("GET", "/v1/users/invites")]);
    const list = el("div", {});
    if (users.ok) {
      list.append(AV.table(["User", "Role", "Since"], users.data.users.map((u) =>
        el("tr", {}, el("td", {}, u.email), el("td", {}, u.role), el("td", {}, when(u.created_at))))));
    }
    if (invites.ok && invites.data.invites.length) {
      list.append(el("h3", {}, "Pending invites"), AV.table(["Email", "Role", "Expires", ""],
        invites.data.invites.map((i) => el("tr", {}, el("td", {}, i.email), el("td", {}, i.role),
          el("td", {}, when(i.expires_at)), el("td", {}, el("button", {type: "button", class: "small danger",
            on: {click: async () => {
              const d = await api("DELETE", "/v1/users/invites/" + enc(String(i.id)));
              if (!d.ok) { AV.fail(d); return; }
              notify("Invite for " + i.email + " revoked."); await load();
            }}}, "Revoke"))))));
    }
    box.querySelectorAll(":scope > div:not(.once)").forEach((n) => n.remove());
    box.append(list);
  }
  main.append(AV.card("People", box, form));
  await load();
}
