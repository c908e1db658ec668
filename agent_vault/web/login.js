// /ui/login: email + password; the server sets the av_ui cookie (HttpOnly, SameSite=Strict).
"use strict";
AV.page("login", async ({main}) => {
  const {el, api, why} = AV;
  const params = new URLSearchParams(location.search);
  const next = params.get("next") || "";
  const target = /^\/ui\/[A-Za-z0-9._~\/-]*$/.test(next) ? next : "/ui/";
  const me = await api("GET", "/v1/auth/me");
  if (me.ok && me.data.kind === "user") { location.replace(target); return; }
  const email = el("input", {type: "email", id: "email", autocomplete: "username", required: true});
  const password = el("input", {type: "password", id: "password", autocomplete: "current-password",
    required: true});
  const error = el("p", {class: "bad", id: "login-error", role: "alert"});
  const form = el("form", {id: "login-form"},
    AV.field("Email", email), AV.field("Password", password), error,
    el("button", {type: "submit", class: "primary", id: "login-submit"}, "Log in"));
  form.addEventListener("submit", async (ev) => {
    ev.preventDefault();
    const r = await api("POST", "/v1/auth/login",
      {email: email.value, password: password.value, label: "web console"});
    password.value = "";
    if (!r.ok) { error.replaceChildren(AV.text(r.status === 401 ? r.data.message : why(r))); return; }
    location.replace(target);
  });
  main.append(el("div", {class: "login-box card"},
    el("h1", {}, "agent-vault"),
    el("p", {class: "muted"}, "Log in with the account you made with ", el("code", {}, "agent-vault init"), "."),
    form,
    el("p", {class: "muted"}, "The CLI logs in with ", el("code", {}, "agent-vault auth login"), ".")));
  email.focus();
});
