//! Create bodies (`POST /api/tasks`), decoded the way the API does it: the `JsonBody` extractor,
//! then `NewTask::validate`, then `Task::from_new`. Whatever bytes arrive, the answer is a
//! pending task or a 400/422 with a message (never a panic, never a 5xx), and a valid create
//! request reads back as exactly what was sent. The `notify` entries a body carries, which the
//! relay parses later, are parsed or refused without a panic too.

use crate::gen;
use axum::body::Body;
use axum::extract::FromRequest;
use axum::http::{Request, StatusCode};
use axum::response::IntoResponse;
use proptest::collection::vec;
use proptest::prelude::*;
use proptest::sample::select;
use serde_json::{json, Value};
use taskfleet::api::JsonBody;
use taskfleet::domain::{limits, NewTask, Task, TaskId, TaskStatus, DEFAULT_MAX_ATTEMPTS};
use taskfleet::outbound::destination::parse_notify;

/// What the API makes of a create body: the request, or the status and message it answers.
fn create(body: Vec<u8>) -> Result<NewTask, (StatusCode, String)> {
    let req = Request::builder()
        .method("POST")
        .uri("/api/tasks")
        .header("content-type", "application/json")
        .body(Body::from(body))
        .expect("a request");
    match futures::executor::block_on(JsonBody::<NewTask>::from_request(req, &())) {
        Ok(JsonBody(new)) => match new.validate() {
            Ok(()) => Ok(new),
            // `TaskService::create` answers a validation message with 422.
            Err(m) => Err((StatusCode::UNPROCESSABLE_ENTITY, m)),
        },
        Err(e) => {
            let message = e.to_string();
            Err((e.into_response().status(), message))
        }
    }
}

const FIELDS: &[&str] = &[
    "id",
    "task_name",
    "assigned_to",
    "priority",
    "created_by",
    "description",
    "kind",
    "payload",
    "steps",
    "notify",
    "timeout_s",
    "max_attempts",
    "idempotency_key",
    "unknown_field",
];

/// Values a caller plausibly sends for some field, right or wrong.
fn plausible() -> impl Strategy<Value = Value> {
    let near_misses = select(
        [
            json!("P0"),
            json!("p2"),
            json!("0"),
            json!(2),
            json!(3),
            json!("P9"),
            json!("exec"),
            json!("agent"),
            json!("hook"),
            json!("shell"),
            json!(""),
            json!("  "),
            json!("Anna"),
            json!("anna"),
            json!(0),
            json!(-1),
            json!(101),
            json!(2_592_001),
            json!(u64::MAX),
            json!(1.5),
            json!([]),
            json!([""]),
            json!({}),
            json!({"command": "echo hi"}),
            json!({"argv": []}),
            json!({"agent_id": "codex", "prompt": "fix it", "mode": "chat"}),
        ]
        .to_vec(),
    );
    prop_oneof![
        near_misses,
        gen::json(),
        gen::text(600).prop_map(Value::from)
    ]
}

