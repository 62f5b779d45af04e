//! The running tasks of one worker process, and what reaches them from outside: cancellations
//! (the `cancelled` event, within milliseconds) and stdin writes (`control.<assignee>.<id>.input`
//! requests from the API).

use super::process::StdinInput;
use crate::bus::{subjects, Bus, NatsResultExt};
use crate::domain::{Assignee, TaskId};
use futures::StreamExt;
use serde::Deserialize;
use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex, OnceLock};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

/// Why a running task was stopped by its worker.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum StopReason {
    /// Cancelled over the API.
    Cancelled,
    /// Another replica took the task over (our lease lapsed).
    LeaseLost,
    /// The worker is shutting down and hands the task back.
    HandBack,
}

/// How to stop one running task and feed its stdin.
#[derive(Debug, Clone)]
pub(super) struct RunHandle {
    /// Cancelled to stop the task.
    pub(super) stop: CancellationToken,
    /// Why it was stopped (set once, before `stop` is cancelled).
    pub(super) reason: Arc<OnceLock<StopReason>>,
    /// The process's stdin, while it has one.
    pub(super) stdin: Option<mpsc::Sender<StdinInput>>,
}

impl RunHandle {
    /// Stops the task for `reason` (the first reason wins).
    pub(super) fn stop(&self, reason: StopReason) {
        let _ = self.reason.set(reason);
        self.stop.cancel();
    }
}

/// The tasks this process is running, by id.
#[derive(Debug, Clone, Default)]
pub(super) struct Running(Arc<Mutex<HashMap<TaskId, RunHandle>>>);

impl Running {
    pub(super) fn insert(&self, id: TaskId, handle: RunHandle) {
        self.0.lock().expect("running lock").insert(id, handle);
    }

    pub(super) fn remove(&self, id: &TaskId) {
        self.0.lock().expect("running lock").remove(id);
    }

    pub(super) fn get(&self, id: &TaskId) -> Option<RunHandle> {
        self.0.lock().expect("running lock").get(id).cloned()
    }

    pub(super) fn set_stdin(&self, id: &TaskId, stdin: Option<mpsc::Sender<StdinInput>>) {
        if let Some(h) = self.0.lock().expect("running lock").get_mut(id) {
            h.stdin = stdin;
        }
    }

    pub(super) fn all(&self) -> Vec<RunHandle> {
        self.0
            .lock()
            .expect("running lock")
            .values()
            .cloned()
            .collect()
    }

    /// The ids of the tasks running now.
    pub(super) fn ids(&self) -> Vec<String> {
        let running = self.0.lock().expect("running lock");
        running.keys().map(|id| id.to_string()).collect()
    }

    pub(super) fn len(&self) -> usize {
        self.0.lock().expect("running lock").len()
    }
}

/// The queue messages this process is handling now (by stream sequence), from the pull to their
/// settlement. JetStream may hand a message out again while its first delivery is still being
/// handled here: a consumer's new leader after a failover redelivers what it never saw
/// acknowledged. A second copy of a message in hand is left alone: the first delivery's lease
/// renewals and its ack settle both (the server keys them by stream sequence), where claiming
/// it again would take the task over from this very process and run it twice.
#[derive(Debug, Clone, Default)]
pub(super) struct InHand(Arc<Mutex<HashSet<u64>>>);

impl InHand {
    /// Takes the message at `seq` in hand until the returned guard drops; `None` when it is in
    /// hand already.
    pub(super) fn take(&self, seq: u64) -> Option<Held> {
        let fresh = self.0.lock().expect("in-hand lock").insert(seq);
        fresh.then(|| Held {
            set: self.clone(),
            seq,
        })
    }
}

/// A message in hand (see [`InHand`]); released on drop.
#[derive(Debug)]
pub(super) struct Held {
    set: InHand,
    seq: u64,
}

impl Drop for Held {
    fn drop(&mut self) {
        self.set.0.lock().expect("in-hand lock").remove(&self.seq);
    }
}

/// Body of a stdin write request.
#[derive(Debug, Deserialize)]
struct InputRequest {
    #[serde(default)]
    data: String,
    #[serde(default)]
    eof: bool,
}

/// Listens for cancellations and stdin writes for `assignee` until `shutdown`.
pub(super) async fn listen(
    bus: Bus,
    assignee: Assignee,
    running: Running,
    shutdown: CancellationToken,
) -> Result<(), super::WorkerError> {
    let mut cancels = bus
        .client
        .subscribe(subjects::assignee_cancellations(&assignee))
        .await
        .op("subscribe cancellations")?;
    let mut controls = bus
        .client
        .subscribe(subjects::assignee_control(&assignee))
        .await
        .op("subscribe control")?;
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return Ok(()),
            Some(msg) = cancels.next() => {
                // events.<assignee>.<task_id>.cancelled
                if let Some(id) = msg.subject.split('.').nth(2).and_then(|s| TaskId::parse(s).ok()) {
                    if let Some(h) = running.get(&id) {
                        tracing::info!(task_id = %id, "cancelled over the API: stopping it");
                        h.stop(StopReason::Cancelled);
                    }
                }
            }
            Some(msg) = controls.next() => {
                let reply = handle_control(&running, &msg).await;
                if let Some(to) = msg.reply {
                    let _ = bus.client.publish(to, reply.to_string().into()).await;
                }
            }
        }
    }
}

async fn handle_control(running: &Running, msg: &async_nats::Message) -> serde_json::Value {
    use serde_json::json;
    let id = match msg
        .subject
        .split('.')
        .nth(2)
        .and_then(|s| TaskId::parse(s).ok())
    {
        Some(id) => id,
        None => return json!({"error": "bad subject"}),
    };
    let req: InputRequest = match serde_json::from_slice(&msg.payload) {
        Ok(r) => r,
        Err(e) => return json!({"error": format!("bad input request: {e}")}),
    };
    let Some(stdin) = running.get(&id).and_then(|h| h.stdin) else {
        return json!({"error": "the task's process has no open stdin"});
    };
    if !req.data.is_empty()
        && stdin
            .send(StdinInput::Data(req.data.clone().into_bytes()))
            .await
            .is_err()
    {
        return json!({"error": "the task's process has exited"});
    }
    if req.eof {
        let _ = stdin.send(StdinInput::Eof).await;
        running.set_stdin(&id, None);
    }
    json!({"ok": true, "bytes": req.data.len(), "eof": req.eof})
}
