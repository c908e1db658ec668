// /ui/invite?token=av_inv_...: the invitee chooses a password (twice; at least 8 characters, the rule of the
// API and of `agent-vault user accept`), accepts the invite, and is logged in as /ui/login does (the server
// sets the av_ui cookie). The token is read once and dropped from the address bar at once; the page is
// served with Referrer-Policy: no-referrer and loads nothing from elsewhere, so it never reaches another
// site. The API cannot tell an invite's email without accepting it: the email shows only once accepted.
"use strict";
const INVITE_TOKEN = new URLSearchParams(location.search).get("token") || "";
if (location.search) history.replaceState(null, "", location.pathname);

AV.page("invite", async ({main}) => {
  const {el, api, why, enc} = AV;
  const box = el("div", {class: "login-box card", id: "invite"}, el("h1", {}, "Join agent-vault"));
  const error = el("p", {class: "bad", id: "invite-error", role: "alert"});
  const say = (message) => error.replaceChildren(AV.text(message));
  main.append(box);
  /** The end of the road for this link: a clear reason and the way on; no form any more. */
  function stop(message, hint) {
    say(message);
    box.replaceChildren(box.firstChild, error, el("p", {class: "muted"}, hint, " ",
      el("a", {href: "/ui/login", id: "invite-login"}, "Go to the login page")));
  }
  if (!INVITE_TOKEN.startsWith("av_inv_")) {
    stop("This page needs the invite link exactly as you received it.", "Open the link again, or ask the owner "
      + "for a new invite.");
    return;
  }
  const attrs = {type: "password", autocomplete: "new-password", required: true};
  const pw = el("input", Object.assign({id: "invite-password"}, attrs));
  const pw2 = el("input", Object.assign({id: "invite-password2"}, attrs));
  const submit = el("button", {type: "submit", class: "primary", id: "invite-submit"}, "Set password and log in");
  const form = el("form", {id: "invite-form"},
    AV.field("New password", pw, "At least 8 characters."), AV.field("Repeat the password", pw2), error, submit);
  form.addEventListener("submit", async (ev) => {
    ev.preventDefault();
    const password = pw.value;
    const again = pw2.value;
    pw.value = ""; pw2.value = "";
    if (password !== again) { say("The two passwords do not match: type them again."); pw.focus(); return; }
    if ([...password].length < 8) { say("The password must be at least 8 characters."); pw.focus(); return; }
    error.replaceChildren();
    submit.disabled = true;
    const r = await api("POST", "/v1/invites/" + enc(INVITE_TOKEN) + "/accept", {password: password});
    if (r.status === 404 || r.status === 409) {
      stop("This invite cannot be used: " + why(r), "An invite works once, for 48 hours.");
      return;
    }
    if (!r.ok) { say(why(r)); submit.disabled = false; pw.focus(); return; }
    const email = r.data.user.email;
    box.replaceChildren(box.firstChild, el("p", {id: "invite-welcome"}, "Welcome, ", el("b", {}, email),
      ". Logging you in..."), error);
    // The answer is a login of its own that a page cannot keep (no cookie): end it, then log in as
    // /ui/login does, so this browser holds one "web console" login.
    await api("POST", "/v1/auth/logout", undefined, {Authorization: "Bearer " + r.data.token});
    const login = await api("POST", "/v1/auth/login", {email: email, password: password, label: "web console"});
    if (!login.ok) {
      stop("Your account is ready, but logging in failed: " + why(login), "Log in with your new password.");
      return;
    }
    location.replace("/ui/");
  });
  box.append(el("p", {class: "muted"}, "You were invited to this agent-vault. Choose your password to finish."),
    form, el("p", {class: "muted"}, "The CLI accepts invites too: ", el("code", {}, "agent-vault user accept URL"),
      "."));
  pw.focus();
});
