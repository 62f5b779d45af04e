//! The task state machine under any sequence of actions, from any state.
//!
//! The code under test is the crate's own pure code, with no NATS:
//! - `TaskStatus::after`, the transition table every action consults;
//! - `tasks::claimed_by`, what `start` (a bot's claim over the API) does to a pending task;
//! - `tasks::claim_state`, a worker's claim: a start, the takeover of a redelivered running task
//!   (new attempt), or the give-up once `max_attempts` are used;
//! - `tasks::finish_state`, complete and fail, with or without a fencing token.
//!
//! `cancel` and `retry` change the task inside closures of async `TaskService` methods, which
//! need NATS; here they are applied as documented (the status `TaskStatus::after` gives, the
//! lease dropped, a retry queued anew), so the properties check the rest of the machine around
//! them rather than their own code. The worker's hand-back on shutdown has no pure part and is
//! left to the integration tests against nats-server (tests/it/transitions.rs, workers.rs).

use crate::gen;
use proptest::prelude::*;
use proptest::sample::Index;
use serde_json::{json, Value};
use taskfleet::domain::{Action, Task, TaskEvent, TaskStatus};
use taskfleet::tasks::{claim_state, claimed_by, finish_state, Delivery, Finish, TaskError};

/// Which token a complete/fail call carries.
#[derive(Debug, Clone)]
enum Fence {
    /// None (seed 001's curl).
    Without,
    /// The current lease's (or, with no lease, the last one handed out).
    Current,
    /// One handed out earlier that no longer holds the task.
    Stale(Index),
    /// One nobody was ever given.
    Forged(String),
}

/// Which queue message a worker pulled, relative to the one the task was last queued with.
#[derive(Debug, Clone, Copy)]
enum Msg {
    Current,
    Older,
    Newer,
}

/// One call a bot, a worker or an operator can make.
#[derive(Debug, Clone)]
enum Act {
    /// `PUT /start`.
    Start,
    /// A worker pulled a queue message (`redelivered`: JetStream sent it before).
    Claim { msg: Msg, redelivered: bool },
    /// `PUT /complete`.
    Complete(Fence),
    /// `PUT /fail`.
    Fail(Fence),
    /// `PUT /cancel`.
    Cancel,
    /// `PUT /retry`.
    Retry,
}

fn fence() -> impl Strategy<Value = Fence> {
    prop_oneof![
        1 => Just(Fence::Without),
        2 => Just(Fence::Current),
        2 => any::<Index>().prop_map(Fence::Stale),
        1 => "([0-9]{1,2}\\.)?[0-9a-f]{0,16}".prop_map(Fence::Forged),
    ]
}

fn act() -> impl Strategy<Value = Act> {
    let msg = prop_oneof![
        3 => Just(Msg::Current),
        1 => Just(Msg::Older),
        1 => Just(Msg::Newer),
    ];
    prop_oneof![
        // Weighted so that sequences keep moving: completed is final, and refusals teach little.
        3 => Just(Act::Start),
        4 => (msg, any::<bool>()).prop_map(|(msg, redelivered)| Act::Claim { msg, redelivered }),
        1 => fence().prop_map(Act::Complete),
        3 => fence().prop_map(Act::Fail),
        1 => Just(Act::Cancel),
        3 => Just(Act::Retry),
    ]
}

/// One action applied: the state before, the token sent (finishes), what came of it.
#[derive(Debug)]
struct Applied {
    before: Task,
    act: Act,
    fence: Option<String>,
    /// Every token handed out before this action.
    issued: Vec<String>,
    outcome: Result<(Task, Option<TaskEvent>), TaskError>,
}

fn refused(t: &Task, action: Action) -> TaskError {
    TaskError::IllegalTransition(format!("cannot {} a {} task", action.as_str(), t.status))
}

