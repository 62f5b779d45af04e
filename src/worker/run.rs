//! One pulled message, from claim to acknowledgement: keep the lease alive while the task runs,
//! then finish it (fenced by the lease token) and ack; or, when stopped, ack (cancelled), leave
//! it (lease lost) or hand it back (shutdown).

use super::control::{RunHandle, StopReason};
use super::kinds::{self, Outcome};
use super::Ctx;
use crate::bus::subjects;
use crate::domain::Task;
use crate::tasks::{ClaimOutcome, Finish, QueuedMessage, TaskError};
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
    let (seq, redelivered) = (info.stream_sequence, info.delivered > 1);
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
    let claimed = ctx
        .tasks
        .claim_for_worker(queued, &ctx.worker_id, redelivered)
        .instrument(span.clone())
        .await;
    match claimed {
        Ok(ClaimOutcome::Run(task)) => {
            span.record("task_id", task.id.as_str());
            run_claimed(&ctx, &msg, task, seq, slot)
                .instrument(span)
                .await
        }
        Ok(ClaimOutcome::Invalid(why)) => {
            tracing::warn!(parent: &span, subject = %msg.subject, why, "not a valid task; dead-lettered with the reason");
            let _ = msg.ack().await;
        }
        Ok(ClaimOutcome::Skip(why)) => {
            tracing::debug!(parent: &span, why, "nothing to run; acknowledging");
            let _ = msg.ack().await;
        }
        Ok(ClaimOutcome::GaveUp(task)) => {
            tracing::warn!(parent: &span, task_id = %task.id, attempts = task.attempt,
                "attempts used up; task failed and dead-lettered");
            let _ = msg.ack().await;
        }
        Ok(ClaimOutcome::Later(delay)) => {
            tracing::debug!(parent: &span, "the task's record is older than its message; later");
            let _ = msg.ack_with(AckKind::Nak(Some(delay))).await;
        }
        Err(e) => {
            tracing::warn!(parent: &span, error.message = %e, "claim failed; retrying shortly");
            let _ = msg
                .ack_with(AckKind::Nak(Some(Duration::from_secs(1))))
                .await;
        }
    }
}

async fn run_claimed(ctx: &Ctx, msg: &Message, task: Task, seq: u64, slot: OwnedSemaphorePermit) {
    run_claimed_inner(ctx, msg, &task, seq, slot).await;
    // Whatever happened, nothing this run sent stays unconfirmed, and its chain goes.
    ctx.tasks.forget(&task.id).await;
}

async fn run_claimed_inner(
    ctx: &Ctx,
    msg: &Message,
    task: &Task,
    seq: u64,
    slot: OwnedSemaphorePermit,
) {
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
    let mut beat = tokio::time::interval(ctx.ack_wait / 3);
    beat.tick().await;
    let outcome = loop {
        tokio::select! {
            outcome = &mut run => break outcome,
            _ = beat.tick() => renew(ctx, msg, task, &token, &handle).await,
        }
    };
    ctx.running.remove(&task.id);

    match handle.reason.get().copied() {
        Some(StopReason::Cancelled) => {
            tracing::info!("stopped: cancelled");
            let _ = msg.double_ack().await;
        }
        Some(StopReason::LeaseLost) => {
            tracing::warn!("stopped: another replica holds the task now; leaving it to them");
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
        }
        None => finish(ctx, msg, task, &token, outcome, slot).await,
    }
}

/// Renews the lease (in-progress ack) and checks that it still holds; stops the run if not.
async fn renew(ctx: &Ctx, msg: &Message, task: &Task, token: &str, handle: &RunHandle) {
    if let Err(e) = msg.ack_with(AckKind::Progress).await {
        tracing::warn!(error.message = %e, "lease renewal failed");
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
) {
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
            return;
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
        }
        // Finished or cancelled through the API meanwhile: nothing left to do.
        Err(TaskError::IllegalTransition(why)) => {
            tracing::info!(why, "already finished elsewhere");
            let _ = msg.double_ack().await;
        }
        // A zombie: the task belongs to another attempt now. Leave its message alone.
        Err(TaskError::StaleLease(why)) => tracing::warn!(why, "lease lost; result discarded"),
        Err(e) => {
            tracing::error!(error.message = %e, "cannot record the result; the task will be redelivered");
        }
    }
}
