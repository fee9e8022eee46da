// streamrec live page: vanilla JS, no build step. Data from the page's server:
// GET /api/user, /api/users, /api/items, /api/state; POST /api/events; and one
// server-sent-event stream (/api/stream?user=U) with "list", "tiles" and "report".
// Every text from the topics goes in with textContent, never as HTML.
"use strict";

const $ = (sel) => document.querySelector(sel);
const ACTIONS = [["click", "click"], ["add_to_cart", "cart"], ["purchase", "buy"]];
const BANDIT_ROWS = 12;

// What a test or a benchmark reads: each action's round trip, from the click to the
// new list on screen (window.streamrecUi.roundTrips).
const ui = (window.streamrecUi = { user: null, roundTrips: [], lists: 0 });
const pending = new Map(); // event_id -> performance.now() at the click
const recentLists = new Map(); // trigger_event_id -> list, for a list that beats the POST
let stream = null;

function el(tag, text, cls) {
  const e = document.createElement(tag);
  if (text !== undefined && text !== null) e.textContent = text;
  if (cls) e.className = cls;
  return e;
}

function fmt(x, digits = 1) {
  return x === null || x === undefined || Number.isNaN(x) ? "–" : Number(x).toFixed(digits);
}

function pct(x) {
  return x === null || x === undefined ? "n/a" : (100 * x).toFixed(2) + "%";
}

async function getJSON(url) {
  const r = await fetch(url);
  if (!r.ok) throw new Error(`${url}: ${r.status}`);
  return r.json();
}

function actions(itemId, recId) {
  const td = el("td", null, "acts");
  for (const [type, label] of ACTIONS) {
    const b = el("button", label, "act");
    b.dataset.type = type;
    b.dataset.item = itemId;
    b.addEventListener("click", () => act(type, itemId, recId));
    td.append(b);
  }
  return td;
}

// --- the shopper ----------------------------------------------------------------

async function openUser(userId) {
  userId = userId.trim();
  if (!userId) return;
  ui.user = userId;
  $("#user").value = userId;
  connect(userId);
  const u = await getJSON(`/api/user?id=${encodeURIComponent(userId)}`);
  if (ui.user !== userId) return;
  $("#user-line").textContent = u.known
    ? `Shopping as ${userId}.`
    : `Shopping as ${userId}: a new shopper (no events yet).`;
  renderRecent(u.recent);
  if (u.list) renderList(u.list);
  else clearList();
}

function newUser() {
  const id = "shopper-" + Math.random().toString(16).slice(2, 8);
  openUser(id);
}

async function act(type, itemId, recId) {
  if (!ui.user) {
    $("#user-line").textContent = "Pick a user first.";
    return;
  }
  const started = performance.now();
  const r = await fetch("/api/events", {
    method: "POST",
    headers: { "Content-Type": "application/json" },
    body: JSON.stringify({ user_id: ui.user, item_id: itemId, type, rec_id: recId || null }),
  });
  const body = await r.json();
  if (!r.ok) {
    $("#roundtrip").textContent = `not sent: ${body.error}`;
    return;
  }
  pending.set(body.event_id, started);
  $("#user-line").textContent = `Shopping as ${ui.user}.`;
  $("#roundtrip").textContent = `${type} ${itemId} sent (${body.event_id}); waiting for the list…`;
  $("#roundtrip").dataset.eventId = body.event_id;
  addRecent({ item_id: itemId, title: titleOf(itemId), type, ts: body.ts });
  const early = recentLists.get(body.event_id);
  if (early) renderList(early);
}

function titleOf(itemId) {
  const cell = document.querySelector(`[data-title-of="${CSS.escape(itemId)}"]`);
  return cell ? cell.textContent : itemId;
}

function clearList() {
  $("#list tbody").replaceChildren();
  $("#list").dataset.recId = "";
  $("#list-meta").textContent = "no list yet: any action asks for one";
}

