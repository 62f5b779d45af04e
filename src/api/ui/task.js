// The task page (#/task/<id>): header, step progress, the event timeline, live updates through
// /api/tasks/{id}/events, the output tail of a command task, and cancel / retry / complete.

import { call, get, stream } from "/ui/api.js";
import { h, status, when, confirmed, deliveryTable } from "/ui/pages.js";

/** Which actions the state machine allows in `t`'s state. */
function allowed(t) {
  return {
    cancel: t.status === "pending" || t.status === "running",
    retry: t.status === "failed" || t.status === "cancelled",
    complete: t.status === "running" && t.kind === "manual",
  };
}

/** The task page. */
export async function task(root, ctx, id) {
  const path = `/api/tasks/${encodeURIComponent(id)}`;
  const head = h("div", {});
  const timeline = h("ol", { class: "timeline", "data-test": "task-timeline" });
  const output = h("pre", { "data-test": "task-output", hidden: true });
  const sent = h("div", { "data-test": "task-deliveries" });
  const outputHead = h("h2", { hidden: true }, "Output");
  root.append(h("section", { "data-test": "page-task" }, head, outputHead, output, h("h2", {}, "Timeline"),
    timeline, h("h2", {}, "Deliveries"), sent));
  let busy = false;
  let again = false;
  const refresh = async () => {
    if (busy) { again = true; return; }
    busy = true;
    do {
      again = false;
      try {
        const [t, logs] = await Promise.all([get(path), get(`${path}/logs`)]);
        head.replaceChildren(...header(t, ctx, path, refresh).filter(Boolean)); // no "null" text
        timeline.replaceChildren(...folded(logs).map(logRow));
        if (t.kind === "exec") { outputHead.hidden = false; await tail(output, path); }
      } catch (e) { ctx.say(e.message, true); }
    } while (again);
    busy = false;
  };
  await refresh();
  await deliveries(sent, ctx, id);
  ctx.live(true);
  stream(`${path}/events`, ctx.signal, (type) => { if (type !== "error") refresh(); })
    .catch((e) => { if (!ctx.signal.aborted) ctx.say(e.message, true); })
    .finally(() => ctx.live(false));
}

/** Name, the task's facts, its progress (when it has steps or a percentage) and the action
 * buttons. */
function header(t, ctx, path, refresh) {
  const ok = allowed(t);
  const act = (verb, label, test) => h("button", {
    type: "button", "data-test": test, disabled: !ok[verb],
    onclick: () => confirmed(ctx, `${label} task “${t.task_name}”?`, () => call("POST", `${path}/${verb}`, {}), refresh),
  }, label);
  const p = t.progress || {};
  const total = p.total || (t.steps || []).length;
  const measured = total > 0 || p.percent > 0;
  return [
    h("h1", {}, t.task_name),
    facts(t),
    measured ? h("label", { for: "task-progress" }, `Progress: ${p.current || ""} ${p.done || 0}/${total}`) : null,
    measured ? h("progress", { id: "task-progress", "data-test": "task-progress", max: 100, value: p.percent || 0 }, `${p.percent || 0}%`) : null,
    h("div", { class: "actions" },
      act("cancel", "Cancel", "task-cancel"), act("retry", "Retry", "task-retry"), act("complete", "Complete", "task-complete")),
    t.result !== null && t.result !== undefined
      ? [h("h2", {}, "Result"), h("pre", { "data-test": "task-result" }, JSON.stringify(t.result, null, 2))] : null,
  ];
}

/** What a person looks up first: the id to copy, who runs the task and since when, and what it
 * runs (its payload). */
function facts(t) {
  const row = (label, value, test) => [h("dt", {}, label), h("dd", { "data-test": test }, value)];
  const payload = t.payload && Object.keys(t.payload).length ? JSON.stringify(t.payload, null, 2) : null;
  return h("dl", {},
    row("Status", status(t.status), "task-status"),
    row("ID", h("code", {}, t.id), "task-id"),
    row("Lease holder", t.lease ? t.lease.holder : "–", "task-lease"),
    row("Assignee / priority / kind", `${t.assigned_to} / ${t.priority} / ${t.kind}`),
    row("Attempt", `${t.attempt} of ${t.max_attempts}`),
    row("Created", t.created_by ? `${when(t.created_time)} by ${t.created_by}` : when(t.created_time)),
    t.started_time ? row("Started", when(t.started_time)) : null,
    t.finished_time ? row("Finished", when(t.finished_time)) : null,
    t.waiting_for ? row("Waiting for", t.waiting_for) : null,
    t.error ? [h("dt", {}, "Error"), h("dd", { class: "error" }, t.error)] : null,
    payload ? row("Payload", h("pre", {}, payload), "task-payload") : null);
}

/** Actions that come in runs (a chunk of output a second, a heartbeat a minute): a run of them
 * is one timeline row, so the state changes stay in sight. */
const RUNS = new Set(["output", "heartbeat"]);

/** The log with each run of one repeated action folded into its last entry, counted. */
function folded(logs) {
  const out = [];
  for (const l of logs) {
    const last = out[out.length - 1];
    if (last && RUNS.has(l.action) && last.action === l.action) {
      out[out.length - 1] = { ...l, times: (last.times || 1) + 1, since: last.since || last.created_time };
    } else {
      out.push(l);
    }
  }
  return out;
}

/** One log row (a folded run shows how many, from when to when). */
function logRow(l) {
  const change = l.new_status ? ` → ${l.new_status}` : "";
  const times = l.times ? ` ×${l.times} (since ${when(l.since)})` : "";
  return h("li", {}, h("span", { class: "muted" }, when(l.created_time)), " ",
    h("b", {}, l.action), times, change, l.message ? `: ${l.message}` : "", h("span", { class: "muted" }, ` (${l.operator})`));
}

/** The last 200 lines of a command's output (the route's default page). */
async function tail(pre, path) {
  const page = await get(`${path}/output?limit=200`);
  pre.hidden = false;
  pre.textContent = (page.lines || []).join("\n") || "(no output yet)";
  pre.scrollTop = pre.scrollHeight; // a tail: the newest line in sight
}

/** The task's deliveries (GET /api/deliveries?task_id=) with their attempts and replay; a
 * "Reload" button reads them again (they change on the relay's schedule, not the task's). */
async function deliveries(box, ctx, id) {
  const load = async () => {
    try {
      const items = await get(`/api/deliveries?task_id=${encodeURIComponent(id)}&limit=100`);
      box.replaceChildren(deliveryTable(ctx, items, load), reload);
    } catch (e) {
      const why = e.status === 403 ? "Deliveries are shown to admin keys only." : e.message;
      box.replaceChildren(h("p", { class: "muted" }, why));
    }
  };
  const reload = h("button", { type: "button", class: "secondary", "data-test": "task-deliveries-reload", onclick: load }, "Reload deliveries");
  await load();
}
