//! One pulled message, from claim to acknowledgement: keep the lease alive while the task runs,
//! then finish it (fenced by the lease token) and ack; or, when stopped, ack (cancelled), leave
//! it (lease lost) or hand it back (shutdown).

use super::control::{RunHandle, StopReason};
use super::flow::{self, Gated};
use super::kinds::{self, Outcome};
use super::Ctx;
use crate::bus::subjects;
use crate::domain::Task;
use crate::limits::Permit;
use crate::tasks::{ClaimOutcome, Delivery, Finish, QueuedMessage, TaskError};
use async_nats::jetstream::{AckKind, Message};
use std::sync::{Arc, OnceLock};
use std::time::Duration;
use tokio::sync::OwnedSemaphorePermit;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

/// Handles one pulled message to the end. `slot` is its concurrency slot: freed once the task's
/// finish is on its way, so the next pull overlaps with the answer.
pub(super) async fn handle(ctx: Arc<Ctx>, msg: Message, slot: OwnedSemaphorePermit) {
    let Ok(info) = msg.info() else {
        tracing::warn!(subject = %msg.subject, "message without JetStream metadata; dropping");
        let _ = msg.ack_with(AckKind::Term).await;
        return;
    };
    let seq = info.stream_sequence;
    let delivery = Delivery {
        redelivered: info.delivered > 1,
        lease: ctx.ack_wait,
    };
    let Some(_held) = ctx.in_hand.take(seq) else {
        tracing::info!(
            seq,
            delivered = info.delivered,
            "message delivered again while this process handles it; its first delivery settles it"
        );
        return;
    };
    let queued = QueuedMessage {
        subject: msg.subject.as_str(),
        headers: msg.headers.as_ref(),
        payload: &msg.payload,
        seq,
        published_ns: info.published.unix_timestamp_nanos(),
    };
    let span =
        tracing::info_span!("task", task_id = tracing::field::Empty, seq, worker = %ctx.worker_id);
    crate::telemetry::continue_trace(&span, msg.headers.as_ref());
    let mut beat = lease_beat(ctx.ack_wait);
    let gated = claim_through_gate(&ctx, &msg, queued, delivery, &span);
    let Some((claimed, permit)) = holding(&msg, &mut beat, gated).await else {
        return;
    };
    match claimed {
        Ok(ClaimOutcome::Run(task)) => {
            span.record("task_id", task.id.as_str());
            let run = run_span(&span, &task);
            run_claimed(&ctx, &msg, task, seq, slot, permit, beat)
                .instrument(run)
                .instrument(span)
                .await
        }
        other => settle_unrun(&msg, other, &span).await,
    }
}

/// Passes the flow-control gate (see `flow.rs`), then claims. A message the gate holds back
/// goes back to the queue for as long as it says (`None`); places taken for a task that then
/// does not run are given back (one that never will, moved aside, not pending or out of
/// attempts, also leaves its lane).
async fn claim_through_gate(
    ctx: &Ctx,
    msg: &Message,
    queued: QueuedMessage<'_>,
    delivery: Delivery,
    span: &tracing::Span,
) -> Option<(Result<ClaimOutcome, TaskError>, Permit)> {
    let permit = match flow::gate(ctx, queued).instrument(span.clone()).await {
        Gated::Go(permit) => permit,
        Gated::Later(delay) => {
            let _ = msg.ack_with(AckKind::Nak(Some(delay))).await;
            return None;
        }
    };
    let claimed = ctx
        .tasks
        .claim_for_worker(queued, &ctx.worker_id, delivery)
        .instrument(span.clone())
        .await;
    let gone = matches!(
        claimed,
        Ok(ClaimOutcome::Invalid(_) | ClaimOutcome::Skip(_) | ClaimOutcome::GaveUp(_))
    );
    if !permit.is_empty() && !matches!(claimed, Ok(ClaimOutcome::Run(_))) {
        release(ctx, &permit, gone).await;
    }
    Some((claimed, permit))
}

/// The beat of a message's lease from its delivery on: a tick every third of the lease, the first
/// one period from now (a fresh interval's first tick is due at once, yet the timer rounds its
/// deadline up to the next millisecond and fires it on its next turn, up to ~2 ms: awaiting it
/// held every handler's start back by that much). One timer per message serves the claim and
/// the run: a second one for the claim alone cost about 7 % of the tasks per second at one
/// process × 8 (docs/benchmarks.md, "The lease held from the delivery on").
fn lease_beat(lease: Duration) -> tokio::time::Interval {
    let every = lease / 3;
    tokio::time::interval_at(tokio::time::Instant::now() + every, every)
}

