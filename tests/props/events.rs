//! Event payloads: task events as the ledger stores them and feeds and the relay read them
//! (`tasks::ledger::shown_events`), and the kind-specific payloads of tasks (`domain::payload`).
//! Any bytes or JSON are read or refused without a panic; an event, and a ledger record (the
//! event plus the task's state after it), read back as written; an accepted `exec` payload
//! always names a program and an accepted `agent` payload an agent and a prompt.

use crate::gen;
use proptest::collection::{btree_map, vec};
use proptest::prelude::*;
use proptest::sample::select;
use serde_json::{json, Value};
use taskfleet::domain::payload::{validate, AgentPayload, ExecPayload};
use taskfleet::domain::{EventKind, LogEntry, Task, TaskEvent, TaskKind, TaskStatus};
use taskfleet::tasks::ledger::{also_created, shown_events};

/// A JSON object with some of `keys`, each with a plausible or arbitrary value.
fn shaped(keys: &'static [&'static str], plausible: Vec<Value>) -> impl Strategy<Value = Value> {
    let value = prop_oneof![select(plausible), gen::json()];
    btree_map(select(keys), value, 0..keys.len())
        .prop_map(|m| Value::Object(m.into_iter().map(|(k, v)| (k.to_string(), v)).collect()))
}

/// An event or ledger record with some fields replaced by anything.
fn mangled_record() -> impl Strategy<Value = Value> {
    const FIELDS: &[&str] = &[
        "id",
        "task_id",
        "assigned_to",
        "type",
        "time",
        "attempt",
        "old_status",
        "new_status",
        "message",
        "operator",
        "data",
        "task",
    ];
    (
        gen::event(),
        gen::task(),
        any::<bool>(),
        vec((select(FIELDS), prop::option::of(gen::json())), 0..3),
    )
        .prop_map(|(e, t, with_task, edits)| {
            let mut v = serde_json::to_value(&e).expect("serializes");
            if with_task {
                v["task"] = serde_json::to_value(&t).expect("serializes");
            }
            for (field, value) in edits {
                let obj = v.as_object_mut().expect("an object");
                match value {
                    Some(x) => obj.insert(field.to_string(), x),
                    None => obj.remove(field),
                };
            }
            v
        })
}

fn event_bytes() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        1 => vec(any::<u8>(), 0..300),
        1 => gen::json().prop_map(|v| serde_json::to_vec(&v).expect("serializes")),
        3 => mangled_record().prop_map(|v| serde_json::to_vec(&v).expect("serializes")),
    ]
}

/// An event, sometimes a worker's combined first claim (`started` with `data.created`).
fn event() -> impl Strategy<Value = TaskEvent> {
    (gen::event(), any::<bool>()).prop_map(|(mut e, first_claim)| {
        if first_claim {
            e.kind = EventKind::Started;
            e.data = json!({"created": true, "worker": "w1", "attempt": 1});
        }
        e
    })
}

fn payload() -> impl Strategy<Value = Value> {
    const KEYS: &[&str] = &[
        "command",
        "argv",
        "cwd",
        "env",
        "timeout_s",
        "pty",
        "agent_id",
        "prompt",
        "run_timeout_s",
        "mode",
        "shell",
    ];
    let plausible = vec![
        json!("echo hi"),
        json!(""),
        json!(" "),
        json!(["ls", "-l"]),
        json!([]),
        json!([""]),
        json!({"A": "1"}),
        json!({"A": 1}),
        json!(0),
        json!(30),
        json!(true),
        json!("run"),
        json!("session"),
        json!("chat"),
        json!("codex"),
    ];
    prop_oneof![1 => gen::json(), 3 => shaped(KEYS, plausible)]
}

proptest! {
    #![proptest_config(crate::config(512))]

    #[test]
    fn any_event_payload_is_read_or_refused_without_panic(bytes in event_bytes()) {
        let plain = serde_json::from_slice::<TaskEvent>(&bytes);
        match shown_events(&bytes) {
            Ok(shown) => {
                let event = plain.expect("shown_events read it as an event");
                prop_assert!(shown.len() == 1 || shown.len() == 2);
                let (last, _) = shown.last().expect("one at least");
                prop_assert_eq!(last, &event);
                prop_assert_eq!(shown.len() == 2, also_created(&event) && shown[0].1.is_some());
                let log = LogEntry::from(&event);
                prop_assert_eq!(log.action, event.kind.action());
            }
            Err(_) => prop_assert!(plain.is_err()),
        }
    }

    #[test]
    fn an_event_reads_back_as_written(e in event()) {
        let bytes = serde_json::to_vec(&e).expect("serializes");
        let back: TaskEvent = serde_json::from_slice(&bytes).expect("reads back");
        prop_assert_eq!(back, e);
    }

    #[test]
    fn a_ledger_record_shows_its_event_with_the_task_state_after_it(
        e in event(),
        task in gen::task(),
    ) {
        let mut record = serde_json::to_value(&e).expect("serializes");
        record["task"] = serde_json::to_value(&task).expect("serializes");
        let shown = shown_events(&serde_json::to_vec(&record).expect("serializes"))
            .map_err(|err| TestCaseError::fail(err.to_string()))?;
        let last = shown.last().expect("one at least");
        prop_assert_eq!(&last.0, &e);
        prop_assert_eq!(last.1.as_ref(), Some(&task));
        if also_created(&e) {
            // A worker's combined first claim also stands for the creation, shown first.
            prop_assert_eq!(shown.len(), 2);
            let (created, state) = &shown[0];
            prop_assert_eq!(created.kind, EventKind::Created);
            prop_assert_eq!(created.new_status, Some(TaskStatus::Pending));
            prop_assert_eq!(created.time, task.created_time);
            prop_assert_eq!(&created.task_id, &e.task_id);
            prop_assert_eq!(state.as_ref(), Some(&task));
        } else {
            prop_assert_eq!(shown.len(), 1);
        }
        // The same event without a state shows no state.
        let bare = shown_events(&serde_json::to_vec(&e).expect("serializes"))
            .map_err(|err| TestCaseError::fail(err.to_string()))?;
        prop_assert_eq!(bare.len(), 1);
        prop_assert_eq!(&bare[0], &(e, None::<Task>));
    }

    #[test]
    fn any_payload_is_accepted_or_refused_and_accepted_ones_name_what_to_run(
        kind in gen::kind(),
        p in payload(),
    ) {
        if validate(kind, &p).is_err() {
            return Ok(());
        }
        match kind {
            TaskKind::Exec => {
                let exec: ExecPayload = serde_json::from_value(p).expect("accepted, so it reads");
                let program = exec.program();
                prop_assert!(program.first().is_some_and(|p| !p.is_empty()), "{program:?}");
                prop_assert_ne!(exec.timeout_s, Some(0));
            }
            TaskKind::Agent => {
                let agent: AgentPayload = serde_json::from_value(p).expect("accepted, so it reads");
                prop_assert!(!agent.agent_id.trim().is_empty());
                prop_assert!(!agent.prompt.trim().is_empty());
            }
            _ => {}
        }
    }
}
