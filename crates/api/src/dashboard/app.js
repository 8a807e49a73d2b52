// The operator console: a small single-page app over the admin API.
//
// The access token lives in this closure only (never in the URL, cookies or
// storage); every call sends it as a bearer token. Everything the API
// returns is put on the page as text nodes, never parsed as HTML. Views
// refresh themselves every few seconds while they are shown.
"use strict";
(() => {
  const API = "/api/v1";
  const REFRESH_MS = 3000;
  let token = null;
  let timer = null;
  let renderSeq = 0;

  const $ = (id) => document.getElementById(id);

  // el("td", {class: "num"}, "text", childNode, ...)
  function el(tag, attrs, ...children) {
    const e = document.createElement(tag);
    for (const [k, v] of Object.entries(attrs || {})) {
      if (v === undefined || v === null || v === false) continue;
      if (k.startsWith("on")) e.addEventListener(k.slice(2), v);
      else e.setAttribute(k, v === true ? "" : String(v));
    }
    for (const c of children.flat()) {
      if (c === undefined || c === null) continue;
      e.appendChild(typeof c === "string" || typeof c === "number" ? document.createTextNode(String(c)) : c);
    }
    return e;
  }
  const svg = (tag, attrs) => {
    const e = document.createElementNS("http://www.w3.org/2000/svg", tag);
    for (const [k, v] of Object.entries(attrs || {})) e.setAttribute(k, String(v));
    return e;
  };

  class ApiError extends Error {
    constructor(status, detail) {
      super(detail);
      this.status = status;
    }
  }

  async function api(method, path, { signOutOn401 = true } = {}) {
    const resp = await fetch(API + path, {
      method,
      headers: { Authorization: "Bearer " + token, Accept: "application/json" },
      cache: "no-store",
      credentials: "omit",
    });
    if (resp.status === 401 && signOutOn401) {
      signOut("Your token was refused (expired or revoked). Sign in again.");
      throw new ApiError(401, "signed out");
    }
    if (!resp.ok) {
      let detail = resp.statusText;
      try {
        const p = await resp.json();
        detail = p.detail || p.title || detail;
      } catch (_) { /* not a problem document */ }
      throw new ApiError(resp.status, detail);
    }
    return resp.status === 204 ? null : resp.json();
  }

  const when = (t) => (t ? new Date(t).toLocaleString() : "—");
  const ago = (t) => {
    if (!t) return "—";
    const s = Math.round((Date.now() - new Date(t).getTime()) / 1000);
    if (Math.abs(s) < 90) return s >= 0 ? `${s} s ago` : `in ${-s} s`;
    const m = Math.round(s / 60);
    if (Math.abs(m) < 90) return m >= 0 ? `${m} min ago` : `in ${-m} min`;
    return when(t);
  };
  const stateBadge = (s) => el("span", { class: `state state-${s}` }, s);
  const jobLink = (id) => el("a", { href: `#/jobs/${id}`, class: "mono" }, id);

  // Keys whose values are never shown, whatever the job kind.
  const SECRET = /token|secret|password|passwd|code|credential|authorization|api[_-]?key/i;
  function redact(v) {
    if (Array.isArray(v)) return v.map(redact);
    if (v && typeof v === "object") {
      return Object.fromEntries(Object.entries(v).map(([k, x]) => [k, SECRET.test(k) ? "[redacted]" : redact(x)]));
    }
    return v;
  }

  function setStatus(text) {
    $("status").textContent = text;
  }

  // A modal confirmation; resolves true on "Confirm".
  function confirmAction(text, verb) {
    const d = $("confirm");
    $("confirm-text").textContent = text;
    $("confirm-yes").textContent = verb;
    return new Promise((resolve) => {
      d.addEventListener("close", () => resolve(d.returnValue === "ok"), { once: true });
      d.returnValue = "";
      d.showModal();
      $("confirm-no").focus();
    });
  }

  async function act(text, verb, method, path, after) {
    if (!(await confirmAction(text, verb))) return;
    try {
      await api(method, path);
      setStatus(`${verb}: done`);
      if (after) after();
      else render("action");
    } catch (e) {
      if (e.status !== 401) showError(`${verb} failed: ${e.message}`);
    }
  }

  function showError(text) {
    const box = $("view").querySelector(".view-error");
    if (box) box.textContent = text;
  }

  // ---- views ------------------------------------------------------------

  function chart(points) {
    // 60 one-minute bars: succeeded (green) with failed (red) on top.
    const W = 600, H = 90;
    const max = Math.max(1, ...points.map((p) => p.succeeded + p.failed));
    const g = svg("svg", { class: "chart", viewBox: `0 0 ${W} ${H}`, preserveAspectRatio: "none", role: "img" });
    const bw = W / 60;
    points.forEach((p, i) => {
      const ok = (p.succeeded / max) * (H - 4);
      const bad = (p.failed / max) * (H - 4);
      if (ok > 0) g.appendChild(svg("rect", { class: "ok", x: i * bw + 0.5, y: H - ok, width: bw - 1, height: ok }));
      if (bad > 0) g.appendChild(svg("rect", { class: "bad", x: i * bw + 0.5, y: H - ok - bad, width: bw - 1, height: bad }));
    });
    return g;
  }

  function lastHour(since, rows) {
    const start = Math.floor(new Date(since).getTime() / 60000) + 1;
    const points = Array.from({ length: 60 }, () => ({ succeeded: 0, failed: 0 }));
    for (const r of rows) {
      const i = Math.floor(new Date(r.minute).getTime() / 60000) - start;
      if (i >= 0 && i < 60) points[i] = { succeeded: r.succeeded, failed: r.failed };
    }
    return points;
  }

  const STATES = ["scheduled", "available", "running", "retryable", "succeeded", "failed", "cancelled"];

  async function queuesView() {
    const [queues, tp] = await Promise.all([api("GET", "/admin/queues"), api("GET", "/admin/queues/throughput")]);
    const cards = el("div", { class: "cards" });
    for (const q of queues.data) {
      const rows = tp.data.filter((r) => r.queue === q.queue);
      const ok = rows.reduce((a, r) => a + r.succeeded, 0);
      const bad = rows.reduce((a, r) => a + r.failed, 0);
      const rate = ok + bad ? ((100 * bad) / (ok + bad)).toFixed(1) : "0.0";
      const points = lastHour(tp.since, rows);
      const title = `${q.queue}: ${ok} succeeded and ${bad} failed in the last hour`;
      const c = chart(points);
      c.appendChild(Object.assign(svg("title"), { textContent: title }));
      const toggle = q.paused
        ? el("button", { type: "button", class: "secondary", "data-action": "resume", "data-queue": q.queue,
            onclick: () => act(`Resume queue ${q.queue}? Workers start claiming its jobs again.`, "Resume", "POST", `/admin/queues/${encodeURIComponent(q.queue)}/resume`) }, "Resume")
        : el("button", { type: "button", class: "secondary", "data-action": "pause", "data-queue": q.queue,
            onclick: () => act(`Pause queue ${q.queue}? Running jobs finish; no new ones start.`, "Pause", "POST", `/admin/queues/${encodeURIComponent(q.queue)}/pause`) }, "Pause");
      cards.appendChild(el("article", { class: "card", "data-queue": q.queue, "aria-label": `Queue ${q.queue}` },
        el("h3", {}, el("span", {}, q.queue, " ", q.paused ? el("span", { class: "paused", "data-paused": "true" }, "(paused)") : null), toggle),
        el("table", {},
          el("thead", {}, el("tr", {}, STATES.map((s) => el("th", { class: "num", scope: "col" }, s)))),
          el("tbody", {}, el("tr", {}, STATES.map((s) =>
            el("td", { class: "num", "data-state": s },
              el("a", { href: `#/jobs?queue=${encodeURIComponent(q.queue)}&state=${s}` }, String(q.states[s] || 0))))))),
        el("p", { class: "legend" }, "Last hour, per minute: ", el("span", { class: "ok" }, `■ ${ok} succeeded`), " ",
          el("span", { class: "bad" }, `■ ${bad} failed`), ` — failure rate ${rate} %`),
        c,
        el("p", { class: "axis", "aria-hidden": "true" }, el("span", {}, "60 min ago"), el("span", {}, "now"))));
    }
    if (!queues.data.length) cards.appendChild(el("p", { class: "muted" }, "No jobs yet."));
    return [el("h2", {}, "Queues"), cards];
  }

  function params() {
    const h = location.hash;
    const i = h.indexOf("?");
    return new URLSearchParams(i < 0 ? "" : h.slice(i + 1));
  }

  const FILTERS = ["queue", "kind", "state", "connection_id", "owner"];

  async function jobsView() {
    const p = params();
    const q = new URLSearchParams();
    for (const f of FILTERS) if (p.get(f)) q.set(f, p.get(f));
    if (p.get("cursor")) q.set("cursor", p.get("cursor"));
    q.set("limit", "50");
    const page = await api("GET", "/jobs?" + q.toString());
    const form = el("form", { class: "filters", "aria-label": "Filter jobs",
      onsubmit: (ev) => {
        ev.preventDefault();
        const n = new URLSearchParams();
        for (const f of FILTERS) {
          const v = form.elements[f].value.trim();
          if (v) n.set(f, v);
        }
        location.hash = "#/jobs?" + n.toString();
      } },
      el("label", {}, "Queue", el("input", { name: "queue", value: p.get("queue") || "", size: 12 })),
      el("label", {}, "Kind", el("select", { name: "kind" }, ["", "sync", "token_refresh"].map((k) =>
        el("option", { value: k, selected: p.get("kind") === k }, k || "any")))),
      el("label", {}, "State", el("select", { name: "state" }, ["", ...STATES].map((s) =>
        el("option", { value: s, selected: p.get("state") === s }, s || "any")))),
      el("label", {}, "Connection", el("input", { name: "connection_id", value: p.get("connection_id") || "", size: 36 })),
      el("label", {}, "Owner", el("input", { name: "owner", value: p.get("owner") || "", size: 16 })),
      el("button", { type: "submit" }, "Filter"));
    const table = el("table", { "aria-label": "Jobs" },
      el("thead", {}, el("tr", {}, ["Job", "Queue", "Kind", "State", "Attempt", "Owner", "Created", "Last error"].map((h) => el("th", { scope: "col" }, h)))),
      el("tbody", {}, page.data.map((j) => el("tr", { "data-job": j.id },
        el("td", {}, jobLink(j.id)), el("td", {}, j.queue), el("td", {}, j.kind), el("td", {}, stateBadge(j.state)),
        el("td", { class: "num" }, `${j.attempt}/${j.max_attempts}`), el("td", {}, j.owner || "—"),
        el("td", { title: when(j.created_at) }, ago(j.created_at)),
        el("td", {}, j.last_error ? String(j.last_error.error || "").slice(0, 120) : "")))));
    const more = [];
    if (p.get("cursor")) {
      const first = new URLSearchParams(p);
      first.delete("cursor");
      more.push(el("a", { href: "#/jobs?" + first.toString() }, "Newest"));
    }
    if (page.next_cursor) {
      const next = new URLSearchParams(p);
      next.set("cursor", page.next_cursor);
      more.push(el("a", { href: "#/jobs?" + next.toString(), rel: "next" }, "Older →"));
    }
    return [el("h2", {}, "Jobs"), form, page.data.length ? table : el("p", { class: "muted" }, "No jobs match."), el("p", { class: "actions" }, more)];
  }

  // Why a pending job is not running yet, in words.
  function whyWaiting(j, queue) {
    const pending = ["scheduled", "available", "retryable"].includes(j.state);
    if (!pending) return null;
    const reasons = [];
    if (queue && queue.paused) reasons.push(`its queue ${j.queue} is paused`);
    if (j.waiting && j.waiting.reason) {
      const words = {
        provider_unavailable: "its provider is unavailable (circuit breaker open)",
        provider_rate_limited: "its provider asked us to slow down",
        provider_budget: "its provider's request budget is spent",
        connection_rate_limited: "its connection's rate limit is reached",
      };
      reasons.push(`${words[j.waiting.reason] || j.waiting.reason}, until ${when(j.waiting.until)}`);
    }
    if (new Date(j.run_at).getTime() > Date.now()) {
      reasons.push(j.state === "retryable" ? `attempt ${j.attempt} failed; it retries ${ago(j.run_at)}` : `it is scheduled for ${when(j.run_at)}`);
    }
    if (!reasons.length) reasons.push("it is due and waits for a free worker");
    return "Waiting: " + reasons.join("; ") + ".";
  }

  async function jobView(id) {
    const [j, audit, queues] = await Promise.all([
      api("GET", `/jobs/${encodeURIComponent(id)}`),
      api("GET", `/admin/jobs/${encodeURIComponent(id)}/audit`),
      api("GET", "/admin/queues"),
    ]);
    const queue = queues.data.find((q) => q.queue === j.queue);
    const why = whyWaiting(j, queue);
    const finished = ["succeeded", "failed", "cancelled"].includes(j.state);
    const buttons = [];
    if (j.state === "failed" || j.state === "cancelled") {
      buttons.push(el("button", { type: "button", id: "retry", onclick: () => act(`Run job ${j.id} again? It gets one more attempt (its earlier errors stay listed).`, "Retry", "POST", `/admin/jobs/${j.id}/retry`) }, "Retry"));
    }
    if (!finished) {
      buttons.push(el("button", { type: "button", id: "cancel", class: "danger", onclick: () => act(`Cancel job ${j.id}? A running sync stops at its next page and commits nothing.`, "Cancel job", "POST", `/jobs/${j.id}/cancel`) }, "Cancel"));
    }
    if (finished) {
      buttons.push(el("button", { type: "button", id: "discard", class: "danger", onclick: () => act(`Delete job ${j.id} for good? Its audit records stay.`, "Discard", "DELETE", `/admin/jobs/${j.id}`, () => { location.hash = "#/jobs"; }) }, "Discard"));
    }
    const errors = Array.isArray(j.errors) ? j.errors : [];
    return [
      el("p", {}, el("a", { href: "#/jobs" }, "← Jobs")),
      el("h2", {}, "Job ", el("span", { class: "mono" }, j.id)),
      el("dl", { class: "kv" },
        el("dt", {}, "State"), el("dd", { id: "job-state", "data-state": j.state }, stateBadge(j.state), j.cancel_requested ? " (cancel requested)" : ""),
        el("dt", {}, "Queue / kind"), el("dd", {}, `${j.queue} / ${j.kind}`),
        el("dt", {}, "Connection"), el("dd", { class: "mono" }, j.connection_id || "—"),
        el("dt", {}, "Attempt"), el("dd", {}, `${j.attempt} of ${j.max_attempts}`),
        el("dt", {}, "Priority"), el("dd", {}, String(j.priority)),
        el("dt", {}, "Created"), el("dd", {}, when(j.created_at)),
        el("dt", {}, "Run at"), el("dd", {}, when(j.run_at)),
        el("dt", {}, "Started"), el("dd", {}, when(j.started_at)),
        el("dt", {}, "Finished"), el("dd", {}, when(j.finished_at))),
      why ? el("p", { class: "why", id: "why" }, why) : null,
      el("div", { class: "actions" }, buttons),
      el("h3", {}, "Arguments"),
      el("pre", {}, JSON.stringify(redact(j.args || { connection_id: j.connection_id }), null, 2)),
      j.progress ? [el("h3", {}, "Progress"), el("pre", {}, JSON.stringify(j.progress, null, 2))] : null,
      el("h3", {}, `Attempts with errors (${errors.length})`),
      errors.length
        ? el("table", { "aria-label": "Errors" }, el("thead", {}, el("tr", {}, ["Attempt", "At", "Error"].map((h) => el("th", { scope: "col" }, h)))),
            el("tbody", {}, errors.map((e) => el("tr", {}, el("td", { class: "num" }, String(e.attempt)), el("td", {}, when(e.at)), el("td", {}, String(e.error))))))
        : el("p", { class: "muted" }, "None."),
      el("h3", {}, `Audit trail (${audit.data.length})`),
      el("table", { "aria-label": "Audit trail" },
        el("thead", {}, el("tr", {}, ["At", "Action", "Phase", "Outcome", "Actor", "Reason"].map((h) => el("th", { scope: "col" }, h)))),
        el("tbody", {}, audit.data.map((r) => el("tr", {}, el("td", {}, when(r.created_at)), el("td", {}, r.action), el("td", {}, r.phase),
          el("td", {}, r.outcome), el("td", {}, r.actor), el("td", {}, r.reason || ""))))),
    ];
  }

  async function providersView() {
    const p = await api("GET", "/admin/providers");
    return [el("h2", {}, "Providers"),
      el("table", { "aria-label": "Providers" },
        el("thead", {}, el("tr", {}, ["Provider", "Configured", "Breaker", "Since", "Probe at", "Paused until", "Snoozed jobs", "Budget", "Rate now", "In flight", "Reason"].map((h) => el("th", { scope: "col" }, h)))),
        el("tbody", {}, p.data.map((r) => el("tr", { "data-provider": r.provider },
          el("td", {}, r.provider), el("td", {}, r.configured ? "yes" : "no"),
          el("td", {}, el("span", { class: `state ${r.breaker === "closed" ? "state-succeeded" : "state-failed"}` }, r.breaker)),
          el("td", {}, ago(r.changed_at)), el("td", {}, when(r.probe_at)), el("td", {}, when(r.paused_until)),
          el("td", { class: "num" }, String(r.snoozed_jobs)),
          el("td", {}, r.budget ? `${r.budget.requests_per_sec}/s, burst ${r.budget.burst}${r.budget.concurrency ? `, ${r.budget.concurrency} at once` : ""}` : "none"),
          el("td", { class: "num" }, r.current_rate == null ? "—" : r.current_rate.toFixed(1) + "/s"),
          el("td", { class: "num" }, r.in_flight == null ? "—" : String(r.in_flight)),
          el("td", {}, r.reason || ""))))),
    ];
  }

  async function connectionsView() {
    const status = params().get("status") ?? "reauth_required";
    const c = await api("GET", "/admin/connections?" + new URLSearchParams(status ? { status } : {}).toString());
    const select = el("select", { name: "status", "aria-label": "Status",
      onchange: () => { location.hash = "#/connections?status=" + encodeURIComponent(select.value); } },
      ["reauth_required", "active", "pending", "revoked", "error", ""].map((s) => el("option", { value: s, selected: s === status }, s || "any")));
    return [el("h2", {}, "Connections"),
      el("form", { class: "filters", onsubmit: (e) => e.preventDefault() }, el("label", {}, "Status", select)),
      c.data.length
        ? el("table", { "aria-label": "Connections" },
            el("thead", {}, el("tr", {}, ["Connection", "User", "Provider", "Status", "Last sync", "Refresh token expires", "Warned"].map((h) => el("th", { scope: "col" }, h)))),
            el("tbody", {}, c.data.map((r) => el("tr", {},
              el("td", {}, el("a", { class: "mono", href: `#/jobs?connection_id=${r.id}` }, r.id)), el("td", {}, r.user_id), el("td", {}, r.provider),
              el("td", {}, r.status), el("td", {}, ago(r.last_sync_at)), el("td", {}, when(r.refresh_token_expires_at)), el("td", {}, when(r.reauth_warned_at))))))
        : el("p", { class: "muted" }, "No connection in this status.")];
  }

  async function schedulerView() {
    const s = await api("GET", "/scheduler/cycles?limit=30");
    const l = s.leader;
    return [el("h2", {}, "Scheduler"),
      el("p", { id: "leader" }, l
        ? (l.live ? `Leader: ${l.holder} (term ${l.term}) since ${when(l.acquired_at)}, lease until ${when(l.expires_at)}.`
                  : `Nobody leads right now (the last leader, ${l.holder}, let its lease lapse at ${when(l.expires_at)}).`)
        : "No scheduler has run yet."),
      el("table", { "aria-label": "Recent ticks" },
        el("thead", {}, el("tr", {}, ["Cycle", "Tick", "Leader", "Started", "Finished", "Enqueued", "Flagged"].map((h) => el("th", { scope: "col" }, h)))),
        el("tbody", {}, s.data.map((t) => el("tr", {}, el("td", {}, t.cycle), el("td", {}, when(t.tick)), el("td", {}, t.leader),
          el("td", {}, when(t.started_at)), el("td", {}, when(t.finished_at)), el("td", { class: "num" }, String(t.enqueued)), el("td", { class: "num" }, String(t.flagged))))))];
  }

  // ---- routing ----------------------------------------------------------

  function route() {
    const path = location.hash.replace(/^#\/?/, "").split("?")[0];
    const [view, id] = path.split("/");
    switch (view) {
      case "jobs": return id ? ["jobs", () => jobView(id)] : ["jobs", jobsView];
      case "providers": return ["providers", providersView];
      case "connections": return ["connections", connectionsView];
      case "scheduler": return ["scheduler", schedulerView];
      default: return ["queues", queuesView];
    }
  }

  // `tick`: a periodic refresh, which waits while someone types in the
  // view's form; anything else (navigation, an action) renders at once.
  async function render(why) {
    if (!token) return;
    const seq = ++renderSeq;
    const [name, view] = route();
    for (const a of document.querySelectorAll("#nav a")) {
      if (a.dataset.view === name) a.setAttribute("aria-current", "page");
      else a.removeAttribute("aria-current");
    }
    let content;
    try {
      content = await view();
    } catch (e) {
      if (e.status === 401) return;
      content = [el("p", { class: "error" }, `Could not load this view: ${e.message}`)];
    }
    if (seq !== renderSeq || !token) return; // a newer render or a sign-out won
    const root = $("view");
    // Keep focus and typed text in the filters while the view refreshes.
    const active = document.activeElement;
    if (why === "tick" && active && root.contains(active) && ["INPUT", "SELECT"].includes(active.tagName)) return schedule();
    root.replaceChildren(el("p", { class: "error view-error", role: "alert" }), ...[content].flat(2).filter(Boolean));
    setStatus(`Updated ${new Date().toLocaleTimeString()}`);
    schedule();
  }

  function schedule() {
    clearTimeout(timer);
    timer = setTimeout(() => { if (!$("confirm").open) render("tick"); else schedule(); }, REFRESH_MS);
  }

  function signOut(message) {
    token = null;
    clearTimeout(timer);
    $("view").replaceChildren();
    $("view").hidden = true;
    $("nav").hidden = true;
    $("sign-in").hidden = false;
    $("sign-in-error").textContent = message || "";
    $("token").value = "";
    $("token").focus();
  }

  async function signIn(ev) {
    ev.preventDefault();
    const candidate = $("token").value.trim();
    $("token").value = "";
    $("sign-in-error").textContent = "";
    token = candidate;
    try {
      await api("GET", "/admin/queues", { signOutOn401: false });
    } catch (e) {
      token = null;
      $("sign-in-error").textContent = e.status === 403
        ? "This token is not an operator's: the console is for operators only."
        : e.status === 401 ? "This token was not accepted (malformed, expired or signed by another key)."
        : `Could not sign in: ${e.message}`;
      return;
    }
    $("sign-in").hidden = true;
    $("nav").hidden = false;
    $("view").hidden = false;
    if (!location.hash) location.hash = "#/queues";
    render("nav");
    $("main").focus();
  }

  document.addEventListener("DOMContentLoaded", () => {
    $("sign-in-form").addEventListener("submit", signIn);
    $("sign-out").addEventListener("click", () => signOut("Signed out."));
    window.addEventListener("hashchange", () => render("nav"));
    $("token").focus();
  });
})();