function renderList(list) {
  ui.lists += 1;
  const tbody = $("#list tbody");
  tbody.replaceChildren();
  for (const item of list.items) {
    const tr = el("tr");
    tr.dataset.item = item.item_id;
    tr.append(el("td", item.rank, "rank"));
    const name = el("td", item.title);
    name.dataset.titleOf = item.item_id;
    name.title = item.item_id;
    tr.append(name, el("td", item.reason || "", "why"), actions(item.item_id, list.rec_id));
    tbody.append(tr);
  }
  const table = $("#list");
  table.dataset.recId = list.rec_id;
  table.dataset.trigger = list.trigger_event_id || "";
  table.classList.remove("fresh");
  void table.offsetWidth; // restart the highlight
  table.classList.add("fresh");
  const meta = $("#list-meta");
  meta.replaceChildren();
  const exp = list.experiment || {};
  const parts = [
    ["latency", `${fmt(list.latency_ms)} ms`],
    ["arm", list.arm || "–"],
    ["variant", exp.variant ? `${exp.name} / ${exp.variant}` : "none"],
    ["model", list.model_version],
    ["ILD", fmt(list.ild, 3)],
  ];
  for (const [k, v] of parts) {
    meta.append(`${k} `, el("b", v), "  ·  ");
  }
  meta.append(el("span", list.rec_id, "small"));
  const started = pending.get(list.trigger_event_id);
  if (started !== undefined) {
    pending.delete(list.trigger_event_id);
    // Measured once the frame that shows the list has been painted.
    requestAnimationFrame(() =>
      requestAnimationFrame(() => {
        const ms = performance.now() - started;
        const rt = $("#roundtrip");
        rt.textContent =
          `your action → this list on screen in ${fmt(ms, 0)} ms ` +
          `(event → list in the pipeline: ${fmt(list.latency_ms)} ms)`;
        rt.dataset.eventId = list.trigger_event_id;
        rt.dataset.ms = ms.toFixed(1);
        ui.roundTrips.push({
          event_id: list.trigger_event_id,
          rec_id: list.rec_id,
          ms,
          latency_ms: list.latency_ms,
        });
      }),
    );
  }
}

function addRecent(r) {
  const tbody = $("#recent tbody");
  const tr = el("tr");
  tr.append(el("td", r.type, "rank"), el("td", r.title || r.item_id), actions(r.item_id, null));
  tbody.prepend(tr);
  while (tbody.children.length > 10) tbody.lastChild.remove();
}

function renderRecent(recent) {
  $("#recent tbody").replaceChildren();
  for (const r of [...recent].reverse()) addRecent(r);
}

async function search() {
  const q = $("#search").value;
  const items = await getJSON(`/api/items?q=${encodeURIComponent(q)}&n=12`);
  if ($("#search").value !== q) return;
  const tbody = $("#results tbody");
  tbody.replaceChildren();
  for (const item of items) {
    const tr = el("tr");
    tr.dataset.item = item.item_id;
    const name = el("td", item.title);
    name.dataset.titleOf = item.item_id;
    name.title = item.item_id;
    tr.append(name, actions(item.item_id, null));
    tbody.append(tr);
  }
  $("#results").dataset.query = q;
}

async function refreshUsers() {
  try {
    const users = await getJSON(`/api/users?q=${encodeURIComponent($("#user").value)}`);
    const dl = $("#users");
    dl.replaceChildren(...users.map((u) => Object.assign(el("option"), { value: u })));
  } catch (e) {
    /* the next refresh tries again */
  }
}

// --- the stream -----------------------------------------------------------------

function renderTiles(t) {
  $("#t-events").textContent = fmt(t.events_per_s);
  $("#t-lists").textContent = fmt(t.lists_per_s);
  $("#t-p50").textContent = fmt(t.latency_p50_ms);
  $("#t-p99").textContent = fmt(t.latency_p99_ms);
  $("#t-dlq").textContent = t.dlq;
  $("#t-lag").textContent = `${fmt(t.worker_lag, 0)} / ${fmt(t.dataflow_lag, 0)}`;
  const missing = Object.entries(t.metrics).filter(([, up]) => !up).map(([name]) => name);
  $("#t-note").textContent =
    `${t.events} events, ${t.lists} lists read` +
    (t.bad_records ? `, ${t.bad_records} records skipped` : "") +
    `; latency over the last ${t.latency_lists} lists (60 s)` +
    (t.worker_ild !== null ? `; worker ILD ${fmt(t.worker_ild, 3)}` : "") +
    (missing.length ? `; no /metrics from ${missing.join(" and ")}` : "");
  const bandit = $("#bandit tbody");
  bandit.replaceChildren();
  if (!t.bandit.length) {
    const tr = el("tr");
    const td = el("td", "no bandit traffic (needs an experiments file with policy: bandit)");
    td.colSpan = 5;
    td.className = "muted";
    tr.append(td);
    bandit.append(tr);
  }
  // The busiest (segment, arm) pairs; the rest are counted below the table.
  const rows = [...t.bandit].sort((a, b) => (b.pulls || 0) - (a.pulls || 0) || (b.picks || 0) - (a.picks || 0));
  for (const r of rows.slice(0, BANDIT_ROWS)) {
    const tr = el("tr");
    tr.append(
      el("td", r.segment),
      el("td", r.arm),
      el("td", fmt(r.picks, 0)),
      el("td", fmt(r.pulls, 0)),
      el("td", fmt(r.mean_reward, 3)),
    );
    bandit.append(tr);
  }
  if (rows.length > BANDIT_ROWS) {
    const tr = el("tr");
    const td = el("td", `${rows.length - BANDIT_ROWS} more pairs with fewer pulls`, "muted small");
    td.colSpan = 5;
    tr.append(td);
    bandit.append(tr);
  }
  const latest = $("#latest tbody");
  latest.replaceChildren();
  for (const r of t.latest) {
    const tr = el("tr");
    tr.append(el("td", r.user_id), el("td", r.arm || "–"), el("td", `${fmt(r.latency_ms)} ms`));
    latest.append(tr);
  }
}

