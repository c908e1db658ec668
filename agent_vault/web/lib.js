// agent-vault web console: shared helpers (loaded after inert.js, before the page's own script).
//
// Contract: every string from the API reaches the DOM as a text node through inert() (el() and text());
// nothing is ever parsed as HTML, and no URL is ever built from API text except through
// encodeURIComponent. The console never holds a credential value: value inputs are write-only password
// fields, cleared as soon as the request is sent. Writes carry the av_ui cookie; the browser adds the
// Origin header the server's CSRF guard checks.
"use strict";
const AV = (() => {
  const body = document.body;
  const state = {page: body.dataset.page, vault: body.dataset.vault || "", me: null, vaults: []};
  const $ = (sel, root) => (root || document).querySelector(sel);
  const open = ["login", "invite"].includes(state.page);  // pages used before logging in

  function text(value, keepLines) { return document.createTextNode(inert(value, keepLines)); }
  /** el("a", {href, class}, "text", node...): props are DOM properties; string children go through inert(). */
  function el(tag, props, ...children) {
    const node = document.createElement(tag);
    for (const [k, v] of Object.entries(props || {})) {
      if (v === undefined || v === null || v === false) continue;
      if (k === "class") node.className = v;
      else if (k === "data") Object.assign(node.dataset, v);
      else if (k === "on") for (const [ev, fn] of Object.entries(v)) node.addEventListener(ev, fn);
      else if (k === "attrs") for (const [a, av] of Object.entries(v)) node.setAttribute(a, av);
      else node[k] = v;
    }
    for (const c of children.flat()) {
      if (c === undefined || c === null || c === false) continue;
      node.append(typeof c === "string" || typeof c === "number" ? text(String(c)) : c);
    }
    return node;
  }
  const enc = encodeURIComponent;
  const vaultPath = (v, rest) => "/v1/vaults/" + enc(v) + (rest || "");
  const uiPath = (v, section) => "/ui/vaults/" + enc(v) + "/" + section;

  async function api(method, path, bodyObj, headers) {
    const opt = {method: method, credentials: "same-origin",
      headers: Object.assign({Accept: "application/json"}, headers)};
    if (bodyObj !== undefined) {
      opt.headers["Content-Type"] = "application/json";
      opt.body = JSON.stringify(bodyObj);
    }
    let r;
    try { r = await fetch(path, opt); } catch (e) {
      return {ok: false, status: 0, data: {message: "the server did not answer", hint: "Is it running?"}};
    }
    let data = {};
    try { data = r.status === 204 ? {} : await r.json(); } catch (e) { data = {}; }
    if (r.status === 401 && !open && !path.startsWith("/v1/auth/login")) toLogin();
    return {ok: r.ok, status: r.status, data: data};
  }
  function why(r) {
    const d = r.data || {};
    return (d.message || ("HTTP " + r.status)) + (d.hint ? " (" + d.hint + ")" : "");
  }
  function toLogin() {
    location.assign("/ui/login?next=" + enc(location.pathname));
  }

  // ---- feedback ---------------------------------------------------------------------------------
  function notify(message, bad) {
    const box = $("#notice");
    box.replaceChildren(text(message));
    box.className = bad ? "notice bad" : "notice good";
    box.hidden = false;
    clearTimeout(notify.timer);
    if (!bad) notify.timer = setTimeout(() => { box.hidden = true; }, 6000);
  }
  function fail(r) { notify(why(r), true); return false; }

  /** A modal asking for the caller's password (step-up, SPEC §3.4). Resolves to the password or null. */
  function askPassword(title, detail) {
    return new Promise((resolve) => {
      const input = el("input", {type: "password", autocomplete: "current-password", required: true,
        id: "stepup-password"});
      const form = el("form", {method: "dialog"},
        el("h2", {}, title),
        detail ? el("p", {class: "muted"}, detail) : null,
        el("label", {}, "Your password (confirms this change)", input),
        el("div", {class: "actions"},
          el("button", {type: "submit", class: "primary", id: "stepup-confirm"}, "Confirm"),
          el("button", {type: "button", class: "ghost", on: {click: () => dlg.close("")}}, "Cancel")));
      const dlg = el("dialog", {class: "stepup"}, form);
      form.addEventListener("submit", (ev) => { ev.preventDefault(); dlg.close(input.value ? "ok" : ""); });
      dlg.addEventListener("close", () => {
        const value = dlg.returnValue === "ok" ? input.value : null;
        input.value = "";
        dlg.remove();
        resolve(value);
      });
      document.body.append(dlg);
      dlg.showModal();
      input.focus();
    });
  }
  /** Ask for the password, then call send(password); answers the API result (null when cancelled). */
  async function withStepUp(title, detail, send) {
    const password = await askPassword(title, detail);
    if (password === null) return null;
    const r = await send(password);
    if (!r.ok) fail(r);
    return r;
  }
  function confirmAction(message) { return window.confirm(message); }

  /** Shows a token exactly once with a copy button; "Done" removes it from the page. */
  function showOnce(container, label, secret) {
    const code = el("code", {class: "once-value", id: "once-value"}, secret);
    const copy = el("button", {type: "button", class: "ghost", on: {click: async () => {
      try { await navigator.clipboard.writeText(secret); copy.textContent = "Copied"; } catch (e) {
        const range = document.createRange(); range.selectNodeContents(code);
        getSelection().removeAllRanges(); getSelection().addRange(range);
        copy.textContent = "Selected: press Ctrl+C";
      }
    }}}, "Copy");
    const box = el("div", {class: "once", role: "alert"},
      el("p", {}, el("b", {}, label), " ",
        el("span", {class: "muted"}, "Shown once: it is not stored anywhere you can read it again.")),
      el("div", {class: "once-row"}, code, copy,
        el("button", {type: "button", class: "primary", id: "once-done",
          on: {click: () => box.remove()}}, "Done")));
    container.prepend(box);
    return box;
  }

  // ---- building blocks --------------------------------------------------------------------------
  function card(title, ...children) {
    return el("section", {class: "card"}, title ? el("h2", {}, title) : null, ...children);
  }
  function empty(title, hint, action) {
    return el("div", {class: "empty"}, el("p", {class: "empty-title"}, title),
      hint ? el("p", {class: "muted"}, hint) : null, action || null);
  }
  function table(headers, rows, cls) {
    return el("div", {class: "table-wrap"}, el("table", {class: cls || ""},
      el("thead", {}, el("tr", {}, headers.map((h) => el("th", {}, h)))),
      el("tbody", {}, rows)));
  }
  function badge(label, kind) { return el("span", {class: "badge " + (kind || "")}, label); }
  function when(iso) {
    if (!iso) return "never";
    const d = new Date(iso);
    return isNaN(d) ? String(iso) : d.toLocaleString();
  }
  function field(label, input, help) {
    return el("label", {class: "field"}, el("span", {}, label), input,
      help ? el("small", {class: "muted"}, help) : null);
  }
  function select(id, options, value) {
    return el("select", {id: id}, options.map(([v, label]) =>
      el("option", {value: v, selected: v === value}, label)));
  }
  function heading(title, sub) {
    return el("div", {class: "page-head"}, el("h1", {}, title), sub ? el("p", {class: "muted"}, sub) : null);
  }

  // ---- navigation -------------------------------------------------------------------------------
  function currentVault() {
    const names = state.vaults.map((v) => v.name);
    if (state.vault && names.includes(state.vault)) return state.vault;
    const last = localStorage.getItem("av.vault");
    if (last && names.includes(last)) return last;
    return names.includes("default") ? "default" : (names[0] || "");
  }
  function buildNav() {
    const nav = $("#nav");
    const v = currentVault();
    if (v) localStorage.setItem("av.vault", v);
    const link = (href, label, key, extra) => el("a", {href: href,
      class: key === state.page ? "active" : "", attrs: key === state.page ? {"aria-current": "page"} : {}},
      label, extra || null);
    const pending = (state.vaults.find((x) => x.name === v) || {}).pending_proposals || 0;
    const picker = select("vault-picker", state.vaults.map((x) => [x.name, x.name]), v);
    picker.addEventListener("change", () => {
      localStorage.setItem("av.vault", picker.value);
      const section = ["services", "credentials", "proposals", "logs", "settings"].includes(state.page)
        ? state.page : "services";
      location.assign(uiPath(picker.value, section));
    });
    nav.replaceChildren(
      link("/ui/", "Dashboard", "dashboard"),
      link("/ui/agents", "Agents", "agents"),
      v ? el("span", {class: "nav-vault"}, el("label", {}, "Vault ", picker)) : null,
      v ? link(uiPath(v, "services"), "Services", "services") : null,
      v ? link(uiPath(v, "credentials"), "Credentials", "credentials") : null,
      v ? link(uiPath(v, "proposals"), "Proposals", "proposals",
        pending ? badge(String(pending), "warn") : null) : null,
      v ? link(uiPath(v, "logs"), "Live log", "logs") : null,
      v ? link(uiPath(v, "settings"), "Settings", "settings") : null);
    const logout = el("button", {type: "button", class: "ghost", id: "logout", on: {click: async () => {
      await api("POST", "/v1/auth/logout");
      location.assign("/ui/login");
    }}}, "Log out");
    $("#who").replaceChildren(el("span", {class: "muted"}, state.me.name), logout);
  }

  const pages = {};
  function page(name, render) { pages[name] = render; }
  async function start() {
    const main = $("#app");
    const render = pages[state.page];
    if (!render) return;
    if (!open) {
      const me = await api("GET", "/v1/auth/me");
      if (!me.ok || me.data.kind !== "user") { toLogin(); return; }
      state.me = me.data;
      const vaults = await api("GET", "/v1/vaults");
      state.vaults = vaults.ok ? vaults.data.vaults : [];
      buildNav();
    }
    try {
      await render({main: main, me: state.me, vaults: state.vaults, vault: currentVault(),
        myVault: state.vaults.find((v) => v.name === currentVault()) || null});
    } catch (e) {
      notify("This page failed to load: " + (e && e.message ? e.message : e), true);
    }
    main.setAttribute("aria-busy", "false");
  }
  window.addEventListener("DOMContentLoaded", start);

  return {$, el, text, api, why, fail, notify, askPassword, withStepUp, confirmAction, showOnce, card,
    empty, table, badge, when, field, select, heading, page, enc, vaultPath, uiPath, state};
})();
