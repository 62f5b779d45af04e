// The list pages (overview, tasks, dead letters, deliveries, workers, limits) and the DOM helpers
// every page shares. Every action is one existing API call.

import { call, get, stream } from "/ui/api.js";

/** An element: h("td", {class: "x", "data-label": "Name"}, child, "text", …). */
export function h(tag, attrs, ...children) {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v === undefined || v === null || v === false) continue;
    if (k.startsWith("on")) e.addEventListener(k.slice(2), v);
    else if (v === true) e.setAttribute(k, "");
    else e.setAttribute(k, String(v));
  }
  for (const c of children.flat()) {
    if (c === null || c === undefined) continue;
    e.append(c instanceof Node ? c : document.createTextNode(String(c)));
  }
  return e;
}

/** A table with `columns` ([label, row => cell]) and one row per item (data-id from `id`). */
export function table(test, columns, items, id) {
  const head = h("thead", {}, h("tr", {}, columns.map(([label]) => h("th", { scope: "col" }, label))));
  const rows = items.map((item) => h("tr", { "data-id": id ? id(item) : null },
    columns.map(([label, cell]) => h("td", { "data-label": label }, cell(item)))));
  if (!rows.length) {
    rows.push(h("tr", {}, h("td", { colspan: columns.length, "data-label": "" }, "Nothing here.")));
  }
  return h("table", { "data-test": test }, head, h("tbody", {}, rows));
}

/** A link to a task's page. */
export function taskLink(id, text) {
  return h("a", { href: `#/task/${encodeURIComponent(id)}` }, text || id);
}

/** A status, styled. */
export function status(s) {
  return h("span", { class: `status-${s}` }, s);
}

/** Seconds as a short age: 42s, 5m 3s, 2h 10m, 3d 4h. */
export function age(s) {
  if (s === null || s === undefined) return "–";
  s = Math.round(s);
  if (s < 60) return `${s}s`;
  if (s < 3600) return `${Math.floor(s / 60)}m ${s % 60}s`;
  if (s < 86400) return `${Math.floor(s / 3600)}h ${Math.floor((s % 3600) / 60)}m`;
  return `${Math.floor(s / 86400)}d ${Math.floor((s % 86400) / 3600)}h`;
}

/** A time as the browser's local time. */
export function when(t) {
  return t ? new Date(t).toLocaleString() : "–";
}

/** Asks, then runs `action` and reports; `done` runs after success (e.g. a reload). */
export async function confirmed(ctx, question, action, done) {
  if (!window.confirm(question)) return;
  try {
    await action();
    ctx.say("Done.");
    if (done) await done();
  } catch (e) {
    ctx.say(e.message, true);
  }
}

/** Overview (#/): live through /api/overview/events. */
export async function overview(root, ctx) {
  const body = h("div", {});
  root.append(h("section", { "data-test": "page-overview" }, h("h1", {}, "Overview"), body));
  const paint = (o) => body.replaceChildren(...overviewParts(o));
  paint(await get("/api/overview"));
  ctx.live(true);
  stream("/api/overview/events", ctx.signal, (type, data) => {
    if (type === "overview") paint(JSON.parse(data));
    else if (type === "error") ctx.say(data, true);
  }).catch((e) => { if (!ctx.signal.aborted) ctx.say(e.message, true); })
    .finally(() => ctx.live(false));
}