/// `TaskService::cancel`'s change.
fn cancel(t: &Task) -> Result<(Task, Option<TaskEvent>), TaskError> {
    let status = t
        .status
        .after(Action::Cancel)
        .ok_or_else(|| refused(t, Action::Cancel))?;
    let mut n = t.clone();
    n.status = status;
    n.lease = None;
    n.finished_time = Some(taskfleet::domain::now());
    Ok((n, None))
}

/// `TaskService::retry`'s change, queued anew as message `seq`.
fn retry(t: &Task, seq: u64) -> Result<(Task, Option<TaskEvent>), TaskError> {
    let status = t
        .status
        .after(Action::Retry)
        .ok_or_else(|| refused(t, Action::Retry))?;
    let mut n = t.clone();
    n.status = status;
    n.queue_seq = Some(seq);
    n.lease = None;
    n.finished_time = None;
    n.started_time = None;
    n.result = None;
    n.error = None;
    Ok((n, None))
}

/// Runs `acts` from `start`, recording every step.
fn run(start: Task, acts: Vec<Act>) -> Vec<Applied> {
    let mut t = start;
    let mut issued: Vec<String> = t.lease.iter().map(|l| l.token.clone()).collect();
    let mut next_seq = t.queue_seq.unwrap_or(0) + 1;
    let mut out = Vec::new();
    for act in acts {
        let issued_before = issued.clone();
        let current = t.lease.as_ref().map(|l| l.token.clone());
        let fence = match &act {
            Act::Complete(f) | Act::Fail(f) => match f {
                Fence::Without => None,
                Fence::Current => current.clone().or_else(|| issued.last().cloned()),
                Fence::Stale(i) => {
                    let stale: Vec<&String> = issued
                        .iter()
                        .filter(|s| Some(*s) != current.as_ref())
                        .collect();
                    Some(match stale.is_empty() {
                        true => "0.0000000000000000".to_string(),
                        false => stale[i.index(stale.len())].clone(),
                    })
                }
                Fence::Forged(s) => Some(s.clone()),
            },
            _ => None,
        };
        let outcome = match &act {
            Act::Start => match t.status.after(Action::Start) {
                Some(_) => Ok((claimed_by(&t, "bot"), None)),
                None => Err(refused(&t, Action::Start)),
            },
            Act::Claim { msg, redelivered } => {
                let q = t.queue_seq.unwrap_or(1);
                let seq = match msg {
                    Msg::Current => q,
                    // Sequence 0 has no older message: take another one instead.
                    Msg::Older => q.checked_sub(1).unwrap_or(q + 2),
                    Msg::Newer => q + 1,
                };
                let delivery = Delivery {
                    redelivered: *redelivered,
                    lease: std::time::Duration::ZERO, // a redelivery means the lease lapsed
                };
                claim_state(&t, seq, "w1", delivery).map(|(n, e)| (n, Some(e)))
            }
            Act::Complete(_) => {
                let finish = Finish::Completed {
                    result: Some(json!("ok")),
                    detail: Value::Null,
                };
                finish_state(&t, &finish, fence.as_deref(), "op").map(|(n, e)| (n, Some(e)))
            }
            Act::Fail(_) => {
                let finish = Finish::Failed {
                    error: "boom".into(),
                    detail: json!({"exit_code": 1}),
                };
                finish_state(&t, &finish, fence.as_deref(), "op").map(|(n, e)| (n, Some(e)))
            }
            Act::Cancel => cancel(&t),
            Act::Retry => {
                next_seq += 1;
                retry(&t, next_seq - 1)
            }
        };
        let before = t.clone();
        if let Ok((after, _)) = &outcome {
            if let Some(l) = &after.lease {
                if !issued.contains(&l.token) {
                    issued.push(l.token.clone());
                }
            }
            t = after.clone();
        }
        out.push(Applied {
            before,
            act,
            fence,
            issued: issued_before,
            outcome,
        });
    }
    out
}