/// Awaits `claim` (the flow gate and the claim) while holding the message's lease: an
/// in-progress ack on each `beat`. A claim is answered in a millisecond, but one that waits
/// out an election (its append tried again for up to 30 s) would otherwise let JetStream hand
/// the message to another worker, which takes the task over while this one, answered at last,
/// runs it too.
async fn holding<F: std::future::Future>(
    msg: &Message,
    beat: &mut tokio::time::Interval,
    claim: F,
) -> F::Output {
    tokio::pin!(claim);
    loop {
        tokio::select! {
            claimed = &mut claim => return claimed,
            _ = beat.tick() => {
                if let Err(e) = msg.ack_with(AckKind::Progress).await {
                    tracing::warn!(error.message = %e, "lease renewal during the claim failed");
                }
            }
        }
    }
}

/// Acknowledges, or puts back, a message whose task does not run here.
async fn settle_unrun(
    msg: &Message,
    claimed: Result<ClaimOutcome, TaskError>,
    span: &tracing::Span,
) {
    match claimed {
        Ok(ClaimOutcome::Run(_)) => {}
        Ok(ClaimOutcome::Invalid(why)) => {
            tracing::warn!(parent: span, subject = %msg.subject, why, "not a valid task; dead-lettered with the reason");
            let _ = msg.ack().await;
        }
        Ok(ClaimOutcome::Skip(why)) => {
            tracing::debug!(parent: span, why, "nothing to run; acknowledging");
            let _ = msg.ack().await;
        }
        Ok(ClaimOutcome::GaveUp(task)) => {
            tracing::warn!(parent: span, task_id = %task.id, attempts = task.attempt,
                "attempts used up; task failed and dead-lettered");
            let _ = msg.ack().await;
        }
        Ok(ClaimOutcome::Leave(why)) => {
            tracing::info!(parent: span, why, "handed out again early; left to its holder");
        }
        Ok(ClaimOutcome::Later(delay)) => {
            tracing::debug!(parent: span, "the task's record is older than its message; later");
            let _ = msg.ack_with(AckKind::Nak(Some(delay))).await;
        }
        Err(e) => {
            tracing::warn!(parent: span, error.message = %e, error.cause_chain = ?e,
                "claim failed; retrying shortly");
            let _ = msg
                .ack_with(AckKind::Nak(Some(Duration::from_secs(1))))
                .await;
        }
    }
}

/// The span of a task's run, from the command's start to the recorded finish (for traces only:
/// the `task` span around it names the task in the logs already).
fn run_span(task_span: &tracing::Span, task: &Task) -> tracing::Span {
    tracing::info_span!(target: "taskfleet::trace", parent: task_span, "task.run",
        task_id = task.id.as_str(), kind = %task.kind, attempt = task.attempt)
}

async fn run_claimed(
    ctx: &Ctx,
    msg: &Message,
    task: Task,
    seq: u64,
    slot: OwnedSemaphorePermit,
    permit: Permit,
    beat: tokio::time::Interval,
) {
    let finished = run_claimed_inner(ctx, msg, &task, seq, slot, &permit, beat).await;
    // Whatever happened, nothing this run sent stays unconfirmed, and its chain goes.
    ctx.tasks.forget(&task.id).await;
    // Only now, with the task's end stored, may the next task of its keys start.
    if !permit.is_empty() {
        release(ctx, &permit, finished).await;
    }
}

/// Gives a task's flow-control places back (see `limits/`); `finished`: it leaves its lane.
async fn release(ctx: &Ctx, permit: &Permit, finished: bool) {
    if let Err(e) = ctx.limits.release(permit, finished).await {
        tracing::warn!(error.message = %e, "flow-control places not given back; they lapse after ack_wait");
    }
}