/** The overview's cards and tables. */
function overviewParts(o) {
  const d = o.deliveries;
  const cards = h("div", { class: "cards" },
    h("div", { class: "card", "data-test": "overview-workers" }, h("b", {}, o.workers_online), "workers online"),
    d ? h("div", { class: "card", "data-test": "overview-deliveries" },
      h("b", {}, `${d.pending} / ${d.dead}`), "deliveries pending / dead") : null);
  const queues = table("overview-queues", [
    ["Assignee", (q) => h("a", { href: `#/tasks?assigned_to=${encodeURIComponent(q.assignee)}` }, q.assignee)],
    ["Priority", (q) => q.priority],
    ["Queued", (q) => q.queued],
    ["Running", (q) => q.running],
    ["Stalled", (q) => q.stalled],
    ["Oldest pending", (q) => age(q.oldest_pending_s)],
    ["Messages", (q) => q.depth],
  ], o.queues, (q) => `${q.assignee}/${q.priority}`);
  const people = table("overview-assignees", [
    ["Assignee", (a) => a.assignee],
    ["Scheduled", (a) => a.scheduled ?? "–"],
    ["Failed (1 h)", (a) => a.failed_last_hour ?? "–"],
    ["Workers", (a) => a.workers_online],
  ], o.assignees, (a) => a.assignee);
  return [cards, h("h2", {}, "Queues"), queues, h("h2", {}, "Assignees"), people,
    h("p", { class: "muted" }, `Updated ${when(o.generated_at)}`)];
}

/** The query of the current hash route (#/tasks?assigned_to=anna). */
export function routeQuery() {
  const q = location.hash.split("?")[1] || "";
  return new URLSearchParams(q);
}

/** Tasks (#/tasks): filters, newest first, "older" paging through X-Next-Cursor. */
export async function tasks(root, ctx) {
  const q = routeQuery();
  const assignee = h("input", { id: "f-assignee", "data-test": "tasks-assignee", value: q.get("assigned_to") || "" });
  const state = h("select", { id: "f-status", "data-test": "tasks-status" },
    ["", "scheduled", "pending", "running", "completed", "failed", "cancelled"].map((s) =>
      h("option", { value: s, selected: s === (q.get("status") || "") }, s || "any")));
  const text = h("input", { id: "f-text", "data-test": "tasks-text", type: "search" });
  const list = h("div", {});
  const older = h("button", { type: "button", class: "secondary", "data-test": "tasks-older", hidden: true }, "Older");
  let loaded = [];
  let cursor = null;
  const paint = () => {
    const t = text.value.trim().toLowerCase();
    const shown = t ? loaded.filter((x) => x.task_name.toLowerCase().includes(t)) : loaded;
    list.replaceChildren(taskTable(shown));
    older.hidden = !cursor;
  };
  const load = async (more) => {
    const p = new URLSearchParams({ assigned_to: assignee.value.trim(), status: state.value, limit: "50" });
    if (more && cursor) p.set("before", cursor);
    try {
      const r = await call("GET", `/api/tasks?${p}`);
      loaded = more ? loaded.concat(r.body) : r.body;
      cursor = r.headers.get("X-Next-Cursor");
      paint();
    } catch (e) { ctx.say(e.message, true); }
  };
  const form = h("form", { class: "filters", onsubmit: (e) => { e.preventDefault(); load(false); } },
    h("div", {}, h("label", { for: "f-assignee" }, "Assignee"), assignee),
    h("div", {}, h("label", { for: "f-status" }, "Status"), state),
    h("div", {}, h("label", { for: "f-text" }, "Name contains (this page)"), text),
    h("button", { type: "submit", "data-test": "tasks-apply" }, "Apply"));
  text.addEventListener("input", paint);
  older.addEventListener("click", () => load(true));
  root.append(h("section", { "data-test": "page-tasks" }, h("h1", {}, "Tasks"), form, list, older));
  await load(false);
}

/** Tasks as a table. */
function taskTable(items) {
  return table("tasks-table", [
    ["Name", (t) => taskLink(t.id, t.task_name)],
    ["Status", (t) => status(t.status)],
    ["Assignee", (t) => t.assigned_to],
    ["Priority", (t) => t.priority],
    ["Kind", (t) => t.kind],
    ["Created", (t) => when(t.created_time)],
  ], items, (t) => t.id);
}

