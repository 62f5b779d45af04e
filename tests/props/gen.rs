//! Generators shared by the property modules: text with the characters that break parsers and
//! splitters, JSON values, names, valid create requests, tasks and events.

use chrono::{DateTime, TimeZone, Utc};
use proptest::collection::{btree_map, vec};
use proptest::prelude::*;
use proptest::sample::select;
use serde_json::{json, Map, Number, Value};
use taskfleet::domain::{
    limits, Assignee, EventKind, Lease, NewTask, Priority, Progress, Task, TaskEvent, TaskId,
    TaskKind, TaskStatus,
};

/// Characters that matter to our parsers: separators, braces of templates, line breaks, and
/// the pieces of emoji clusters (joiners, skin tones, regional indicators, combining marks).
const SPECIAL: &[char] = &[
    ' ',
    '\n',
    '\r',
    '\t',
    '.',
    '*',
    '>',
    '{',
    '}',
    '?',
    '-',
    '"',
    '\\',
    '\u{0}',
    '\u{7f}',
    '\u{85}',
    '\u{a0}',
    '\u{2028}',
    '\u{200D}',
    '\u{FE0F}',
    '\u{20E3}',
    '\u{0301}',
    '\u{1F3FD}',
    '\u{1F1E8}',
    '\u{1F1F3}',
    '\u{E0067}',
    '\u{E007F}',
    '\u{FFFD}',
    '…',
    '→',
    '【',
    '实',
    '🚀',
    '👨',
    '🎉',
];

/// One character: mostly any, often a special one, sometimes plain ASCII.
pub(crate) fn any_char() -> impl Strategy<Value = char> {
    prop_oneof![
        3 => any::<char>(),
        3 => select(SPECIAL),
        2 => prop::char::range('a', 'z'),
    ]
}

/// Text of up to `max` characters drawn from [`any_char`].
pub(crate) fn text(max: usize) -> impl Strategy<Value = String> {
    vec(any_char(), 0..=max).prop_map(|cs| cs.into_iter().collect())
}

/// Text that is not blank, of at most `max` characters.
pub(crate) fn non_blank(max: usize) -> impl Strategy<Value = String> {
    (any_char(), text(max.saturating_sub(1)))
        .prop_map(|(c, rest)| format!("{c}{rest}"))
        .prop_filter("not blank", |s| !s.trim().is_empty())
}

/// A JSON number of any kind, including huge, negative and fractional ones.
fn number() -> impl Strategy<Value = Value> {
    prop_oneof![
        any::<i64>().prop_map(Value::from),
        any::<u64>().prop_map(Value::from),
        (-3i64..300).prop_map(Value::from),
        any::<f64>().prop_map(|f| Number::from_f64(f).map_or(Value::Null, Value::Number)),
        select(&[0.5, -0.5, 1e20, -1e20, 1.8e19, 4.3e9, 99.5][..]).prop_map(Value::from),
    ]
}

