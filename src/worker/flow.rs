//! The flow-control gate of one pulled message (see `limits/`): a task that names no key, of an
//! assignee without a cap, passes at no cost; otherwise it takes its places before the claim,
//! or goes back to the queue for as long as the gate says (other keys' tasks keep flowing).

use super::Ctx;
use crate::domain::FlowKeys;
use crate::limits::{Gate, Permit, Wait};
use crate::tasks::{decode_queued, QueuedMessage};
use std::collections::HashSet;
use std::sync::Mutex;
use std::time::Duration;

/// A rate's next start at most this far away is waited for in the process, by one task per key
/// (the rest go back to the queue): a redelivered message may come a poll late, which would
/// lose the slot.
const WAIT_HERE: Duration = Duration::from_millis(300);

/// Rounds of the gate for one message (a lane cleared, a rate waited for) before it goes back
/// to the queue.
const MAX_TRIES: usize = 16;

/// The rate keys one of this worker's tasks waits for in the process now.
#[derive(Debug, Default)]
pub(super) struct RateWaiters(Mutex<HashSet<String>>);

impl RateWaiters {
    /// Claims `key` for one waiter; false if another task waits for it here already.
    fn claim(&self, key: &str) -> bool {
        self.0.lock().expect("lock").insert(key.to_string())
    }

    /// Lets the next task wait for `key`.
    fn free(&self, key: &str) {
        self.0.lock().expect("lock").remove(key);
    }
}

/// The gate's answer for one message.
pub(super) enum Gated {
    /// Claim it, holding these places.
    Go(Permit),
    /// Put it back for this long.
    Later(Duration),
}

/// Passes `msg` through the gate.
pub(super) async fn gate(ctx: &Ctx, msg: QueuedMessage<'_>) -> Gated {
    // Only the flow fields are read here; a body that is no task passes, and the claim moves it
    // aside with its reason.
    let flow: FlowKeys = serde_json::from_slice(msg.payload).unwrap_or_default();
    let Some((assignee, _, _)) = crate::bus::subjects::parse_task(msg.subject) else {
        return Gated::Go(Permit::default());
    };
    let assignee = assignee.to_string();
    if flow.is_empty() && !has_cap(ctx, &assignee).await {
        return Gated::Go(Permit::default());
    }
    let Ok((id, _)) = decode_queued(msg) else {
        return Gated::Go(Permit::default());
    };
    let mut waiting_here: Option<String> = None;
    let mut tries = 0;
    let gated = loop {
        tries += 1;
        let asked = ctx
            .limits
            .acquire(&assignee, id.as_str(), &flow, &ctx.worker_id, ctx.ack_wait)
            .await;
        match asked {
            Ok(Gate::Go(permit)) => break Gated::Go(permit),
            Ok(Gate::Wait(wait)) => {
                if tries < MAX_TRIES && clear_idle_head(ctx, &assignee, &wait).await {
                    continue;
                }
                if tries < MAX_TRIES && wait_here(ctx, &wait, &mut waiting_here) {
                    tokio::time::sleep(wait.retry_in).await;
                    continue;
                }
                tracing::debug!(task_id = %id, waiting_for = wait.reason, "not yet");
                ctx.tasks.metrics().note_flow_wait(&assignee, wait.kind);
                break Gated::Later(wait.retry_in);
            }
            Err(e) => {
                tracing::warn!(task_id = %id, error.message = %e, "flow control unavailable; trying the task again in 1 s");
                break Gated::Later(Duration::from_secs(1));
            }
        }
    };
    if let Some(key) = waiting_here {
        ctx.rate_waiters.free(&key);
    }
    gated
}

/// Whether this task waits for `wait` here (a rate's start soon, and no other task of this
/// worker waiting for that key); `waiting_here` keeps the key it waits for.
fn wait_here(ctx: &Ctx, wait: &Wait, waiting_here: &mut Option<String>) -> bool {
    if wait.kind != "rate" || wait.retry_in > WAIT_HERE {
        return false;
    }
    if waiting_here.as_deref() == Some(wait.key.as_str()) {
        return true;
    }
    if waiting_here.is_none() && ctx.rate_waiters.claim(&wait.key) {
        *waiting_here = Some(wait.key.clone());
        return true;
    }
    false
}

/// Whether the assignee has a cap on running tasks (read at most every 2 s).
async fn has_cap(ctx: &Ctx, assignee: &str) -> bool {
    match ctx.limits.declared(assignee).await {
        Ok(d) => d.max_running.is_some(),
        // Not knowing costs nothing here: `acquire` asks again and says why it fails.
        Err(_) => true,
    }
}

/// A lane whose turn belongs to a task that finished or is gone: takes that task out of the
/// lane. Returns whether it did (so the gate may be asked again at once).
async fn clear_idle_head(ctx: &Ctx, assignee: &str, wait: &Wait) -> bool {
    let Some((lane, head)) = &wait.idle_head else {
        return false;
    };
    let Ok(head_id) = crate::domain::TaskId::parse(head) else {
        return false;
    };
    // A task without a record (published to NATS, not claimed yet) still waits for its turn.
    let finished = matches!(ctx.tasks.get(&head_id).await, Ok(t) if t.status.is_terminal());
    if !finished {
        return false;
    }
    tracing::info!(
        lane,
        task_id = head,
        "lane's turn held by a finished task; passing it on"
    );
    ctx.limits.leave_lane(assignee, lane, head).await.is_ok()
}
