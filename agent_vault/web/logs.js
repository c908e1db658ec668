// /ui/vaults/{v}/logs: the live request log. The newest 100 records first, then a poll every second with
// after=<last seq> (bounded: at most MAX_ROWS rows stay on the page). Filters by agent, host, decision and
// status; a detail pane shows the selected record (records hold names, never values).
"use strict";
AV.page("logs", async ({main, vault}) => {
  const {el, api, badge, vaultPath} = AV;
  const MAX_ROWS = 500, POLL_MS = 1000;
  main.append(AV.heading("Live log: " + vault, "Every request agents make through the proxy, as it happens."));
  const f = {
    agent: el("input", {id: "f-agent", placeholder: "agent name"}),
    host: el("input", {id: "f-host", placeholder: "api.github.com"}),
    decision: AV.select("f-decision", [["", "any"], ["injected", "injected"], ["denied", "denied"],
      ["error", "error"], ["passthrough", "passthrough"], ["unmatched_passthrough", "unmatched passthrough"],
      ["tunnel", "tunnel"], ["would_deny", "would deny (dry run)"]], ""),
    status: el("input", {id: "f-status", type: "number", min: 100, max: 599, placeholder: "e.g. 403"}),
  };
  const live = el("span", {class: "live", id: "live"}, "live");
  const pause = el("button", {type: "button", class: "small ghost", id: "pause"}, "Pause");
  const filters = el("form", {class: "filters", id: "filters"},
    AV.field("Agent", f.agent), AV.field("Host", f.host), AV.field("Decision", f.decision),
    AV.field("Status", f.status), el("button", {type: "submit", class: "small"}, "Apply"), live, pause);
  const tbody = el("tbody", {id: "log-rows"});
  const detail = el("div", {class: "card detail", id: "detail"},
    el("p", {class: "muted"}, "Select a request to see its details."));
  const emptyNote = el("div", {id: "log-empty"}, AV.empty("No requests yet.",
    "Run an agent through the proxy (agent-vault vault run -- CMD) and its requests appear here within a second."));
  const tableBox = el("div", {class: "table-wrap"}, el("table", {},
    el("thead", {}, el("tr", {}, ["Time", "Agent", "Request", "Service", "Decision", "Status"].map((h) =>
      el("th", {}, h)))), tbody));
  main.append(filters, el("div", {class: "split"}, el("div", {}, emptyNote, tableBox), detail));

  let cursor = null, paused = false, generation = 0;
  const kind = {injected: "good", denied: "bad", error: "bad", would_deny: "warn"};
  function query(extra) {
    const q = new URLSearchParams({limit: "100"});
    if (f.agent.value.trim()) q.set("agent", f.agent.value.trim());
    if (f.host.value.trim()) q.set("host", f.host.value.trim());
    if (f.decision.value) q.set("decision", f.decision.value);
    if (f.status.value) q.set("status", f.status.value);
    for (const [k, v] of Object.entries(extra || {})) q.set(k, v);
    return vaultPath(vault, "/logs?" + q.toString());
  }
  function show(rec, tr) {
    for (const x of tbody.querySelectorAll("tr.selected")) x.classList.remove("selected");
    tr.classList.add("selected");
    const rows = Object.keys(rec).sort().filter((k) => rec[k] !== null && rec[k] !== "")
      .map((k) => [el("dt", {}, k), el("dd", {class: "mono"},
        typeof rec[k] === "object" ? JSON.stringify(rec[k]) : String(rec[k]))]);
    detail.replaceChildren(el("h2", {}, "Request #" + rec.seq), el("dl", {}, rows.flat()));
  }
  function rowOf(rec, fresh) {
    const target = rec.method === "CONNECT" ? "CONNECT " + rec.host + ":" + rec.port
      : (rec.method || "") + " " + (rec.host || "") + (rec.path || "");
    const tr = el("tr", {class: "clickable" + (fresh ? " fresh" : ""), data: {seq: String(rec.seq)}},
      el("td", {class: "mono"}, new Date(rec.ts).toLocaleTimeString()),
      el("td", {}, String(rec.actor || "").replace(/^agent:/, "")),
      el("td", {class: "mono"}, target),
      el("td", {}, rec.service || ""),
      el("td", {}, badge(rec.decision || rec.kind, kind[rec.decision] || ""),
        rec.error ? el("div", {class: "muted"}, rec.error) : null),
      el("td", {}, rec.status === null || rec.status === undefined ? "" : String(rec.status)));
    tr.addEventListener("click", () => show(rec, tr));
    return tr;
  }
  function add(records, fresh) {
    for (const rec of records) {
      if (!String(rec.kind || "").startsWith("proxy.")) continue;
      tbody.prepend(rowOf(rec, fresh));
    }
    while (tbody.children.length > MAX_ROWS) tbody.lastChild.remove();
    emptyNote.hidden = tbody.children.length > 0;
  }
  async function reload() {
    const mine = ++generation;
    const r = await api("GET", query());
    if (mine !== generation) return;
    if (!r.ok) { AV.fail(r); return; }
    tbody.replaceChildren();
    add(r.data.logs, false);
    cursor = r.data.logs.length ? r.data.logs[r.data.logs.length - 1].seq : (r.data.latest_seq || 0);
  }
  async function poll() {
    if (!paused && cursor !== null && !document.hidden) {
      const mine = generation;
      const r = await api("GET", query({after: String(cursor)}));
      if (mine === generation && r.ok) {
        add(r.data.logs, true);
        if (r.data.logs.length) cursor = r.data.logs[r.data.logs.length - 1].seq;
      }
    }
    setTimeout(poll, POLL_MS);
  }
  filters.addEventListener("submit", (ev) => { ev.preventDefault(); reload(); });
  pause.addEventListener("click", () => {
    paused = !paused;
    pause.textContent = paused ? "Resume" : "Pause";
    live.classList.toggle("paused", paused);
    live.textContent = paused ? "paused" : "live";
  });
  await reload();
  setTimeout(poll, POLL_MS);
});