// An estimate over its 95% interval, in one cell.
function ci(interval, f) {
  const td = el("td");
  if (!interval || interval.estimate === null) {
    td.textContent = "n/a";
    return td;
  }
  td.append(f(interval.estimate));
  if (interval.low !== null && interval.high !== null) {
    td.append(el("br"), el("span", `[${f(interval.low)}, ${f(interval.high)}]`, "small muted"));
  }
  return td;
}

function renderReport(report) {
  const box = $("#report");
  box.replaceChildren();
  if (!report.experiments.length) {
    box.append(el("p", "No experiment traffic found (run with --experiments FILE).", "muted"));
  }
  for (const exp of report.experiments) {
    box.append(el("p", `Experiment ${exp.experiment}, control ${exp.control}`, "meta"));
    const table = el("table", null, "grid");
    const head = el("tr");
    for (const h of ["variant", "share", "users", "lists", "clicks", "purchases", "CTR", "conversion", "revenue/user"]) {
      head.append(el("th", h));
    }
    table.append(el("thead"), el("tbody"));
    table.tHead.append(head);
    for (const v of exp.variants) {
      const c = v.counts;
      const tr = el("tr");
      tr.append(
        el("td", v.name),
        el("td", `${Math.round(100 * v.expected_share)}%`),
        el("td", c.users),
        el("td", c.lists),
        el("td", c.clicks),
        el("td", c.purchases),
        ci(v.ctr, pct),
        ci(v.conversion, pct),
        ci(v.revenue_per_user, (x) => x.toFixed(2)),
      );
      table.tBodies[0].append(tr);
    }
    box.append(table);
    for (const v of exp.variants) {
      for (const cmp of Object.values(v.lift || {})) {
        const z = cmp.z_test;
        const diff = z.diff === null ? "n/a" : `${(100 * z.diff).toFixed(2)} pp`;
        const rel = z.lift === null ? "" : ` (${(100 * z.lift).toFixed(1)}%)`;
        const p = z.p_value === null ? "n/a" : z.p_value.toPrecision(2);
        const seq = cmp.sequential.p_value === null ? "n/a" : cmp.sequential.p_value.toPrecision(2);
        box.append(
          el(
            "p",
            `${v.name} vs ${exp.control}, ${cmp.metric}: ${diff}${rel}, p ${p} (z-test), ` +
              `${seq} (mSPRT)` + (cmp.significant ? ": significant" : ""),
            "small muted",
          ),
        );
      }
    }
    box.append(el("p", exp.srm.message, exp.srm.mismatch ? "small warn" : "small muted"));
  }
  const m = report.meta;
  box.append(
    el("p", `${m.lists} lists and ${m.outcomes} attributed outcomes read; ${m.invalid_records} invalid records`, "small muted"),
  );
}

function connect(userId) {
  if (stream) stream.close();
  stream = new EventSource(`/api/stream?user=${encodeURIComponent(userId || "")}`);
  stream.onopen = () => {
    $("#conn").textContent = "live";
    $("#conn").className = "conn up";
  };
  stream.onerror = () => {
    $("#conn").textContent = "reconnecting…";
    $("#conn").className = "conn";
  };
  stream.addEventListener("tiles", (e) => renderTiles(JSON.parse(e.data)));
  stream.addEventListener("report", (e) => renderReport(JSON.parse(e.data)));
  stream.addEventListener("list", (e) => {
    const list = JSON.parse(e.data);
    if (list.user_id !== ui.user) return;
    if (list.trigger_event_id) {
      recentLists.set(list.trigger_event_id, list);
      if (recentLists.size > 50) recentLists.delete(recentLists.keys().next().value);
    }
    renderList(list);
  });
}

async function start() {
  $("#user-form").addEventListener("submit", (e) => {
    e.preventDefault();
    openUser($("#user").value);
  });
  $("#new-user").addEventListener("click", newUser);
  $("#user").addEventListener("input", refreshUsers);
  let timer = null;
  $("#search").addEventListener("input", () => {
    clearTimeout(timer);
    timer = setTimeout(search, 150);
  });
  connect(null);
  search();
  refreshUsers();
  setInterval(refreshUsers, 5000);
  try {
    const s = await getJSON("/api/state");
    if (s.tiles && s.tiles.metrics) renderTiles(s.tiles);
    if (s.report) renderReport(s.report);
  } catch (e) {
    /* the stream brings them */
  }
}

start();