/// Runs a claimed task to its end; returns whether it finished (it will not run again).
async fn run_claimed_inner(
    ctx: &Ctx,
    msg: &Message,
    task: &Task,
    seq: u64,
    slot: OwnedSemaphorePermit,
    permit: &Permit,
    mut beat: tokio::time::Interval,
) -> bool {
    let token = task
        .lease
        .as_ref()
        .map(|l| l.token.clone())
        .unwrap_or_default();
    let handle = RunHandle {
        stop: CancellationToken::new(),
        reason: Arc::new(OnceLock::new()),
        stdin: None,
    };
    ctx.running.insert(task.id.clone(), handle.clone());
    tracing::info!(kind = %task.kind, attempt = task.attempt, "running");

    let run = kinds::run(ctx, task, handle.stop.clone());
    tokio::pin!(run);
    let outcome = loop {
        tokio::select! {
            outcome = &mut run => break outcome,
            _ = beat.tick() => renew(ctx, msg, task, &token, &handle, permit).await,
        }
    };
    ctx.running.remove(&task.id);

    match handle.reason.get().copied() {
        Some(StopReason::Cancelled) => {
            tracing::info!("stopped: cancelled");
            let _ = msg.double_ack().await;
            true
        }
        Some(StopReason::LeaseLost) => {
            tracing::warn!("stopped: another replica holds the task now; leaving it to them");
            false
        }
        Some(StopReason::HandBack) => {
            match ctx.tasks.hand_back(task, &token, &ctx.worker_id, seq).await {
                Ok(_) => {
                    // Confirmed by the server, so the message is redelivered now even if this
                    // process exits right after.
                    if let Err(e) = msg.double_ack_with(AckKind::Nak(None)).await {
                        tracing::warn!(error.message = %e, "hand-back nak not confirmed");
                    }
                    let client = &ctx.tasks.bus().client;
                    let _ = client
                        .publish(subjects::wake(&task.assigned_to), "".into())
                        .await;
                    let _ = client.flush().await;
                    tracing::info!("handed back for another replica");
                }
                Err(e) => tracing::warn!(error.message = %e, "hand-back refused"),
            }
            false
        }
        None => finish(ctx, msg, task, &token, outcome, slot).await,
    }
}

/// Renews the lease (in-progress ack) and the task's flow-control places, and checks that the
/// lease still holds; stops the run if not.
async fn renew(
    ctx: &Ctx,
    msg: &Message,
    task: &Task,
    token: &str,
    handle: &RunHandle,
    permit: &Permit,
) {
    if let Err(e) = msg.ack_with(AckKind::Progress).await {
        tracing::warn!(error.message = %e, "lease renewal failed");
    }
    if !permit.is_empty() {
        if let Err(e) = ctx.limits.renew(permit, ctx.ack_wait).await {
            tracing::warn!(error.message = %e, "flow-control places not renewed");
        }
    }
    match ctx.tasks.holds(task, token).await {
        Ok(true) => {}
        Ok(false) => handle.stop(StopReason::LeaseLost),
        Err(e) => tracing::warn!(error.message = %e, "cannot check the lease"),
    }
}

async fn finish(
    ctx: &Ctx,
    msg: &Message,
    task: &Task,
    token: &str,
    outcome: Outcome,
    slot: OwnedSemaphorePermit,
) -> bool {
    let finish = match outcome {
        Outcome::Completed { result, detail } => Finish::Completed {
            result: Some(result),
            detail,
        },
        Outcome::Failed { error, detail } => {
            tracing::info!(error, "task failed");
            Finish::Failed { error, detail }
        }
        Outcome::FinishedElsewhere | Outcome::Stopped => {
            let _ = msg.double_ack().await;
            return true;
        }
    };
    let who = &ctx.worker_id;
    let sent = ctx.tasks.finish_sent(&task.id, finish, token, who).await;
    // The finish is on its way: the slot may pull the next task while it is answered.
    drop(slot);
    let result = match sent {
        Ok(()) => ctx.tasks.finish_settled(&task.id).await,
        Err(e) => Err(e),
    };
    match result {
        Ok(t) => {
            tracing::info!(status = %t.status, "finished");
            // The finish is stored before the message goes. A lost ack only means a
            // redelivery, which the claim then skips: no need to wait for its confirmation.
            let _ = msg.ack().await;
            true
        }
        // Finished or cancelled through the API meanwhile: nothing left to do.
        Err(TaskError::IllegalTransition(why)) => {
            tracing::info!(why, "already finished elsewhere");
            let _ = msg.double_ack().await;
            true
        }
        // A zombie: the task belongs to another attempt now. Leave its message alone.
        Err(TaskError::StaleLease(why)) => {
            tracing::warn!(why, "lease lost; result discarded");
            false
        }
        Err(e) => {
            tracing::error!(error.message = %e, error.cause_chain = ?e,
                "cannot record the result; the task will be redelivered");
            false
        }
    }
}