/** Dead letters (#/dead), each with retry. */
export async function dead(root, ctx) {
  const section = h("section", { "data-test": "page-dead" }, h("h1", {}, "Dead letters"));
  root.append(section);
  const items = await get("/api/dead-letters?limit=50");
  const reload = () => ctx.reload();
  section.append(table("dead-table", [
    ["Name", (t) => taskLink(t.id, t.task_name)],
    ["Assignee", (t) => t.assigned_to],
    ["Error", (t) => t.error || "–"],
    ["Attempts", (t) => `${t.attempt}/${t.max_attempts}`],
    ["", (t) => h("button", { type: "button", "data-test": "dead-retry",
      onclick: () => confirmed(ctx, `Retry task ${t.task_name}?`,
        () => call("POST", `/api/tasks/${encodeURIComponent(t.id)}/retry`), reload) }, "Retry")],
  ], items, (t) => t.id));
}

/** Deliveries (#/deliveries): by status, replay one. */
export async function deliveries(root, ctx) {
  const q = routeQuery();
  const section = h("section", { "data-test": "page-deliveries" }, h("h1", {}, "Deliveries"));
  const pick = h("select", { id: "f-dstatus", onchange: (e) => { location.hash = `#/deliveries?status=${e.target.value}`; } },
    ["", "pending", "delivered", "dead"].map((s) => h("option", { value: s, selected: s === (q.get("status") || "") }, s || "any")));
  section.append(h("div", { class: "filters" }, h("div", {}, h("label", { for: "f-dstatus" }, "Status"), pick)));
  root.append(section);
  const p = new URLSearchParams({ limit: "50" });
  if (q.get("status")) p.set("status", q.get("status"));
  const items = await get(`/api/deliveries?${p}`);
  section.append(table("deliveries-table", [
    ["Destination", (d) => d.job.destination],
    ["Task", (d) => (d.job.task ? taskLink(d.job.task.id, d.job.task.task_name) : "–")],
    ["Status", (d) => status(d.status)],
    ["Attempts", (d) => (d.attempts || []).map((a) => a.status ?? "error").join(", ") || "–"],
    ["Updated", (d) => when(d.updated_time)],
    ["", (d) => h("button", { type: "button", "data-test": "delivery-replay", disabled: d.status === "pending",
      onclick: () => confirmed(ctx, `Replay this delivery to ${d.job.destination}?`,
        () => call("POST", `/api/deliveries/${encodeURIComponent(d.job.id)}/replay`), () => ctx.reload()) }, "Replay")],
  ], items, (d) => d.job.id));
}

/** Workers (#/workers), from the registry. */
export async function workers(root) {
  const items = await get("/api/workers");
  root.append(h("section", { "data-test": "page-workers" }, h("h1", {}, "Workers"), table("workers-table", [
    ["Id", (w) => w.id],
    ["Kind", (w) => w.kind],
    ["Assignee", (w) => w.assignee || "–"],
    ["Host", (w) => w.host],
    ["Running", (w) => h("span", {}, `${(w.running || []).length}/${w.concurrency} `,
      (w.running || []).map((id) => taskLink(id, "▸")))],
    ["Version", (w) => w.version],
    ["Last seen", (w) => when(w.last_seen)],
  ], items, (w) => w.id)));
}

/** Limits (#/limits): the keys in use. */
export async function limits(root) {
  const o = await get("/api/limits");
  root.append(h("section", { "data-test": "page-limits" }, h("h1", {}, "Limits"), table("limits-table", [
    ["Assignee", (k) => k.assignee],
    ["Kind", (k) => String(k.kind)],
    ["Key", (k) => k.key],
    ["Limit", (k) => k.limit ?? "–"],
    ["Running", (k) => (k.running || []).length],
    ["Waiting", (k) => k.waiting ?? 0],
  ], o.keys || [], (k) => `${k.assignee}/${k.key}`),
  h("h2", {}, "Declared"), h("pre", {}, JSON.stringify(o.declared, null, 2))));
}