/// Any JSON value (numbers of every kind).
pub(crate) fn json() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        number(),
        text(12).prop_map(Value::String),
    ];
    leaf.prop_recursive(3, 24, 5, |inner| {
        prop_oneof![
            vec(inner.clone(), 0..5).prop_map(Value::Array),
            btree_map(text(6), inner, 0..5).prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

/// A JSON value that survives serde_json's text round trip exactly: integers, no floats
/// (serde_json without `float_roundtrip` may read a float back one ulp off).
pub(crate) fn exact_json() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(Value::from),
        any::<u64>().prop_map(Value::from),
        text(12).prop_map(Value::String),
    ];
    leaf.prop_recursive(3, 24, 5, |inner| {
        prop_oneof![
            vec(inner.clone(), 0..5).prop_map(Value::Array),
            btree_map(text(6), inner, 0..5).prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

/// A JSON object whose values round-trip exactly.
pub(crate) fn exact_object() -> impl Strategy<Value = Value> {
    btree_map(text(8), exact_json(), 0..4).prop_map(|m| Value::Object(m.into_iter().collect()))
}

/// A valid assignee name.
pub(crate) fn assignee() -> impl Strategy<Value = Assignee> {
    prop_oneof![
        select(&["anna", "trump", "cc", "session_agent", "a", "-", "_0"][..])
            .prop_map(str::to_string),
        "[a-z0-9_-]{1,64}",
    ]
    .prop_map(|s| Assignee::parse(&s).expect("generated assignees are valid"))
}

/// A valid task id.
pub(crate) fn task_id() -> impl Strategy<Value = TaskId> {
    prop_oneof![
        Just(()).prop_map(|_| TaskId::generate()),
        "[A-Za-z0-9_-]{1,64}".prop_map(|s| TaskId::parse(&s).expect("valid id")),
    ]
}

/// Any priority.
pub(crate) fn priority() -> impl Strategy<Value = Priority> {
    select(&Priority::ALL[..])
}

/// Any task kind.
pub(crate) fn kind() -> impl Strategy<Value = TaskKind> {
    select(
        &[
            TaskKind::Manual,
            TaskKind::Exec,
            TaskKind::Agent,
            TaskKind::Hook,
            TaskKind::Noop,
        ][..],
    )
}

/// Any task status.
pub(crate) fn status() -> impl Strategy<Value = TaskStatus> {
    select(&TaskStatus::ALL[..])
}

/// Any event kind.
pub(crate) fn event_kind() -> impl Strategy<Value = EventKind> {
    select(&EventKind::ALL[..])
}

/// A time between 1970 and 2100, to the nanosecond.
pub(crate) fn time() -> impl Strategy<Value = DateTime<Utc>> {
    (0i64..4_102_444_800, 0u32..1_000_000_000).prop_map(|(s, ns)| {
        Utc.timestamp_opt(s, ns)
            .single()
            .expect("in chrono's range")
    })
}

/// A kind with a payload that kind accepts.
fn kind_and_payload() -> impl Strategy<Value = (TaskKind, Option<Value>)> {
    let plain = (
        select(&[TaskKind::Manual, TaskKind::Hook, TaskKind::Noop][..]),
        prop::option::of(exact_object()),
    );
    let exec = (
        prop_oneof![
            non_blank(40).prop_map(|c| json!({ "command": c })),
            (non_blank(10), vec(text(10), 0..3)).prop_map(|(p, rest)| {
                let argv: Vec<String> = std::iter::once(p).chain(rest).collect();
                json!({ "argv": argv })
            }),
        ],
        prop::option::of(1u64..100_000),
        prop::option::of(text(20)),
        btree_map(text(6), text(6), 0..3),
        any::<bool>(),
    )
        .prop_map(|(mut p, timeout, cwd, env, pty)| {
            if let Some(t) = timeout {
                p["timeout_s"] = t.into();
            }
            if let Some(c) = cwd {
                p["cwd"] = c.into();
            }
            p["env"] = json!(env);
            p["pty"] = pty.into();
            (TaskKind::Exec, Some(p))
        });
    let agent = (
        non_blank(10),
        non_blank(60),
        select(&["run", "session"][..]),
        prop::option::of(1u64..100_000),
    )
        .prop_map(|(agent_id, prompt, mode, timeout)| {
            let mut p = json!({ "agent_id": agent_id, "prompt": prompt, "mode": mode });
            if let Some(t) = timeout {
                p["run_timeout_s"] = t.into();
            }
            (TaskKind::Agent, Some(p))
        });
    prop_oneof![plain, exec, agent]
}

/// A create request that passes validation.
pub(crate) fn new_task() -> impl Strategy<Value = NewTask> {
    let names = (
        prop::option::of(task_id()),
        non_blank(60),
        assignee(),
        priority(),
        prop::option::of(non_blank(30)),
        prop::option::of(text(80)),
    );
    let rest = (
        kind_and_payload(),
        vec(non_blank(20), 0..6),
        vec(exact_json(), 0..3),
        prop::option::of(1..=limits::TIMEOUT_S),
        prop::option::of(1..=limits::MAX_ATTEMPTS),
        prop::option::of(non_blank(30)),
    );
    (names, rest).prop_map(
        |(
            (id, task_name, assigned_to, priority, created_by, description),
            ((kind, payload), steps, notify, timeout_s, max_attempts, idempotency_key),
        )| NewTask {
            id,
            task_name,
            assigned_to,
            priority,
            created_by,
            description,
            kind,
            payload,
            steps,
            notify,
            timeout_s,
            max_attempts,
            idempotency_key,
            run_at: None,
            delay_s: None,
            debounce_key: None,
            debounce_s: None,
            concurrency_key: None,
            rate_key: None,
            lane: None,
            tenant: None,
            fair_turn: None,
        },
    )
}

/// Any task record, as the ledger might hold it: any status, attempt and progress (a lease while
/// running), values that round-trip exactly.
pub(crate) fn task() -> impl Strategy<Value = Task> {
    let progress = (
        0u32..10,
        0u32..10,
        prop::option::of(text(20)),
        prop::option::of(any::<u8>()),
        prop::option::of(text(40)),
    )
        .prop_map(|(done, total, current, percent, info)| Progress {
            done,
            total,
            current,
            percent,
            info,
        });
    let state = (
        status(),
        0u32..8,
        1u32..8,
        progress,
        // `"result": null` reads back as no result, and nothing stores `Some(null)`.
        prop::option::of(exact_json()).prop_map(|r| r.filter(|v| !v.is_null())),
        prop::option::of(text(60)),
        prop::option::of(1u64..1000),
        (
            time(),
            time(),
            prop::option::of(time()),
            prop::option::of(time()),
        ),
        any::<u64>(),
    );
    (task_id(), new_task(), state).prop_map(
        |(
            id,
            new,
            (status, attempt, max_attempts, progress, result, error, queue_seq, times, revision),
        )| {
            let mut t = Task::from_new(id, new);
            t.status = status;
            t.attempt = if status == TaskStatus::Running {
                attempt.max(1)
            } else {
                attempt
            };
            t.max_attempts = max_attempts;
            t.progress = progress;
            t.result = result;
            t.error = error;
            t.queue_seq = queue_seq;
            let mut lease = (status == TaskStatus::Running).then(|| Lease::new("w0", t.attempt));
            if let Some(l) = lease.as_mut() {
                l.claimed_time = times.0;
            }
            t.lease = lease;
            (
                t.created_time,
                t.updated_time,
                t.started_time,
                t.finished_time,
            ) = times;
            t.revision = revision;
            t
        },
    )
}

/// `data` of an event, shaped the way the relay reads it (`index`, `done`, `total`, `step`…)
/// with any values, or any JSON at all.
pub(crate) fn event_data() -> impl Strategy<Value = Value> {
    const KEYS: &[&str] = &[
        "index", "done", "total", "step", "next", "current", "percent", "minutes", "attempt",
        "text", "created",
    ];
    prop_oneof![
        json(),
        btree_map(select(KEYS), prop_oneof![number(), json()], 0..8).prop_map(|m| {
            Value::Object(
                m.into_iter()
                    .map(|(k, v)| (k.to_string(), v))
                    .collect::<Map<_, _>>(),
            )
        }),
    ]
}

/// An event of `task` with any kind, attempt, message and data.
pub(crate) fn event_of(task: &Task) -> impl Strategy<Value = TaskEvent> {
    let (id, assignee, updated) = (task.id.clone(), task.assigned_to.clone(), task.updated_time);
    (
        event_kind(),
        any::<u32>(),
        prop::option::of(text(80)),
        event_data(),
        -10_000i64..10_000,
    )
        .prop_map(move |(kind, attempt, message, data, minutes_later)| {
            let mut e = TaskEvent::new(&id, &assignee, kind, "prop");
            e.attempt = attempt;
            e.message = message;
            e.data = data;
            e.time = updated + chrono::Duration::minutes(minutes_later);
            e
        })
}

/// Any event whose fields round-trip exactly through JSON.
pub(crate) fn event() -> impl Strategy<Value = TaskEvent> {
    (
        (
            text(30),
            task_id(),
            assignee(),
            event_kind(),
            time(),
            any::<u32>(),
        ),
        (
            prop::option::of(status()),
            prop::option::of(status()),
            prop::option::of(text(80)),
            text(20),
            exact_json(),
        ),
    )
        .prop_map(
            |(
                (id, task_id, assignee, kind, time, attempt),
                (old_status, new_status, message, operator, data),
            )| TaskEvent {
                id,
                task_id,
                assigned_to: assignee,
                kind,
                time,
                attempt,
                old_status,
                new_status,
                message,
                operator,
                data,
            },
        )
}