/// A start state (any status, attempt and queue message; a lease while running) and actions.
fn scenario() -> impl Strategy<Value = (Task, Vec<Act>)> {
    let start = (gen::task(), 1u32..10).prop_map(|(mut t, max_attempts)| {
        // Attempts used up or not, in about equal measure.
        t.max_attempts = max_attempts;
        t.attempt = t.attempt.min(max_attempts + 1);
        // Stream sequences start at 1, so an older message than the task's always exists.
        if let Some(q) = t.queue_seq.as_mut() {
            *q = (*q).max(1);
        }
        if let Some(lease) = t.lease.as_mut() {
            t.attempt = t.attempt.max(1);
            *lease = taskfleet::domain::Lease::new("w0", t.attempt);
        }
        t
    });
    (start, prop::collection::vec(act(), 1..60))
}

/// Whether `a` was a worker's claim of a running task it may take over.
fn takes_over(a: &Applied) -> bool {
    matches!(
        a.act,
        Act::Claim {
            redelivered: true,
            msg: Msg::Current
        }
    ) && a.before.status == TaskStatus::Running
}

proptest! {
    #![proptest_config(crate::config(256))]

    #[test]
    fn any_action_sequence_reaches_at_most_one_terminal_status_between_retries(
        (start, acts) in scenario()
    ) {
        let mut terminal_reached = usize::from(start.status.is_terminal());
        for a in run(start, acts) {
            let Ok((after, _)) = &a.outcome else { continue };
            if matches!(a.act, Act::Retry) {
                terminal_reached = 0;
            }
            if after.status.is_terminal() {
                prop_assert!(!a.before.status.is_terminal(), "{a:?}");
                terminal_reached += 1;
            }
            prop_assert!(terminal_reached <= 1, "{a:?}");
        }
    }

    #[test]
    fn every_change_is_a_documented_transition_and_a_terminal_task_changes_only_by_retry(
        (start, acts) in scenario()
    ) {
        use TaskStatus::*;
        for a in run(start, acts) {
            let before = &a.before;
            let documented = |action| before.status.after(action);
            let expected = match &a.act {
                Act::Start => documented(Action::Start),
                Act::Complete(_) => documented(Action::Complete),
                Act::Fail(_) => documented(Action::Fail),
                Act::Cancel => documented(Action::Cancel),
                Act::Retry => documented(Action::Retry),
                Act::Claim { .. } => match before.status {
                    Pending => Some(Running),
                    // A delayed task whose time came: queued (`created`) and started at once.
                    Scheduled if before.run_at.is_none() => Some(Running),
                    // A redelivered message of a running task: its holder stopped renewing.
                    Running if takes_over(&a) && before.queue_seq.is_some() => {
                        Some(if before.attempt >= before.max_attempts { Failed } else { Running })
                    }
                    _ => None,
                },
            };
            match &a.outcome {
                Ok((after, _)) => {
                    prop_assert_eq!(Some(after.status), expected, "{:?}", a);
                    prop_assert_ne!(before.status, Completed, "a completed task changed: {:?}", a);
                    if before.status.is_terminal() {
                        prop_assert!(matches!(a.act, Act::Retry), "{:?}", a);
                        prop_assert_eq!(after.status, Pending);
                    }
                    prop_assert_eq!(&after.id, &before.id);
                    prop_assert_eq!(&after.assigned_to, &before.assigned_to);
                    prop_assert_eq!(after.max_attempts, before.max_attempts);
                }
                Err(e) => {
                    // A refusal is never the only way forward being blocked: only a stale
                    // token may refuse what the table allows.
                    if expected.is_some() {
                        prop_assert!(matches!(e, TaskError::StaleLease(_)), "{e}: {a:?}");
                    }
                }
            }
        }
    }

    #[test]
    fn attempt_numbers_only_grow_one_per_claim_and_never_past_max_attempts_on_takeover(
        (start, acts) in scenario()
    ) {
        for a in run(start, acts) {
            let Ok((after, _)) = &a.outcome else { continue };
            let before = &a.before;
            let claimed = matches!(a.act, Act::Start | Act::Claim { .. })
                && after.status == TaskStatus::Running;
            prop_assert_eq!(after.attempt, before.attempt + u32::from(claimed), "{:?}", a);
            if takes_over(&a) && after.status == TaskStatus::Running {
                prop_assert!(after.attempt <= after.max_attempts, "{a:?}");
            }
        }
    }

    #[test]
    fn a_running_task_holds_exactly_one_fresh_lease_of_its_attempt(
        (start, acts) in scenario()
    ) {
        for a in run(start, acts) {
            let Ok((after, _)) = &a.outcome else { continue };
            prop_assert_eq!(after.lease.is_some(), after.status == TaskStatus::Running, "{:?}", a);
            let Some(lease) = &after.lease else { continue };
            prop_assert_eq!(lease.attempt, after.attempt);
            let prefix = format!("{}.", after.attempt);
            prop_assert!(lease.token.starts_with(&prefix), "{}", lease.token);
            if after.attempt > a.before.attempt {
                // A new attempt never reuses a token handed out before.
                prop_assert!(!a.issued.contains(&lease.token), "{a:?}");
                prop_assert_ne!(Some(lease), a.before.lease.as_ref());
            } else {
                prop_assert_eq!(Some(lease), a.before.lease.as_ref());
            }
        }
    }

    #[test]
    fn a_stale_or_forged_fencing_token_never_finishes_a_task((start, acts) in scenario()) {
        for a in run(start, acts) {
            let (Act::Complete(_) | Act::Fail(_), Some(fence)) = (&a.act, &a.fence) else {
                continue;
            };
            let holds = a.before.lease.as_ref().is_some_and(|l| &l.token == fence);
            match &a.outcome {
                Ok(_) => prop_assert!(holds, "token {fence} finished {:?}", a.before),
                Err(TaskError::StaleLease(_)) => {
                    prop_assert!(!holds);
                    prop_assert_eq!(a.before.status, TaskStatus::Running);
                }
                Err(TaskError::IllegalTransition(_)) => {
                    prop_assert_ne!(a.before.status, TaskStatus::Running);
                }
                Err(e) => prop_assert!(false, "unexpected refusal {e}"),
            }
        }
    }

    #[test]
    fn the_holder_of_the_current_lease_or_a_call_without_token_always_finishes_a_running_task(
        (start, acts) in scenario()
    ) {
        for a in run(start, acts) {
            let (Act::Complete(_) | Act::Fail(_)) = &a.act else { continue };
            let current = a.before.lease.as_ref().map(|l| &l.token);
            let entitled = a.fence.is_none() || a.fence.as_ref() == current;
            if a.before.status == TaskStatus::Running && entitled {
                let (after, _) = a.outcome.as_ref().map_err(|e| TestCaseError::fail(e.to_string()))?;
                prop_assert!(after.status.is_terminal());
                prop_assert_eq!(after.lease.as_ref(), None);
            }
        }
    }

    #[test]
    fn every_recorded_change_carries_its_new_status_and_attempt(
        (start, acts) in scenario()
    ) {
        for a in run(start, acts) {
            let Ok((after, Some(event))) = &a.outcome else { continue };
            prop_assert_eq!(&event.task_id, &after.id);
            prop_assert_eq!(&event.assigned_to, &after.assigned_to);
            prop_assert_eq!(event.new_status, Some(after.status));
            prop_assert_eq!(event.attempt, after.attempt);
            // A takeover records `retried` (running → pending) first, a delayed task's claim
            // `created` (scheduled → pending); its `started` follows.
            let fired = matches!(a.act, Act::Claim { .. }) && a.before.status == TaskStatus::Scheduled;
            let from = if (takes_over(&a) || fired) && after.status == TaskStatus::Running {
                TaskStatus::Pending
            } else {
                a.before.status
            };
            prop_assert_eq!(event.old_status, Some(from), "{:?}", a);
        }
    }
}
