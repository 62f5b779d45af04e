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

/** Asks, then runs `action` and reports; `done` runs after success (e.g. a reload, which clears
 * the status line: the report comes after it). */
export async function confirmed(ctx, question, action, done) {
  if (!window.confirm(question)) return;
  try {
    await action();
    if (done) await done();
    ctx.say("Done.");
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

/** The SVG namespace, from an <svg> the HTML parser made (so no URL is written out here). */
const SVG_NS = (() => {
  const t = document.createElement("template");
  t.innerHTML = "<svg></svg>";
  return t.content.firstChild.namespaceURI;
})();

/** An SVG element with attributes. */
function svg(tag, attrs) {
  const e = document.createElementNS(SVG_NS, tag);
  for (const [k, v] of Object.entries(attrs || {})) e.setAttribute(k, String(v));
  return e;
}

/** A small bar chart of `values` (oldest first), styled by app.css, with `label` as its text. */
export function sparkline(values, label) {
  const bar = 4, step = 5, height = 20, max = Math.max(1, ...values);
  const chart = svg("svg", { class: "spark", role: "img", "aria-label": label,
    width: values.length * step, height, viewBox: `0 0 ${values.length * step} ${height}` });
  const title = svg("title");
  title.textContent = label;
  chart.append(title);
  values.forEach((v, i) => {
    const tall = v ? Math.max(2, Math.round((v / max) * height)) : 1;
    chart.append(svg("rect", { x: i * step, y: height - tall, width: bar, height: tall, class: v ? "on" : "off" }));
  });
  return chart;
}

/** An assignee's tasks finished per minute over the last 15 minutes: a chart and the totals. */
function throughputCell(t) {
  if (!t) return "–";
  const sum = (xs) => xs.reduce((a, b) => a + b, 0);
  const label = `completed per minute, last 15 minutes, oldest first: ${t.completed.join(", ")}`;
  return h("span", { class: "throughput", "data-test": "overview-throughput" }, sparkline(t.completed, label),
    ` ${sum(t.completed)} done`, sum(t.failed) ? h("span", { class: "status-failed" }, `, ${sum(t.failed)} failed`) : null);
}

/** The relay's queue per destination and its disabled destinations, linked to the deliveries. */
function relayParts(r) {
  if (!r) return [];
  const shown = (key) => `#/deliveries?destination=${encodeURIComponent(key)}`;
  return [h("h2", {}, "Relay"), table("overview-relay", [
    ["Destination", (x) => h("a", { href: shown(x.destination) }, x.destination)],
    ["Waiting", (x) => x.backlog],
    ["State", (x) => (x.disabled ? h("span", { class: "status-dead" }, `disabled: ${x.reason || "410 Gone"}`) : "delivering")],
  ], r.destinations, (x) => x.destination)];
}

/** `text` linked to the task list of `assignee` in `status` (any status when ""); "–" when
 * there is nothing to show. */
function tasksOf(assignee, status, text, more = {}) {
  if (text === null || text === undefined) return "–";
  const q = new URLSearchParams(status ? { assigned_to: assignee, status } : { assigned_to: assignee });
  for (const [k, v] of Object.entries(more)) q.set(k, v);
  return h("a", { href: `#/tasks?${q}` }, String(text));
}

/** An hour before now, as the API's `finished_after` takes it. */
function hourAgo() {
  return new Date(Date.now() - 3_600_000).toISOString();
}

/** The overview's cards and tables. */
function overviewParts(o) {
  const d = o.deliveries;
  const r = o.relay;
  const disabled = r ? r.destinations.filter((x) => x.disabled).length : 0;
  const cards = h("div", { class: "cards" },
    h("div", { class: "card", "data-test": "overview-workers" }, h("b", {}, o.workers_online), "workers online"),
    o.throughput ? h("div", { class: "card", "data-test": "overview-fleet-throughput" },
      h("b", {}, throughputCell(o.throughput)), "finished, last 15 min") : null,
    d ? h("div", { class: "card", "data-test": "overview-deliveries" },
      h("b", {}, `${d.pending} / ${d.dead}`), "deliveries pending / dead") : null,
    r ? h("a", { class: "card", href: "#/deliveries?status=pending", "data-test": "overview-relay-backlog" },
      h("b", {}, r.backlog), "relay backlog") : null,
    r ? h("a", { class: `card${disabled ? " alert" : ""}`, href: "#/deliveries", "data-test": "overview-disabled" },
      h("b", {}, disabled), "disabled destinations") : null);
  const queues = table("overview-queues", [
    ["Assignee", (q) => tasksOf(q.assignee, "", q.assignee)],
    ["Priority", (q) => q.priority],
    ["Queued", (q) => tasksOf(q.assignee, "pending", q.queued, { priority: q.priority.toLowerCase() })],
    ["Running", (q) => tasksOf(q.assignee, "running", q.running, { priority: q.priority.toLowerCase() })],
    ["Stalled", (q) => q.stalled],
    ["Oldest pending", (q) => age(q.oldest_pending_s)],
    ["Messages", (q) => q.depth],
  ], o.queues, (q) => `${q.assignee}/${q.priority}`);
  const people = table("overview-assignees", [
    ["Assignee", (a) => tasksOf(a.assignee, "", a.assignee)],
    ["Scheduled", (a) => tasksOf(a.assignee, "scheduled", a.scheduled)],
    ["Failed (1 h)", (a) => tasksOf(a.assignee, "failed", a.failed_last_hour, { finished_after: hourAgo() })],
    ["Workers", (a) => a.workers_online],
    ["Finished (15 min)", (a) => throughputCell(a.throughput)],
  ], o.assignees, (a) => a.assignee);
  return [cards, h("h2", {}, "Queues"), queues, h("h2", {}, "Assignees"), people, ...relayParts(r),
    h("p", { class: "muted" }, `Updated ${when(o.generated_at)}`)];
}

/** The query of the current hash route (#/tasks?assigned_to=anna). */
export function routeQuery() {
  const q = location.hash.split("?")[1] || "";
  return new URLSearchParams(q);
}

/** A select of `values` ("" shown as "any") with `current` chosen. */
function choice(id, test, values, current) {
  return h("select", { id, "data-test": test },
    values.map((v) => h("option", { value: v, selected: v === current }, v || "any")));
}

/** Most list calls one "load" makes while filters that narrow after reading return short pages. */
const MAX_CALLS = 5;

/** Statuses whose listing is newest finished first, so `finished_after` can narrow it. */
const FINAL = ["completed", "failed", "cancelled"];

/**
 * Tasks (#/tasks?assigned_to=&status=&priority=&kind=&q=&finished_after=): filters kept in the
 * hash query (so a filtered list can be linked), newest first, "older" paging through
 * X-Next-Cursor. `finished_after` (the overview's "Failed (1 h)") shows as a note that removes it.
 */
export async function tasks(root, ctx) {
  const q = routeQuery();
  const assignee = h("input", { id: "f-assignee", "data-test": "tasks-assignee", value: q.get("assigned_to") || "" });
  const state = choice("f-status", "tasks-status",
    ["", "scheduled", "pending", "running", "completed", "failed", "cancelled"], q.get("status") || "");
  const priority = choice("f-priority", "tasks-priority", ["", "p0", "p1", "p2"], (q.get("priority") || "").toLowerCase());
  const kind = choice("f-kind", "tasks-kind", ["", "manual", "exec", "agent", "hook", "noop"], q.get("kind") || "");
  const text = h("input", { id: "f-text", "data-test": "tasks-text", type: "search", maxlength: 200, value: q.get("q") || "" });
  let finishedAfter = q.get("finished_after") || "";
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
  const filters = () => {
    const p = new URLSearchParams();
    const given = { assigned_to: assignee.value.trim(), status: state.value, priority: priority.value,
      kind: kind.value, q: text.value.trim(),
      finished_after: FINAL.includes(state.value) ? finishedAfter : "" };
    for (const [k, v] of Object.entries(given)) if (v) p.set(k, v);
    return p;
  };
  // Filters by priority, kind or name may answer a short page with a cursor: walk on a little.
  const load = async (more) => {
    const got = more ? loaded.slice() : [];
    let next = more ? cursor : null;
    try {
      for (let calls = 0; calls < MAX_CALLS && got.length < 50 && (calls === 0 || next); calls++) {
        const p = filters();
        p.set("limit", String(50 - got.length));
        if (next) p.set("before", next);
        const r = await call("GET", `/api/tasks?${p}`);
        got.push(...r.body);
        next = r.headers.get("X-Next-Cursor");
      }
      loaded = got;
      cursor = next;
      paint();
    } catch (e) { ctx.say(e.message, true); }
  };
  const apply = (e) => {
    e.preventDefault();
    const hash = `#/tasks?${filters()}`;
    if (location.hash === hash) load(false);
    else location.hash = hash;
  };
  const field = (label, input) => h("div", {}, h("label", { for: input.id }, label), input);
  const form = h("form", { class: "filters", onsubmit: apply },
    field("Assignee", assignee), field("Status", state), field("Priority", priority), field("Kind", kind),
    field("Name contains", text), h("button", { type: "submit", "data-test": "tasks-apply" }, "Apply"));
  text.addEventListener("input", paint);
  older.addEventListener("click", () => load(true));
  const since = finishedAfter && FINAL.includes(state.value) ? h("p", { class: "muted", "data-test": "tasks-finished-after" },
    `Finished since ${when(finishedAfter)} `,
    h("a", { href: "#", onclick: (e) => { finishedAfter = ""; apply(e); } }, "show all")) : null;
  root.append(h("section", { "data-test": "page-tasks" }, h("h1", {}, "Tasks"), form, since, list, older));
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

/** Dead letters (#/dead), each with retry; paged through X-Next-Cursor (`after`). */
export async function dead(root, ctx) {
  const q = routeQuery();
  const section = h("section", { "data-test": "page-dead" });
  root.append(section);
  const reload = () => ctx.reload();
  await stalled(section, ctx, reload);
  section.append(h("h1", {}, "Dead letters"));
  const p = new URLSearchParams({ limit: "50" });
  if (q.get("after")) p.set("after", q.get("after"));
  const r = await call("GET", `/api/dead-letters?${p}`);
  section.append(table("dead-table", [
    ["Name", (t) => taskLink(t.id, t.task_name)],
    ["Assignee", (t) => t.assigned_to],
    ["Error", (t) => t.error || "–"],
    ["Attempts", (t) => `${t.attempt}/${t.max_attempts}`],
    ["", (t) => h("button", { type: "button", "data-test": "dead-retry",
      onclick: () => confirmed(ctx, `Retry task ${t.task_name}?`,
        () => call("POST", `/api/tasks/${encodeURIComponent(t.id)}/retry`), reload) }, "Retry")],
  ], r.body, (t) => t.id));
  section.append(pager("dead", q, "after", r.headers.get("X-Next-Cursor")));
}

/**
 * Stalled tasks (`GET /api/tasks?status=stalled`: running, unchanged for longer than the relay's
 * `stall_after_s`), each with "Cancel and retry": the two API calls a script would make.
 */
async function stalled(section, ctx, reload) {
  const list = await get("/api/tasks?status=stalled&limit=50");
  section.append(h("h1", {}, "Stalled"), table("stalled-table", [
    ["Name", (t) => taskLink(t.id, t.task_name)],
    ["Assignee", (t) => t.assigned_to],
    ["Holder", (t) => (t.lease && t.lease.holder) || "–"],
    ["Last change", (t) => age((Date.now() - Date.parse(t.updated_time)) / 1000)],
    ["", (t) => h("button", { type: "button", "data-test": "stalled-retry",
      onclick: () => confirmed(ctx, `Cancel task ${t.task_name} and queue it again?`, async () => {
        const id = encodeURIComponent(t.id);
        await call("POST", `/api/tasks/${id}/cancel`);
        return call("POST", `/api/tasks/${id}/retry`);
      }, reload) }, "Cancel and retry")],
  ], list, (t) => t.id));
}

/** "First page" (when paged) and "Next page" (when `next`) links of a list page `#/<page>`. */
function pager(page, q, param, next) {
  const at = (cursor) => {
    const p = new URLSearchParams(q);
    if (cursor) p.set(param, cursor); else p.delete(param);
    return `#/${page}?${p}`;
  };
  return h("div", { class: "actions", "data-test": `${page}-pager` },
    q.get(param) ? h("a", { href: at(null), "data-test": `${page}-first` }, "First page") : null,
    next ? h("a", { href: at(next), "data-test": `${page}-next` }, "Next page") : null);
}

/** Where a delivery goes, as people call it: the destination's name, or the kind and host of
 * a task's own destination (never its URL's path or query, where tokens live), or its key. */
function destinationOf(d) {
  if (d.job.name) return d.job.name;
  const dest = d.job.destination;
  let host = "";
  try { host = dest && dest.url ? new URL(dest.url).host : ""; } catch { host = ""; }
  return dest ? `${dest.type}${host ? ` ${host}` : ""}` : d.job.key;
}

/** Every attempt of a delivery, expandable: status code (or error), time, duration, body. */
export function attemptsOf(d) {
  const list = d.attempts || [];
  if (!list.length) return h("span", { class: "muted" }, d.reason || "none yet");
  const last = list[list.length - 1];
  return h("details", { "data-test": "delivery-attempts" },
    h("summary", {}, `${list.length} attempt${list.length === 1 ? "" : "s"}, last: ${last.status ?? "error"}`),
    h("ol", {}, list.map((a) => h("li", { "data-test": "delivery-attempt" },
      h("b", {}, a.status ?? "no response"), ` ${when(a.time)} · ${a.duration_ms} ms`,
      a.next_attempt_time ? h("span", { class: "muted" }, ` · next ${when(a.next_attempt_time)}`) : null,
      a.response ? h("pre", { "data-test": "delivery-response" }, a.response) : null,
      a.truncated ? h("span", { class: "muted", "data-test": "delivery-truncated" }, "(first 4 KiB of the body)") : null))),
    d.reason ? h("p", { class: "error" }, d.reason) : null);
}

/** Delivery records as a table, each with its attempts and a replay button. */
export function deliveryTable(ctx, items, done) {
  return table("deliveries-table", [
    ["Destination", (d) => destinationOf(d)],
    ["Event", (d) => d.job.event ? d.job.event.type : "push"],
    ["Task", (d) => (d.job.task ? taskLink(d.job.task.id, d.job.task.task_name) : "–")],
    ["Status", (d) => status(d.status)],
    ["Attempts", attemptsOf],
    ["Updated", (d) => when(d.updated_time)],
    ["", (d) => h("button", { type: "button", "data-test": "delivery-replay", disabled: d.status === "pending",
      onclick: () => confirmed(ctx, `Replay this delivery to ${destinationOf(d)}?`,
        () => call("POST", `/api/deliveries/${encodeURIComponent(d.job.id)}/replay`), done) }, "Replay")],
  ], items, (d) => d.job.id);
}

/** Deliveries (#/deliveries): by status and destination, paged; attempts; replay one; the
 * destinations, with re-enable and "replay since". */
export async function deliveries(root, ctx) {
  const q = routeQuery();
  const section = h("section", { "data-test": "page-deliveries" }, h("h1", {}, "Deliveries"));
  const pick = h("select", { id: "f-dstatus", name: "status", "data-test": "deliveries-status" },
    ["", "pending", "delivered", "dead"].map((s) => h("option", { value: s, selected: s === (q.get("status") || "") }, s || "any")));
  const dest = h("input", { id: "f-ddest", name: "destination", "data-test": "deliveries-destination",
    value: q.get("destination") || "", pattern: "[A-Za-z0-9_\\-]*" });
  const apply = (e) => {
    e.preventDefault();
    const p = new URLSearchParams();
    if (pick.value) p.set("status", pick.value);
    if (dest.value.trim()) p.set("destination", dest.value.trim());
    location.hash = `#/deliveries?${p}`;
  };
  section.append(h("form", { class: "filters", onsubmit: apply },
    h("div", {}, h("label", { for: "f-dstatus" }, "Status"), pick),
    h("div", {}, h("label", { for: "f-ddest" }, "Destination"), dest),
    h("button", { type: "submit", "data-test": "deliveries-apply" }, "Apply")));
  root.append(section);
  const p = new URLSearchParams({ limit: "50" });
  for (const k of ["status", "destination", "before"]) if (q.get(k)) p.set(k, q.get(k));
  const r = await call("GET", `/api/deliveries?${p}`);
  section.append(deliveryTable(ctx, r.body, () => ctx.reload()),
    pager("deliveries", q, "before", r.headers.get("X-Next-Cursor")));
  section.append(...await destinationParts(ctx));
}

/** The destinations: a table (disabled ones with Re-enable) and the "Replay since…" form. */
async function destinationParts(ctx) {
  let list = [];
  try { list = await get("/api/destinations"); } catch (e) { ctx.say(e.message, true); }
  const enable = (d) => h("button", { type: "button", class: "secondary", "data-test": "destination-enable",
    onclick: () => confirmed(ctx, `Re-enable ${d.name || d.key}? Deliveries to it resume (those that died stay dead).`,
      () => call("POST", `/api/destinations/${encodeURIComponent(d.key)}/enable`), () => ctx.reload()) }, "Re-enable");
  const rows = table("destinations-table", [
    ["Destination", (d) => d.name ? `${d.name} (${d.key})` : d.key],
    ["State", (d) => (d.disabled ? h("span", { class: "status-dead" }, "disabled") : "enabled")],
    ["Why", (d) => d.reason || "–"],
    ["Since", (d) => when(d.time)],
    ["", (d) => (d.disabled ? enable(d) : null)],
  ], list, (d) => d.key);
  return [h("h2", {}, "Destinations"), rows, replaySinceForm(ctx, list)];
}

/** "Replay since…": POST /api/destinations/{name}/replay?since=, repeated by hand while more remain. */
function replaySinceForm(ctx, list) {
  const name = h("input", { id: "f-rname", required: true, "data-test": "replay-destination",
    list: "f-rnames", pattern: "[A-Za-z0-9_\\-]+" });
  const names = h("datalist", { id: "f-rnames" }, list.map((d) => h("option", { value: d.name || d.key })));
  const since = h("input", { id: "f-rsince", type: "datetime-local", step: 1, required: true, "data-test": "replay-since" });
  const submit = (e) => {
    e.preventDefault();
    const at = new Date(since.value);
    if (Number.isNaN(at.getTime())) { ctx.say("Pick a time to replay from.", true); return; }
    const path = `/api/destinations/${encodeURIComponent(name.value.trim())}/replay?since=${encodeURIComponent(at.toISOString())}`;
    if (!window.confirm(`Replay every dead delivery to ${name.value.trim()} since ${at.toLocaleString()}?`)) return;
    call("POST", path)
      .then(({ body: r }) => ctx.say(`Queued ${r.count} again${r.more ? "; more remain: replay again" : ""}.`))
      .catch((err) => ctx.say(err.message, true));
  };
  return h("form", { class: "filters", "data-test": "replay-since-form", onsubmit: submit },
    h("div", {}, h("label", { for: "f-rname" }, "Destination"), name, names),
    h("div", {}, h("label", { for: "f-rsince" }, "Dead since (your local time)"), since),
    h("button", { type: "submit", "data-test": "replay-since-submit" }, "Replay since…"));
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

/** Limits (#/limits): the keys in use (a rate key's limit is its rate), the overrides set
 * through the API, and what each assignee's workers declared (`[worker.limits]`). */
export async function limits(root) {
  const o = await get("/api/limits");
  const limit = (k) => (k.rate ? `${k.rate}${k.burst > 1 ? `, burst ${k.burst}` : ""}` : k.limit ?? "–");
  const note = (k) => (k.next_slot_in_s > 0 ? `next slot in ${k.next_slot_in_s.toFixed(1)} s` : "");
  root.append(h("section", { "data-test": "page-limits" }, h("h1", {}, "Limits"), table("limits-table", [
    ["Assignee", (k) => k.assignee],
    ["Kind", (k) => String(k.kind)],
    ["Key", (k) => k.key],
    ["Limit", limit],
    ["Running", (k) => (k.running || []).length],
    ["Waiting", (k) => k.waiting ?? 0],
    ["Note", note],
  ], o.keys || [], (k) => `${k.assignee}/${k.key}`),
  h("h2", {}, "Overrides"), table("limits-overrides", [
    ["Assignee", (v) => v.assignee],
    ["Key", (v) => v.key],
    ["Concurrency", (v) => v.concurrency ?? "–"],
    ["Rate", (v) => v.rate ?? "–"],
    ["Burst", (v) => v.burst ?? "–"],
  ], o.overrides || [], (v) => `${v.assignee}/${v.key}`),
  h("h2", {}, "Declared by the workers"), table("limits-declared", [
    ["Assignee", (d) => d.assignee],
    ["Kind", (d) => d.kind],
    ["Pattern", (d) => d.pattern || "–"],
    ["Limit", (d) => String(d.value)],
  ], declaredRows(o.declared || {}), (d) => `${d.assignee}/${d.kind}/${d.pattern}`)));
}

/** One row per pattern the workers of each assignee declared, and one for its cap. */
function declaredRows(declared) {
  return Object.entries(declared).flatMap(([assignee, d]) => [
    ...["concurrency", "rate", "burst"].flatMap((kind) =>
      Object.entries(d[kind] || {}).map(([pattern, value]) => ({ assignee, kind, pattern, value }))),
    ...(d.max_running != null ? [{ assignee, kind: "max_running", pattern: "", value: d.max_running }] : []),
  ]);
}