/// A valid create request with a few fields replaced, removed or added.
fn mutated_body() -> impl Strategy<Value = Value> {
    let edit = (select(FIELDS), prop::option::of(plausible()));
    (gen::new_task(), vec(edit, 0..4)).prop_map(|(new, edits)| {
        let mut v = serde_json::to_value(&new).expect("serializes");
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

/// Bytes of every sort: random, any JSON, near-valid bodies, and valid ones cut or corrupted.
fn body_bytes() -> impl Strategy<Value = Vec<u8>> {
    let cut = (
        gen::new_task(),
        any::<prop::sample::Index>(),
        any::<u8>(),
        any::<bool>(),
    )
        .prop_map(|(new, i, b, truncate)| {
            let mut bytes = serde_json::to_vec(&new).expect("serializes");
            let at = i.index(bytes.len());
            match truncate {
                true => bytes.truncate(at),
                false => bytes[at] = b,
            }
            bytes
        });
    prop_oneof![
        vec(any::<u8>(), 0..200),
        gen::json().prop_map(|v| serde_json::to_vec(&v).expect("serializes")),
        mutated_body().prop_map(|v| serde_json::to_vec(&v).expect("serializes")),
        cut,
        select(
            [
                &b""[..],
                b"  \n",
                b"null",
                b"[]",
                b"[{}]",
                b"{}",
                b"\xff\xfe"
            ]
            .to_vec(),
        )
        .prop_map(<[u8]>::to_vec),
    ]
}

/// What every accepted request satisfies (the limits of `NewTask::validate`).
fn check_accepted(new: &NewTask) -> Result<(), TestCaseError> {
    let chars = |s: &str| s.chars().count();
    prop_assert!(!new.task_name.trim().is_empty());
    prop_assert!(chars(&new.task_name) <= limits::TASK_NAME);
    prop_assert!(new.steps.len() <= limits::STEPS);
    prop_assert!(new
        .steps
        .iter()
        .all(|s| !s.trim().is_empty() && chars(s) <= limits::STEP_NAME));
    prop_assert!(new.notify.len() <= limits::NOTIFY);
    prop_assert!(new.payload.as_ref().is_none_or(Value::is_object));
    prop_assert!(new
        .timeout_s
        .is_none_or(|t| (1..=limits::TIMEOUT_S).contains(&t)));
    prop_assert!(new
        .max_attempts
        .is_none_or(|m| (1..=limits::MAX_ATTEMPTS).contains(&m)));
    let task = Task::from_new(TaskId::generate(), new.clone());
    prop_assert_eq!(task.status, TaskStatus::Pending);
    prop_assert_eq!(task.attempt, 0);
    prop_assert_eq!(
        task.max_attempts,
        new.max_attempts.unwrap_or(DEFAULT_MAX_ATTEMPTS)
    );
    prop_assert_eq!(task.progress.total as usize, new.steps.len());
    prop_assert!(task.payload.is_object());
    Ok(())
}

proptest! {
    #![proptest_config(crate::config(512))]

    #[test]
    fn any_create_body_gets_a_pending_task_or_a_400_or_422_with_a_message(
        body in body_bytes()
    ) {
        match create(body) {
            Ok(new) => check_accepted(&new)?,
            Err((status, message)) => {
                prop_assert!(
                    status == StatusCode::BAD_REQUEST || status == StatusCode::UNPROCESSABLE_ENTITY,
                    "{status}: {message}"
                );
                prop_assert!(!message.is_empty());
            }
        }
    }

    #[test]
    fn a_valid_create_request_reads_back_as_sent(new in gen::new_task()) {
        let sent = serde_json::to_value(&new).expect("serializes");
        let read = create(serde_json::to_vec(&sent).expect("serializes"))
            .map_err(|(s, m)| TestCaseError::fail(format!("{s}: {m}")))?;
        prop_assert_eq!(serde_json::to_value(&read).expect("serializes"), sent);
        check_accepted(&read)?;
    }

    #[test]
    fn a_task_record_reads_back_as_stored(task in gen::task()) {
        let bytes = serde_json::to_vec(&task).expect("serializes");
        let back: Task = serde_json::from_slice(&bytes).expect("reads back");
        prop_assert_eq!(back, task);
    }

    #[test]
    fn any_notify_entry_is_parsed_or_refused_without_panic(entry in notify_entry()) {
        let _ = parse_notify(&entry);
    }
}

/// `notify` entries: names, destination objects of every type, session entries, any JSON.
fn notify_entry() -> impl Strategy<Value = Value> {
    const KEYS: &[&str] = &[
        "type",
        "url",
        "destination",
        "session_id",
        "secret",
        "secret_env",
        "token",
        "token_env",
        "chat_id",
        "argv",
        "events",
        "fields",
        "headers",
    ];
    const TYPES: &[&str] = &[
        "webhook", "chat", "openclaw", "command", "telegram", "discord", "slack", "log", "pager",
    ];
    let value = prop_oneof![
        select(TYPES).prop_map(Value::from),
        Just(json!("https://example.com/hook")),
        Just(json!("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw")),
        Just(json!(["echo", "{text}"])),
        gen::json(),
    ];
    prop_oneof![
        gen::json(),
        gen::text(20).prop_map(Value::from),
        prop::collection::btree_map(select(KEYS), value, 0..5).prop_map(|m| {
            Value::Object(m.into_iter().map(|(k, v)| (k.to_string(), v)).collect())
        }),
    ]
}
